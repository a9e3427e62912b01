"""Int8 linear ops: plain-PyTorch references (the test oracle), fake kernels for torch.compile /
torch.export, and autograd (gradient with respect to the input and the bias; the int8 weight is
frozen, gradients flow straight through the activation quantization).

Contracts (schemas in csrc/ops.cpp):
  int8_pack_weight(w_int8 [N, K] int8 in [-127, 127]) -> packed (opaque, device-specific; CPU:
      1-D int8 of N16 * (K4 + 4) bytes, N16 = N rounded up to 16, K4 = K rounded up to 4;
      CUDA: w_int8 itself).
  int8_unpack_weight(packed, N, K) -> w_int8.
  int8_gemm_s32(x_int8 [M, K], packed, N) -> int32 [M, N] = x_int8 @ w_int8^T, exact.
  int8_linear(x [M, K] float, packed, w_scale [N] f32, bias [N] f32 | None, N, activation)
      -> act(fma(acc, row_scale[m] * w_scale[n], bias[n])) in x.dtype, where (q, row_scale) is
      quantize_per_row(x) and acc = q @ w_int8^T (int32). A row of x holding NaN/Inf gives a
      NaN output row. activation in {"none", "relu", "gelu"} (exact erf GELU, erf to ~1e-7).
  int8_linear_static(..., act_scale, activation): as int8_linear with row_scale = act_scale and
      q = clamp(round_half_even(x * (1 / act_scale)), -127, 127) (the division in float32).
"""
import torch

from .quantize import QMAX, quantize_per_row_reference

ACTIVATIONS = ("none", "relu", "gelu")


def packed_numel(out_features: int, in_features: int) -> int:
    """Bytes of the CPU packed layout (see csrc/cpu/int8_gemm_kernels.h)."""
    n16 = (out_features + 15) // 16 * 16
    k4 = (in_features + 3) // 4 * 4
    return n16 * (k4 + 4)


# ------------------------------------------------------------------ references
def int8_gemm_s32_reference(x_int8: torch.Tensor, w_int8: torch.Tensor) -> torch.Tensor:
    """Exact int32 accumulators x_int8 @ w_int8^T (computed in int64, then narrowed)."""
    return (x_int8.long() @ w_int8.long().t()).to(torch.int32)


def quantize_static_reference(x: torch.Tensor, act_scale: float):
    """Per-tensor static quantization as int8_linear_static does it, per row."""
    xf = x.float()
    scale = torch.tensor(act_scale, dtype=torch.float32)
    inv = torch.ones((), dtype=torch.float32) / scale  # IEEE float32 division, like the kernel
    q = torch.round(xf * inv).clamp_(-QMAX, QMAX)
    finite = torch.isfinite(xf).all(dim=1) if xf.shape[1] else torch.ones(xf.shape[0], dtype=torch.bool)
    q = torch.where(finite[:, None], q, torch.zeros_like(q)).to(torch.int8)
    row_scale = torch.where(finite, scale.expand(xf.shape[0]),
                            torch.full((xf.shape[0],), float("nan")))
    return q, row_scale


