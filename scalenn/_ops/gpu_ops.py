"""GPU tensor-core family (mma_sp24_linear): plain-PyTorch reference (the test oracle and the
CPU implementation), fake kernel. The CUDA implementation is csrc/cuda/sparse24_cuda.cpp
(SCALENN_CUDA builds), which also defines wgmma_sp24_linear: the same contract on the Hopper
wgmma.sp kernel, a CUDA-only op (no CPU kernel) that gets the same fake kernel here. The
gradient-bucket ops are scalenn::bucket_* (scalenn/_ops/bucket.py).
"""
import torch
import torch.nn.functional as F

from .quantize import quantize_per_row_reference
from .sparse24_layout import unpack_sparse24

ACTIVATIONS = ("none", "relu", "gelu")


def _activate(y, activation):
    if activation == "relu":
        return torch.relu(y)
    if activation == "gelu":
        return F.gelu(y)
    return y


def _check_activation(activation, op):
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {ACTIVATIONS}, got {activation!r}")


def mma_sp24_linear_reference(x, values, meta, w_scale, bias, out_features, activation):
    """act(x @ W^T + bias) with W decoded from the 2:4 register images.

    fp16/bf16 values: x in the same dtype, float32 products and sums, output x.dtype.
    int8 values: x (any float dtype) quantized per token by the quantize_per_row contract, exact
    integer dot products, then acc * s_x[m] * w_scale[n] (+ bias) in float32, output x.dtype."""
    _check_activation(activation, "mma_sp24_linear")
    K = x.shape[-1]
    w = unpack_sparse24(values.cpu(), meta.cpu(), int(out_features), K)
    x2 = x.reshape(-1, K).cpu()
    if values.dtype == torch.int8:
        if w_scale is None:
            raise ValueError("mma_sp24_linear: int8 values need w_scale")
        q, s = quantize_per_row_reference(x2)
        acc = q.to(torch.int64) @ w.to(torch.int64).t()
        y = acc.to(torch.float32) * s[:, None] * w_scale.cpu().float()[None, :]
    else:
        if values.dtype != x.dtype:
            raise TypeError(f"mma_sp24_linear: values must be int8 or x's dtype ({x.dtype}), "
                            f"got {values.dtype}")
        y = x2.float() @ w.float().t()
    if bias is not None:
        y = y + bias.cpu().float()[None, :]
    y = _activate(y, activation)
    return y.to(x.dtype).reshape(*x.shape[:-1], int(out_features)).to(x.device)


# CPU implementations are the references.
torch.library.register_kernel("scalenn::mma_sp24_linear", "cpu", mma_sp24_linear_reference)


@torch.library.register_fake("scalenn::mma_sp24_linear")
def _mma_sp24_linear_fake(x, values, meta, w_scale, bias, out_features, activation):
    return x.new_empty((*x.shape[:-1], out_features))


def _register_wgmma_fake() -> None:
    try:
        torch.ops.scalenn.wgmma_sp24_linear
    except (AttributeError, RuntimeError):
        return  # a build without the CUDA kernels
    torch.library.register_fake("scalenn::wgmma_sp24_linear")(_mma_sp24_linear_fake)


_register_wgmma_fake()
