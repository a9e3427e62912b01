"""SparseInt8Linear: a drop-in nn.Linear whose pruned weight is stored as int8 (symmetric per
output channel) in scalenn's sparse int8 format and computed by the VNNI sparse kernels, with
activations quantized per token on the fly (as Int8Linear's int8_dynamic).

State (all in state_dict, device-neutral): `values`, `rel`, `base`, `row_offsets`, `row_order`
(buffers, see scalenn/compress/sparse_int8_format.py), `weight_scale` [N] float32, `bias` (a
trainable Parameter). The weight itself is frozen: backward gives gradients for the input and
the bias. In memory on the CPU, an elem16 layer's values and rel are [steps, 64] views of one
interleaved array (fmt.step_stream) and a quad layer's arrays share one buffer, both on huge
pages (place_weights); state_dict and files hold the plain 1-D arrays either way.
"""
from typing import Optional

import torch
import torch.nn as nn

from .. import _C
from ..compress import sparse_int8_format as fmt
from ..ops import FLOAT_DTYPES
from ..ops_int8 import quantize_weight
from .layer_helpers import (apply_keeping_float32, call_op, dense_linear, weight_memory,
                            weight_memory_together)
from .registry import register_compressed_module

_SPARSE_INT8_LINEAR = torch.ops.scalenn.sparse_int8_linear.default
_FLOAT_DTYPES = frozenset(FLOAT_DTYPES)


