"""Int8Linear: a drop-in for nn.Linear running int8 kernels, and QATLinear, its fake-quantized
training twin.

Persistent state (state_dict / scalenn.save): weight_int8 [N, K] int8 (symmetric per output
channel), weight_scale [N] float32, bias [N] float32 (a Parameter, trainable), and for
int8_static the calibrated act_scale. The packed form the kernels stream (`_packed`, layout per
device) is a non-persistent buffer rebuilt at construction from a dense layer, on load and on a
device move.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _C
from .._ops.int8 import ACTIVATIONS, apply_activation
from ..ops import FLOAT_DTYPES
from ..ops_int8 import check_int8_device, int8_linear, pack_weight, quantize_weight
from .layer_helpers import apply_keeping_float32, call_op, dense_linear, weight_memory
from .registry import register_compressed_module

SCHEMES = ("int8_dynamic", "int8_weight_only", "int8_static")
_FLOAT_DTYPES = frozenset(FLOAT_DTYPES)
_INT8_LINEAR = torch.ops.scalenn.int8_linear.default
_INT8_WEIGHT_ONLY = torch.ops.scalenn.int8_weight_only_linear.default


@register_compressed_module
class Int8Linear(nn.Module):
    """y = x @ W^T + b with W stored as int8 per output channel.

    scheme:
      int8_dynamic      activations quantized per token (row) on the fly; int32 accumulation; one
                        fused epilogue (row scale x channel scale, bias, activation).
      int8_weight_only  activations stay float (float32 math); the int8 weight is streamed by
                        scalenn::int8_weight_only_linear without a float copy (for layers
                        whose activations quantize badly: heavy tails, outliers).
      int8_static       one per-tensor activation scale from scalenn.calibrate().
    activation: "none" (nn.Linear), or a fused "relu"/"gelu" applied in the epilogue.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 scheme: str = "int8_dynamic", activation: str = "none",
                 device=None) -> None:
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"Int8Linear: scheme must be one of {SCHEMES}, got {scheme!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"Int8Linear: activation must be one of {ACTIVATIONS}, got "
                             f"{activation!r}")
        if in_features < 0 or out_features < 0:
            raise ValueError(f"Int8Linear: feature sizes must be >= 0, got in={in_features}, "
                             f"out={out_features}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.scheme = scheme
        self.activation = activation
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features,
                                                        dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.zeros(out_features, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device))
        else:
            self.register_parameter("bias", None)
        # Calibrated per-tensor activation scale (int8_static); NaN until calibrated. Kept as a
        # Python float too, a constant for the op call and for torch.compile.
        self.register_buffer("act_scale", torch.full((), float("nan"), device=device),
                             persistent=scheme == "int8_static")
        self._act_scale = float("nan")
        self._observing = False
        self.register_buffer("_packed", torch.empty(0, dtype=torch.int8, device=device),
                             persistent=False)
        self._repack()

    # ---------------------------------------------------------------- conversion
    @classmethod
    def from_dense(cls, linear: nn.Linear, scheme: str = "int8_dynamic",
                   activation: str = "none", name: str = "linear") -> "Int8Linear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Int8Linear.from_dense: expected an nn.Linear, got "
                            f"{type(linear).__name__}")
        q, scale = quantize_weight(linear.weight, name=f"{name}.weight")
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, scheme,
                activation, device=linear.weight.device)
        m.weight_int8.copy_(q)
        m.weight_scale.copy_(scale)
        if linear.bias is not None:
            with torch.no_grad():
                m.bias.copy_(linear.bias.detach().float())
        m._repack()
        return m

    def to_dense(self) -> nn.Linear:
        return dense_linear(self.weight, self.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (float32), for code that reads `.weight`."""
        return self.weight_int8.float() * self.weight_scale[:, None]

    # ---------------------------------------------------------------- packing
    def _weight_to_pack(self) -> torch.Tensor:
        """The [out, in] int8 matrix the kernels stream (Int8Conv2d reorders its columns)."""
        return self.weight_int8

    def _repack(self) -> None:
        w = self.weight_int8
        if self.scheme == "int8_weight_only" or w.device.type == "meta":
            self._packed = w.new_empty(0)
            return
        w = self._weight_to_pack()
        if w.device.type == "cpu":
            # Bad weights (e.g. -128 from a foreign file) raise.
            self._packed = weight_memory(pack_weight(w))
            return
        try:
            self._packed = pack_weight(w)
        except ValueError:
            # No int8 kernels for this device in this build: forward() says so clearly.
            self._packed = w.new_empty(0)

    def _apply(self, fn, *args, **kwargs):
        # model.to(torch.bfloat16) / .half() / .double() must not change the int8 layer's float32
        # scales and bias (the kernels read them as float32; outputs follow the input's dtype).
        out = apply_keeping_float32(self, lambda: super(Int8Linear, self)._apply(fn, *args, **kwargs),
                                    ("weight_scale", "act_scale", "bias"))
        self._repack()  # the packed layout is device-specific
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "act_scale"
        if key in state_dict:
            self._act_scale = float(state_dict[key])
        self._repack()

    # ---------------------------------------------------------------- static calibration
    def set_act_scale(self, scale: float) -> None:
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"Int8Linear: act_scale must be finite and > 0, got {scale}")
        self._act_scale = float(scale)
        self.act_scale.fill_(scale)

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scheme == "int8_dynamic" and not self._observing:
            # The hot path: the fewest Python steps that still give clear errors (the op checks
            # the rest), since small layers are dominated by per-call overhead.
            if not isinstance(x, torch.Tensor) or x.dtype not in _FLOAT_DTYPES:
                raise TypeError(f"Int8Linear: x must be a float32, bfloat16 or float16 "
                                f"torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
            if x.dim() == 0 or x.shape[-1] != self.in_features:
                raise ValueError(f"Int8Linear: x must have in_features = {self.in_features} in "
                                 f"its last dimension, got shape {tuple(x.shape)}")
            if x.device.type != "cpu":
                check_int8_device(x, "Int8Linear")
            x2 = x if x.dim() == 2 else (x.reshape(1, self.in_features) if x.dim() == 1
                                         else x.flatten(0, -2))
            y = call_op(_INT8_LINEAR, (x2, self._packed, self.weight_scale, self.bias,
                                       self.out_features, self.activation), x, self.bias)
            return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)
        if self.scheme == "int8_weight_only" or self._observing:
            if self._observing:
                self._observe(x)
            if not isinstance(x, torch.Tensor) or not x.is_floating_point() or \
                    x.shape[-1:] != (self.in_features,):
                raise ValueError(f"Int8Linear: expected a float tensor with last dimension "
                                 f"{self.in_features}, got "
                                 f"{getattr(x, 'dtype', type(x).__name__)} "
                                 f"{tuple(getattr(x, 'shape', ()))}")
            if x.device.type == "cpu" and x.dtype in _FLOAT_DTYPES:
                # the int8 weight streamed by the kernel, never dequantized as a whole
                x2 = x.reshape(-1, self.in_features)
                y = call_op(_INT8_WEIGHT_ONLY, (x2, self.weight_int8, self.weight_scale,
                                                self.bias, self.activation), x, self.bias)
                return y.reshape(*x.shape[:-1], self.out_features)
            w = self.weight_int8.to(x.dtype) * self.weight_scale.to(x.dtype)[:, None]
            b = self.bias.to(x.dtype) if self.bias is not None else None
            return apply_activation(F.linear(x, w, b), self.activation)
        act_scale = None
        if self.scheme == "int8_static":
            act_scale = self._act_scale
            if not math.isfinite(act_scale):
                raise ValueError("Int8Linear(int8_static) has no activation scale yet: run "
                                 "scalenn.calibrate(model, batches) first")
        return int8_linear(x, self._packed, self.weight_scale, self.bias, self.in_features,
                           self.out_features, self.activation, act_scale)

    def _observe(self, x: torch.Tensor) -> None:
        amax = float(x.detach().abs().amax()) if x.numel() else 0.0
        self._observed_amax = max(getattr(self, "_observed_amax", 0.0), amax)

    # ---------------------------------------------------------------- registry protocol
    def compression_config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "scheme": self.scheme,
                "activation": self.activation}

    @classmethod
    def from_config(cls, config: dict) -> "Int8Linear":
        return cls(**config)

    def extra_repr(self) -> str:
        kernel = f"cpu-{_C.current_isa()}" if self.weight_int8.device.type == "cpu" else \
            str(self.weight_int8.device)
        s = (f"in_features={self.in_features}, out_features={self.out_features}, "
             f"bias={self.bias is not None}, scheme={self.scheme}")
        if self.activation != "none":
            s += f", activation={self.activation}"
        if self.scheme == "int8_static":
            s += f", act_scale={self._act_scale:.4g}"
        return s + f", kernel={kernel}"


def fake_quantize_rows(x: torch.Tensor) -> torch.Tensor:
    """x quantized per row (last dim) to int8 and back, exactly as the int8 kernels quantize;
    gradients pass straight through."""
    lead = x.shape[:-1]
    x2 = x.reshape(1, x.shape[-1]) if x.dim() == 1 else x.flatten(0, -2)
    # Straight-through: the forward value is the fake-quantized one, the gradient is identity.
    xq = torch.ops.scalenn.quantize_per_row(x2.detach().contiguous())
    fq = xq[0].to(x.dtype) * xq[1].to(x.dtype)[:, None]
    out = x2 + (fq - x2).detach()
    return out.reshape(*lead, x.shape[-1])


class QATLinear(nn.Linear):
    """nn.Linear with int8 fake quantization (per-channel weights, per-token activations, the
    kernels' rounding) and straight-through gradients; scalenn.quantize() turns it into an
    Int8Linear whose outputs equal this module's up to float rounding."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "QATLinear":
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        m.in_features, m.out_features = linear.in_features, linear.out_features
        m.weight = linear.weight  # the same Parameters: optimizer state stays valid
        m.bias = linear.bias
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fake_quantize_rows(self.weight)
        return F.linear(fake_quantize_rows(x), w.to(x.dtype),
                        self.bias.to(x.dtype) if self.bias is not None else None)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", fake_quant=int8 per-channel weights / per-token inputs"
