"""Public functional API of the int8 linear ops: validation with clear errors, N-D inputs, then
torch.ops.scalenn.* (contracts in scalenn/_ops/int8.py)."""
from typing import Optional, Tuple

import torch

from ._ops.int8 import ACTIVATIONS
from .ops import FLOAT_DTYPES, _check_device


def quantize_weight(weight: torch.Tensor, name: str = "weight") -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 quantization of a [N, K] weight: (w_int8, scale [N]).

    Same rounding as quantize_per_row. A weight holding NaN or Inf is a ValueError (it would
    poison every output row).
    """
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got "
                        f"{getattr(weight, 'dtype', type(weight).__name__)}")
    if weight.dim() != 2:
        raise ValueError(f"{name} must be 2-D [out_features, in_features], got shape "
                         f"{tuple(weight.shape)}")
    w = weight.detach().float().contiguous()
    if not bool(torch.isfinite(w).all()):
        bad = int((~torch.isfinite(w)).sum())
        raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN/Inf); int8 quantization "
                         f"needs finite weights")
    if w.device.type != "cpu":
        w = w.cpu()  # the quantization itself runs once, at conversion
    q, scale = torch.ops.scalenn.quantize_per_row(w)
    return q.to(weight.device), scale.to(weight.device)


def pack_weight(w_int8: torch.Tensor) -> torch.Tensor:
    """The packed form the int8 kernels stream (device-specific, opaque)."""
    if not isinstance(w_int8, torch.Tensor) or w_int8.dtype != torch.int8 or w_int8.dim() != 2:
        raise TypeError(f"pack_weight: expected a 2-D int8 tensor, got "
                        f"{getattr(w_int8, 'dtype', type(w_int8).__name__)} "
                        f"{tuple(getattr(w_int8, 'shape', ()))}")
    check_int8_device(w_int8, "pack_weight", "scalenn::int8_pack_weight")
    return torch.ops.scalenn.int8_pack_weight(w_int8.contiguous())


def check_int8_device(t: torch.Tensor, fn: str, op: str = "scalenn::int8_linear") -> None:
    """ValueError unless this build has an int8 kernel for t's device (CPU always)."""
    if t.device.type in ("cpu", "meta"):
        return
    _check_device(t, fn)
    key = "CUDA" if t.device.type == "cuda" else t.device.type
    if not torch._C._dispatch_has_kernel_for_dispatch_key(op, key):
        raise ValueError(f"{fn}: scalenn has no int8 kernels for device '{t.device}' in this "
                         f"build (CPU always; CUDA when built with its int8 kernels)")


def _check_x(x: torch.Tensor, in_features: int, fn: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{fn}: x must be float32, bfloat16 or float16, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(f"{fn}: x must have in_features = {in_features} in its last dimension, "
                         f"got shape {tuple(x.shape)}")
    check_int8_device(x, fn)


def int8_linear(x: torch.Tensor, w_packed: torch.Tensor, w_scale: torch.Tensor,
                bias: Optional[torch.Tensor], in_features: int, out_features: int,
                activation: str = "none", act_scale: Optional[float] = None) -> torch.Tensor:
    """act(x @ (w_int8 * w_scale)^T + bias) with x quantized per row (act_scale None) or with a
    calibrated per-tensor scale, int32 accumulation; any leading dimensions; output in x.dtype."""
    _check_x(x, in_features, "int8_linear")
    if activation not in ACTIVATIONS:
        raise ValueError(f"int8_linear: activation must be one of {ACTIVATIONS}, got {activation!r}")
    lead = x.shape[:-1]
    x2 = x.reshape(1, in_features) if x.dim() == 1 else x.flatten(0, -2)
    if act_scale is None:
        y = torch.ops.scalenn.int8_linear(x2, w_packed, w_scale, bias, out_features, activation)
    else:
        y = torch.ops.scalenn.int8_linear_static(x2, w_packed, w_scale, bias, out_features,
                                                 float(act_scale), activation)
    return y.reshape(*lead, out_features)