@register_compressed_module
class SparseInt8Linear(nn.Module):
    """y = x @ W^T + b with a pruned W stored as int8 in the sparse int8 format `format`
    ("elem16": one kept weight per entry, rows in groups of 16; "quad": groups of 4 columns).

    Build one with `from_dense(linear, mask=None)`, `from_sparse(sparse_linear)` or
    `from_int8(int8_linear)`; for a whole model `scalenn.quantize` (on pruned layers) or
    `scalenn.sparsify` (on Int8Linear layers) does it.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 format: str = "elem16", chunks: int = 0, device=None) -> None:
        super().__init__()
        if in_features < 0 or out_features < 0 or chunks < 0:
            raise ValueError(f"SparseInt8Linear: sizes must be >= 0, got in={in_features}, "
                             f"out={out_features}, chunks={chunks}")
        try:
            fmt.check_format(format)
        except ValueError as e:
            raise ValueError(f"SparseInt8Linear: {e}") from None
        if chunks % fmt.chunks_per_base(format):
            raise ValueError(f"SparseInt8Linear: an {format} layer has a multiple of "
                             f"{fmt.chunks_per_base(format)} chunks, got {chunks}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.format = format
        width = 1 if format == "elem16" else 4
        entries = chunks * fmt.chunk_entries(format)
        self.register_buffer("values", torch.zeros(entries * width, dtype=torch.int8, device=device))
        self.register_buffer("rel", torch.zeros(entries, dtype=torch.uint8, device=device))
        self.register_buffer("base", torch.zeros(chunks // fmt.chunks_per_base(format),
                                                 dtype=torch.int16, device=device))
        # A valid empty pattern until real data is loaded: the last row (elem16: its group) owns
        # every chunk.
        offsets = torch.zeros(out_features + 1, dtype=torch.int32, device=device)
        offsets[-1] = chunks
        self.register_buffer("row_offsets", offsets)
        self.register_buffer("row_order", torch.arange(out_features, dtype=torch.int32,
                                                       device=device))
        self.register_buffer("weight_scale", torch.zeros(out_features, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device))
        else:
            self.register_parameter("bias", None)
        self.register_load_state_dict_post_hook(SparseInt8Linear._validate_after_load)

    # ---------------------------------------------------------------- conversion
    @classmethod
    def from_int8_weight(cls, w_int8: torch.Tensor, weight_scale: torch.Tensor,
                         bias: Optional[torch.Tensor], format: Optional[str] = None
                         ) -> "SparseInt8Linear":
        """From a symmetric int8 weight [N, K], its per-channel scales and a bias."""
        format = format or fmt.choose_format(w_int8)
        packed = fmt.pack(w_int8, format)
        n, k = w_int8.shape
        m = cls(k, n, bias is not None, format, packed.rel.numel() // fmt.chunk_entries(format),
                device=w_int8.device)
        m.values, m.rel, m.base, m.row_offsets, m.row_order = (t.to(w_int8.device)
                                                               for t in packed[:5])
        with torch.no_grad():
            m.weight_scale.copy_(weight_scale.detach().float())
            if bias is not None:
                m.bias.copy_(bias.detach().float())
        m.place_weights()
        return m

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: Optional[torch.Tensor] = None,
                   format: Optional[str] = None) -> "SparseInt8Linear":
        """Quantize `linear.weight * mask` (mask None: the weight as it is, zeros pruned) per
        output channel and pack its nonzeros."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"SparseInt8Linear.from_dense: expected an nn.Linear, got "
                            f"{type(linear).__name__}")
        w = linear.weight.detach()
        if mask is not None:
            if tuple(mask.shape) != tuple(w.shape):
                raise ValueError(f"SparseInt8Linear.from_dense: mask shape {tuple(mask.shape)} "
                                 f"does not match the weight {tuple(w.shape)}")
            w = w * mask.to(torch.bool)
        q, scale = quantize_weight(w)
        return cls.from_int8_weight(q, scale, linear.bias, format)

    @classmethod
    def from_sparse(cls, sparse: nn.Module, format: Optional[str] = None) -> "SparseInt8Linear":
        """From a SparseLinear: its stored weight quantized per output channel."""
        from .sparse_linear import SparseLinear
        if not isinstance(sparse, SparseLinear):
            raise TypeError(f"SparseInt8Linear.from_sparse: expected a SparseLinear, got "
                            f"{type(sparse).__name__}")
        q, scale = quantize_weight(sparse.dense_weight().detach())
        return cls.from_int8_weight(q, scale, sparse.bias, format)

    @classmethod
    def from_int8(cls, layer: nn.Module, format: Optional[str] = None) -> "SparseInt8Linear":
        """From an Int8Linear (int8_dynamic): the same int8 weights and scales, zeros dropped."""
        from .int8_linear import Int8Linear
        if not isinstance(layer, Int8Linear):
            raise TypeError(f"SparseInt8Linear.from_int8: expected an Int8Linear, got "
                            f"{type(layer).__name__}")
        if layer.scheme != "int8_dynamic" or layer.activation != "none":
            raise ValueError(f"SparseInt8Linear.from_int8: only int8_dynamic layers without a "
                             f"fused activation convert (the sparse kernel quantizes activations "
                             f"per token), got scheme={layer.scheme}, "
                             f"activation={layer.activation}")
        return cls.from_int8_weight(layer.weight_int8, layer.weight_scale, layer.bias, format)

    def packed(self) -> fmt.PackedSparseInt8:
        """The packed weight with 1-D values and rel (copies when they are interleaved)."""
        return fmt.flat(fmt.PackedSparseInt8(self.values, self.rel, self.base, self.row_offsets,
                                             self.row_order, self.format))

    def weight_int8(self) -> torch.Tensor:
        """The dense int8 weight [out_features, in_features]."""
        return fmt.unpack(self.packed(), self.in_features)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized dense weight (float32), for code that reads `.weight`."""
        return self.weight_int8().float() * self.weight_scale[:, None]

    def to_dense(self) -> nn.Linear:
        return dense_linear(self.weight, self.bias)

    @property
    def kept(self) -> int:
        """Nonzero int8 weights."""
        return int((self.values != 0).sum())

    @property
    def density(self) -> float:
        total = self.in_features * self.out_features
        return self.kept / total if total else 0.0

    @property
    def bytes_per_kept_weight(self) -> float:
        """Values + indices + row offsets and order + scales, per nonzero weight."""
        total = fmt.stored_bytes(self.packed()) + 4 * self.out_features
        return total / max(1, self.kept)

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"SparseInt8Linear: x must be a float32, bfloat16 or float16 "
                            f"torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"SparseInt8Linear: x must have in_features = {self.in_features} "
                             f"in its last dimension, got shape {tuple(x.shape)}")
        # Buffers straight from the dict: seven nn.Module attribute lookups cost ~2 us a call.
        b = self._buffers
        values = b["values"]
        if x.device.type != "cpu" or values.device.type != "cpu":
            raise ValueError(f"SparseInt8Linear runs on the CPU only (the sparse int8 kernels "
                             f"are CPU kernels), got x on {x.device} and the layer on "
                             f"{values.device}; use to_dense() elsewhere")
        x2 = x if x.dim() == 2 else (x.reshape(1, self.in_features) if x.dim() == 1
                                     else x.flatten(0, -2))
        bias = self.bias
        y = call_op(_SPARSE_INT8_LINEAR, (x2, values, b["rel"], b["base"], b["row_offsets"],
                                          b["row_order"], b["weight_scale"], bias, self.format),
                    x, bias)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    # ---------------------------------------------------------------- registry protocol
    def compression_config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "format": self.format,
                "chunks": int(self.rel.numel()) // fmt.chunk_entries(self.format)}

    @classmethod
    def from_config(cls, config: dict) -> "SparseInt8Linear":
        return cls(int(config["in_features"]), int(config["out_features"]),
                   bool(config.get("bias", True)), config.get("format", "elem16"),
                   int(config.get("chunks", 0)))

    def place_weights(self) -> None:
        """Lay out the arrays the kernel streams for batch-1 speed, on the CPU: elem16's rel and
        values interleaved step by step into one stream (fmt.step_stream) on huge pages
        (layer_helpers.weight_memory), quad's rel, values and base in one huge-page buffer
        (weight_memory_together). Done by the from_* constructors, on loading and on device
        moves; a deep copy lands in ordinary memory until this is called."""
        b = self._buffers
        values = b["values"]
        # Elsewhere the op does not run; shared memory (share_memory()) must stay where other
        # processes map it.
        if values.device.type != "cpu" or values.is_shared():
            return
        if self.format == "elem16":
            b["values"], b["rel"] = fmt.step_views(weight_memory(fmt.step_stream(values, b["rel"])))
        else:
            b["rel"], b["values"], b["base"] = weight_memory_together(b["rel"], values, b["base"])

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name in ("values", "rel"):  # files hold the 1-D arrays
            destination[prefix + name] = destination[prefix + name].reshape(-1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("values", "rel"):  # 1-D, as the file's, for the size check and copy
            self._buffers[name] = self._buffers[name].reshape(-1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @staticmethod
    def _validate_after_load(module, incompatible_keys):
        fmt.check(module.packed(), module.out_features, module.in_features)
        module.place_weights()

    def _apply(self, fn, *args, **kwargs):
        # model.to(torch.bfloat16) must not change the float32 scales and bias the kernel reads.
        before = self._buffers["values"]
        out = apply_keeping_float32(
            self, lambda: super(SparseInt8Linear, self)._apply(fn, *args, **kwargs),
            ("weight_scale", "bias"))
        if self._buffers["values"] is not before:  # moved or copied (dtype casts skip int8)
            self.place_weights()
        return out

    def extra_repr(self) -> str:
        kernel = f"cpu-{_C.current_isa()}" if self.values.device.type == "cpu" else \
            str(self.values.device)
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, format={self.format}, "
                f"density={self.density:.4f}, bytes_per_kept={self.bytes_per_kept_weight:.2f}, "
                f"kernel={kernel}")
