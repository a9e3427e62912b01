"""Int8Conv2d: a drop-in nn.Conv2d (groups=1, zero padding) running scalenn's int8 GEMM on
im2col patches (scalenn::int8_conv2d_rows gathers each output pixel's patch and quantizes it per
row, like Int8Linear's tokens, without building the float patch matrix); weights int8 per output
channel. The input is read channels-last and the output is NCHW with channels-last strides (the
GEMM writes [N*H*W, C]), which the following ReLU / pooling / conv layers accept as they are.

It is an Int8Linear over patches (in_features = C_in * kh * kw), so packing, dtype/device moves
and save/load are shared; the geometry and the conv op call are added here.
"""
from typing import Tuple

import torch
import torch.nn as nn

from .._ops.int8 import conv_output_size
from .int8_linear import Int8Linear
from .layer_helpers import call_op
from .registry import register_compressed_module


_INT8_CONV2D_ROWS = torch.ops.scalenn.int8_conv2d_rows.default


def _pair(v) -> Tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


@register_compressed_module
class Int8Conv2d(Int8Linear):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = True, device=None) -> None:
        kh, kw = _pair(kernel_size)
        super().__init__(in_channels * kh * kw, out_channels, bias, "int8_dynamic", "none",
                         device=device)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = (kh, kw), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)

    @staticmethod
    def convertible(conv: nn.Module) -> str:
        """'' when `conv` can become an Int8Conv2d, else why not."""
        if type(conv) is not nn.Conv2d:
            return f"{type(conv).__name__} is not a plain nn.Conv2d"
        if conv.groups != 1:
            return f"groups={conv.groups} (only groups=1)"
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            return f"padding {conv.padding!r} / {conv.padding_mode} (only explicit zero padding)"
        return ""

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, name: str = "conv") -> "Int8Conv2d":
        reason = cls.convertible(conv)
        if reason:
            raise ValueError(f"Int8Conv2d.from_dense: cannot convert {name}: {reason}")
        m = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.bias is not None, device=conv.weight.device)
        flat = nn.Linear(m.in_features, m.out_features, conv.bias is not None,
                         device=conv.weight.device)
        with torch.no_grad():
            flat.weight.copy_(conv.weight.reshape(conv.out_channels, -1))
            if conv.bias is not None:
                flat.bias.copy_(conv.bias)
        q = Int8Linear.from_dense(flat, name=f"{name}.weight")
        m.load_state_dict(q.state_dict())
        return m

    def _weight_to_pack(self) -> torch.Tensor:
        # int8_conv2d_rows gathers patches in (i, j, c) order (channels innermost, contiguous in
        # a channels-last input); weight_int8 keeps nn.Conv2d's (c, i, j) order for state_dict.
        w = self.weight_int8
        if not hasattr(self, "kernel_size"):  # Int8Linear.__init__ packs before we set geometry
            return w
        kh, kw = self.kernel_size
        return (w.view(self.out_channels, self.in_channels, kh, kw).permute(0, 2, 3, 1)
                .reshape(self.out_channels, -1).contiguous())

    def to_dense(self) -> nn.Conv2d:
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                         self.padding, self.dilation, bias=self.bias is not None,
                         device=self.weight_int8.device)
        with torch.no_grad():
            conv.weight.copy_(self.weight.reshape(conv.weight.shape))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Int8Conv2d: x must be [N, {self.in_channels}, H, W], got "
                             f"{tuple(getattr(x, 'shape', ()))}")
        if not x.is_floating_point():
            raise TypeError(f"Int8Conv2d: x must be float32, bfloat16 or float16, got {x.dtype}")
        n, _, h, w = x.shape
        ho, wo = conv_output_size(h, w, self.kernel_size, self.stride, self.padding,
                                  self.dilation)
        rows = call_op(_INT8_CONV2D_ROWS, (x, self._packed, self.weight_scale, self.bias,
                                           self.out_channels, self.kernel_size, self.stride,
                                           self.padding, self.dilation), x, self.bias)
        # NCHW with channels-last strides: no copy, and pooling is faster on it than on NCHW.
        return rows.view(n, ho, wo, self.out_channels).permute(0, 3, 1, 2)

    def compression_config(self) -> dict:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "dilation": list(self.dilation),
                "bias": self.bias is not None}

    @classmethod
    def from_config(cls, config: dict) -> "Int8Conv2d":
        return cls(**config)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"bias={self.bias is not None}, int8 im2col GEMM")
