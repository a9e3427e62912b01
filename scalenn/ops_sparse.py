"""Public functional API of the sparse family (re-exported from scalenn.ops)."""
from typing import Optional

import torch

from ._ops.sparse import sparse_linear_reference


def sparse_linear(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                  offsets: torch.Tensor, bias: Optional[torch.Tensor], layout: str,
                  out_features: int, in_features: int) -> torch.Tensor:
    """y = x @ W.T + bias for a weight W [out_features, in_features] stored in `layout`
    ("csr", "bsr:RxC", "nm:N:M"; see scalenn/compress/sparse_format.py). x: [..., in_features].

    float32 on CPU runs scalenn's kernels (autograd: grad wrt x and wrt the stored values only);
    float64, and devices without a sparse kernel, run the plain-PyTorch reference (differentiable
    the same way; it is what gradcheck checks). bfloat16/float16 inputs compute in float32 and
    return their own dtype.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"sparse_linear: x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"sparse_linear: x must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("sparse_linear: x must have at least 1 dimension, got a 0-D tensor")
    if x.shape[-1] != in_features:
        raise ValueError(f"sparse_linear: x must have in_features = {in_features} in its last "
                         f"dimension, got shape {tuple(x.shape)}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x.dtype == torch.float64 or x.device.type not in ("cpu", "meta"):
        v = values.to(x.dtype)
        b = bias.to(x.dtype) if bias is not None else None
        y = sparse_linear_reference(x2, v, indices, offsets, b, layout, out_features, in_features)
        return y.reshape(*lead, out_features)
    dtype = x.dtype
    if dtype != torch.float32:
        x2 = x2.float()
    y = torch.ops.scalenn.sparse_linear(x2.contiguous(), values, indices, offsets, bias, layout,
                                        out_features, in_features)
    return y.reshape(*lead, out_features).to(dtype)