def apply_activation(y: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return torch.relu(y)
    if activation == "gelu":
        return torch.nn.functional.gelu(y)
    return y


def int8_linear_reference(x, w_int8, w_scale, bias, activation="none", act_scale=None,
                          dtype=torch.float64):
    """The int8 linear computed with plain PyTorch; the epilogue in `dtype` (float64 for tests,
    so the only difference to the kernel is the kernel's float32 rounding)."""
    if act_scale is None:
        q, row_scale = quantize_per_row_reference(x)
    else:
        q, row_scale = quantize_static_reference(x, act_scale)
    acc = int8_gemm_s32_reference(q, w_int8).to(dtype)
    y = acc * (row_scale.to(dtype)[:, None] * w_scale.to(dtype)[None, :])
    if bias is not None:
        y = y + bias.to(dtype)
    return apply_activation(y, activation)


# ------------------------------------------------------------------ fake kernels
@torch.library.register_fake("scalenn::int8_pack_weight")
def _pack_fake(w_int8):
    torch._check(w_int8.dim() == 2, lambda: "int8_pack_weight: w_int8 must be 2-D")
    if w_int8.device.type == "cuda":
        return torch.empty_like(w_int8, memory_format=torch.contiguous_format)
    n, k = w_int8.shape
    return w_int8.new_empty((packed_numel(n, k),))


@torch.library.register_fake("scalenn::int8_unpack_weight")
def _unpack_fake(w_packed, out_features, in_features):
    return w_packed.new_empty((out_features, in_features))


@torch.library.register_fake("scalenn::int8_gemm_s32")
def _gemm_s32_fake(x_int8, w_packed, out_features):
    torch._check(x_int8.dim() == 2, lambda: "int8_gemm_s32: x_int8 must be 2-D")
    return x_int8.new_empty((x_int8.shape[0], out_features), dtype=torch.int32)


@torch.library.register_fake("scalenn::int8_linear")
def _linear_fake(x, w_packed, w_scale, bias, out_features, activation):
    torch._check(x.dim() == 2, lambda: "int8_linear: x must be 2-D")
    return x.new_empty((x.shape[0], out_features))


@torch.library.register_fake("scalenn::int8_weight_only_linear")
def _weight_only_fake(x, w_int8, w_scale, bias, activation):
    torch._check(x.dim() == 2, lambda: "int8_weight_only_linear: x must be 2-D")
    return x.new_empty((x.shape[0], w_int8.shape[0]))


@torch.library.register_fake("scalenn::int8_linear_static")
def _linear_static_fake(x, w_packed, w_scale, bias, out_features, act_scale, activation):
    torch._check(x.dim() == 2, lambda: "int8_linear_static: x must be 2-D")
    return x.new_empty((x.shape[0], out_features))


# ------------------------------------------------------------------ autograd
def _gelu_grad(pre: torch.Tensor) -> torch.Tensor:
    cdf = 0.5 * (1.0 + torch.erf(pre * 0.7071067811865476))
    pdf = torch.exp(-0.5 * pre * pre) * 0.3989422804014327
    return cdf + pre * pdf


def _setup_context(ctx, inputs, output):
    x, w_packed, w_scale, bias, out_features, *rest = inputs
    activation = rest[-1]
    ctx.out_features = out_features
    ctx.in_features = x.shape[1]
    ctx.activation = activation
    ctx.act_scale = rest[0] if len(rest) == 2 else None
    ctx.has_bias = bias is not None
    ctx.x_dtype = x.dtype
    saved_x = x if activation == "gelu" else None
    saved_out = output if activation == "relu" else None
    ctx.save_for_backward(w_packed, w_scale, bias, saved_x, saved_out)


def _through_activation(activation: str, grad, out, pre_activation):
    """grad (float32) times the activation's derivative; relu reads the saved output, gelu
    recomputes its input with `pre_activation()` (the op again with activation "none")."""
    g = grad.float()
    if activation == "relu":
        return g * (out > 0)
    if activation == "gelu":
        return g * _gelu_grad(pre_activation().float())
    return g


def _backward(ctx, grad):
    w_packed, w_scale, bias, x, out = ctx.saved_tensors

    def pre():
        if ctx.act_scale is None:
            return torch.ops.scalenn.int8_linear(x, w_packed, w_scale, bias, ctx.out_features,
                                                 "none")
        return torch.ops.scalenn.int8_linear_static(x, w_packed, w_scale, bias, ctx.out_features,
                                                    ctx.act_scale, "none")
    g = _through_activation(ctx.activation, grad, out, pre)
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        w = torch.ops.scalenn.int8_unpack_weight(w_packed, ctx.out_features, ctx.in_features)
        grad_x = (g @ (w.float() * w_scale[:, None])).to(ctx.x_dtype)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = g.sum(0)
    if ctx.act_scale is None:
        return grad_x, None, None, grad_bias, None, None
    return grad_x, None, None, grad_bias, None, None, None


torch.library.register_autograd("scalenn::int8_linear", _backward, setup_context=_setup_context)
torch.library.register_autograd("scalenn::int8_linear_static", _backward,
                                setup_context=_setup_context)


def _weight_only_setup_context(ctx, inputs, output):
    x, w_int8, w_scale, bias, activation = inputs
    ctx.activation, ctx.has_bias, ctx.x_dtype = activation, bias is not None, x.dtype
    ctx.save_for_backward(w_int8, w_scale, bias, x if activation == "gelu" else None,
                          output if activation == "relu" else None)


def _weight_only_backward(ctx, grad):
    w_int8, w_scale, bias, x, out = ctx.saved_tensors
    g = _through_activation(ctx.activation, grad, out, lambda: torch.ops.scalenn
                            .int8_weight_only_linear(x, w_int8, w_scale, bias, "none"))
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = (g @ (w_int8.float() * w_scale[:, None])).to(ctx.x_dtype)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = g.sum(0)
    return grad_x, None, None, grad_bias, None


torch.library.register_autograd("scalenn::int8_weight_only_linear", _weight_only_backward,
                                setup_context=_weight_only_setup_context)


# ------------------------------------------------------------------ int8 convolution rows
def conv_output_size(h, w, kernel_size, stride, padding, dilation):
    ho = (h + 2 * padding[0] - dilation[0] * (kernel_size[0] - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kernel_size[1] - 1) - 1) // stride[1] + 1
    return ho, wo


def im2col_rows_reference(x, kernel_size, stride, padding, dilation):
    """The patches int8_conv2d_rows quantizes, as F.unfold rows [N * Ho * Wo, C * kh * kw] in
    (c, i, j) order. The op itself gathers them in (i, j, c) order against a weight packed in
    the same order; per-row quantization and the int32 dot products do not depend on the order,
    so the results are identical."""
    cols = torch.nn.functional.unfold(x, kernel_size, dilation, padding, stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@torch.library.register_fake("scalenn::int8_conv2d_rows")
def _conv2d_rows_fake(x, w_packed, w_scale, bias, out_channels, kernel_size, stride, padding,
                      dilation):
    torch._check(x.dim() == 4, lambda: "int8_conv2d_rows: x must be 4-D")
    n, _, h, w = x.shape
    ho, wo = conv_output_size(h, w, kernel_size, stride, padding, dilation)
    return x.new_empty((n * ho * wo, out_channels))


def _conv_setup_context(ctx, inputs, output):
    x, w_packed, w_scale, bias, out_channels, kernel_size, stride, padding, dilation = inputs
    ctx.geometry = (list(kernel_size), list(stride), list(padding), list(dilation))
    ctx.x_shape, ctx.x_dtype = tuple(x.shape), x.dtype
    ctx.out_channels, ctx.has_bias = out_channels, bias is not None
    ctx.save_for_backward(w_packed, w_scale)


def _conv_backward(ctx, grad):
    w_packed, w_scale = ctx.saved_tensors
    kernel_size, stride, padding, dilation = ctx.geometry
    n, c, h, w = ctx.x_shape
    g = grad.float()
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        kh, kw = kernel_size
        k = c * kh * kw
        wq = torch.ops.scalenn.int8_unpack_weight(w_packed, ctx.out_channels, k)
        # packed in (o, i, j, c) order (see int8_conv2d_rows); F.fold wants (c, i, j)
        wq = wq.view(ctx.out_channels, kh, kw, c).permute(0, 3, 1, 2).reshape(ctx.out_channels, k)
        cols = (g @ (wq.float() * w_scale[:, None])).reshape(n, -1, k).transpose(1, 2)
        grad_x = torch.nn.functional.fold(cols, (h, w), kernel_size, dilation, padding,
                                          stride).to(ctx.x_dtype)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = g.sum(0)
    return grad_x, None, None, grad_bias, None, None, None, None, None


torch.library.register_autograd("scalenn::int8_conv2d_rows", _conv_backward,
                                setup_context=_conv_setup_context)
