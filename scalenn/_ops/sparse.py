"""sparse_linear and its two backward ops: plain-PyTorch references (the test oracle, the
float64 path used by gradcheck, and the fallback on devices without kernels), fake kernels for
torch.compile / torch.export, and autograd.

Contract: y = x @ W.T + bias for the weight W [out, in] stored in `layout` (see
scalenn/compress/sparse_format.py); grad_x = grad_y @ W; grad_values[v] = sum_m grad_y[m, n]
x[m, k] for every stored value v = W[n, k] (explicitly stored zeros included: they are
trainable slots of the pattern, pruned positions have no slot). Kernels compute in float32 with
FMA; results agree with the float64 reference to float32 rounding of the sums.
"""
import torch


def _fmt():
    # Imported lazily: scalenn.compress imports the modules that import this file.
    from ..compress import sparse_format
    return sparse_format


def sparse_linear_reference(x, values, indices, offsets, bias, layout: str, out_features: int,
                            in_features: int = None):
    in_features = x.shape[1] if in_features is None else in_features
    if x.shape[1] != in_features:
        raise ValueError(f"sparse_linear: x must have in_features = {in_features} columns, got "
                         f"{x.shape[1]}")
    w = _fmt().unpack(values, indices, offsets, layout, out_features, in_features)
    y = x @ w.to(x.dtype).t()
    return y + bias.to(y.dtype) if bias is not None else y


def sparse_linear_grad_input_reference(grad_y, values, indices, offsets, layout: str,
                                       in_features: int):
    w = _fmt().unpack(values, indices, offsets, layout, grad_y.shape[1], in_features)
    return grad_y @ w.to(grad_y.dtype)


def sparse_linear_grad_values_reference(grad_y, x, values, indices, offsets, layout: str,
                                        in_features: int = None):
    out_f, in_f = grad_y.shape[1], x.shape[1]
    flat = _fmt().dense_index(indices, offsets, layout, out_f, in_f, values.numel())
    gw = (grad_y.t() @ x).reshape(-1)
    return gw[flat].reshape(values.shape).to(values.dtype)


@torch.library.register_fake("scalenn::sparse_linear")
def _sparse_linear_fake(x, values, indices, offsets, bias, layout, out_features, in_features):
    torch._check(x.dim() == 2, lambda: f"sparse_linear: x must be 2-D, got {x.dim()}-D")
    torch._check(x.shape[1] == in_features,
                 lambda: f"sparse_linear: x must have {in_features} columns, got {x.shape[1]}")
    return x.new_empty((x.shape[0], out_features))


@torch.library.register_fake("scalenn::sparse_linear_grad_input")
def _sparse_linear_grad_input_fake(grad_y, values, indices, offsets, layout, in_features):
    return grad_y.new_empty((grad_y.shape[0], in_features))


@torch.library.register_fake("scalenn::sparse_linear_grad_values")
def _sparse_linear_grad_values_fake(grad_y, x, values, indices, offsets, layout, in_features):
    return torch.empty_like(values)


def _setup_context(ctx, inputs, output):
    x, values, indices, offsets, bias, layout, out_features, in_features = inputs
    ctx.layout = layout
    ctx.in_features = in_features
    ctx.has_bias = bias is not None
    saved_x = x if ctx.needs_input_grad[1] else None
    ctx.save_for_backward(saved_x, values, indices, offsets)


def _backward(ctx, grad_y):
    x, values, indices, offsets = ctx.saved_tensors
    grad_y = grad_y.contiguous()
    gx = gv = gb = None
    if ctx.needs_input_grad[0]:
        gx = torch.ops.scalenn.sparse_linear_grad_input(grad_y, values, indices, offsets,
                                                        ctx.layout, ctx.in_features)
    if ctx.needs_input_grad[1]:
        gv = torch.ops.scalenn.sparse_linear_grad_values(grad_y, x, values, indices, offsets,
                                                         ctx.layout, ctx.in_features)
    if ctx.has_bias and ctx.needs_input_grad[4]:
        gb = grad_y.sum(dim=0)
    return gx, gv, None, None, gb, None, None, None


torch.library.register_autograd("scalenn::sparse_linear", _backward, setup_context=_setup_context)
