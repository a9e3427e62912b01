"""SparseLinear: a drop-in nn.Linear whose weight is stored packed (csr / bsr / N:M), computed
by scalenn's sparse kernels, and trained sparsely (gradients reach only the stored values, so
an optimizer step keeps the pattern).

State (all in state_dict, device-neutral): `values` (nn.Parameter), `indices` and `offsets`
(buffers), `bias`; the layout string and shapes are in `compression_config()`.
"""
from typing import Optional

import torch
import torch.nn as nn

from ..compress import sparse_format
from ..ops_sparse import sparse_linear
from .registry import register_compressed_module


def _empty_layout(layout: str, in_features: int, out_features: int, stored: int,
                  index_dtype: torch.dtype, device=None):
    kind, a, b = sparse_format.parse_layout(layout)
    if kind == "csr":
        return (torch.zeros(stored, device=device), torch.zeros(stored, dtype=index_dtype, device=device),
                torch.zeros(out_features + 1, dtype=torch.int32, device=device))
    if kind == "bsr":
        return (torch.zeros(stored, a, b, device=device),
                torch.zeros(stored, dtype=torch.int32, device=device),
                torch.zeros(out_features // a + 1, dtype=torch.int32, device=device))
    shape = (out_features, in_features // b * a)
    # positions 0..N-1 in each group: a valid (if arbitrary) pattern until real data is loaded
    pos = torch.arange(a, dtype=torch.uint8, device=device).repeat(shape[1] // a if a else 0)
    return (torch.zeros(shape, device=device), pos.expand(shape).contiguous(),
            torch.zeros(0, dtype=torch.int32, device=device))


@register_compressed_module
class SparseLinear(nn.Module):
    """y = x @ W.T + b with W [out_features, in_features] stored in `layout`.

    Build one with `SparseLinear.from_dense(linear, mask=None, layout="csr")` or, for a whole
    model, with `scalenn.sparsify(model)`.
    """

    def __init__(self, in_features: int, out_features: int, layout: str = "csr",
                 stored: int = 0, bias: bool = True, index_dtype: Optional[torch.dtype] = None,
                 device=None, dense_from_batch: Optional[int] = None):
        super().__init__()
        if in_features < 0 or out_features < 0:
            raise ValueError(f"SparseLinear: negative shape ({in_features}, {out_features})")
        sparse_format.parse_layout(layout)
        if index_dtype is None:
            index_dtype = torch.int16 if in_features <= 65536 else torch.int32
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.layout = layout
        # Batches (rows of x) at or above this size run as a dense matmul on a weight unpacked
        # for the call (the packed state stays the only copy): set by sparsify's cost model
        # where the sparse kernel loses to dense at large batches. None: always sparse.
        if dense_from_batch is not None and int(dense_from_batch) < 1:
            raise ValueError(f"dense_from_batch must be >= 1 or None, got {dense_from_batch}")
        self.dense_from_batch = None if dense_from_batch is None else int(dense_from_batch)
        values, indices, offsets = _empty_layout(layout, in_features, out_features, stored,
                                                 index_dtype, device)
        self.values = nn.Parameter(values)
        self.register_buffer("indices", indices)
        self.register_buffer("offsets", offsets)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None
        self.register_load_state_dict_post_hook(SparseLinear._validate_after_load)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: Optional[torch.Tensor] = None,
                   layout: str = "csr") -> "SparseLinear":
        """Pack `linear.weight * mask` (mask None: its nonzeros) into `layout`."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"SparseLinear.from_dense expects an nn.Linear, got "
                            f"{type(linear).__name__}")
        weight = linear.weight.detach()
        packed = sparse_format.pack(weight, mask, layout)
        mod = cls(linear.in_features, linear.out_features, layout, packed.indices.shape[0]
                  if packed.indices.dim() == 1 else 0, linear.bias is not None,
                  packed.indices.dtype if layout == "csr" else None, device=weight.device)
        with torch.no_grad():
            mod.values = nn.Parameter(packed.values.float())
            mod.indices = packed.indices
            mod.offsets = packed.offsets
            if linear.bias is not None:
                mod.bias.copy_(linear.bias.detach().float())
        return mod

    def to_dense(self) -> nn.Linear:
        """An equivalent nn.Linear (float32)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.values.device)
        with torch.no_grad():
            lin.weight.copy_(self.dense_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def dense_weight(self) -> torch.Tensor:
        """W as a dense [out_features, in_features] tensor (differentiable wrt values)."""
        return sparse_format.unpack(self.values, self.indices, self.offsets, self.layout,
                                    self.out_features, self.in_features)

    @property
    def weight(self) -> torch.Tensor:
        return self.dense_weight()

    @property
    def stored(self) -> int:
        """Number of stored values (kept weights, plus explicit zeros a layout pads with)."""
        return self.values.numel()

    @property
    def density(self) -> float:
        """Stored values / (out_features * in_features)."""
        total = self.in_features * self.out_features
        return self.stored / total if total else 0.0

    # ------------------------------------------------------------------ compute
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense_from_batch is not None and x.dim() >= 1 and \
                x.numel() >= self.dense_from_batch * max(1, self.in_features):  # rows >= threshold
            # Unpacking costs one pass over W, small next to a dense matmul at this batch size;
            # gradients still reach only the stored values (through the unpack scatter).
            w = self.dense_weight()
            b = self.bias
            if x.dtype != w.dtype:
                w = w.to(x.dtype)
                b = b.to(x.dtype) if b is not None else None
            return torch.nn.functional.linear(x, w, b)
        return sparse_linear(x, self.values, self.indices, self.offsets, self.bias, self.layout,
                             self.out_features, self.in_features)

    def extra_repr(self) -> str:
        extra = f", dense_from_batch={self.dense_from_batch}" if self.dense_from_batch else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"layout={self.layout}, density={self.density:.4f}, "
                f"bias={self.bias is not None}{extra}")

    # ------------------------------------------------------------------ protocol
    def compression_config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "layout": self.layout, "stored": int(self.indices.shape[0])
                if self.indices.dim() == 1 else 0, "bias": self.bias is not None,
                "index_dtype": str(self.indices.dtype).replace("torch.", ""),
                "dense_from_batch": self.dense_from_batch}

    @classmethod
    def from_config(cls, config: dict) -> "SparseLinear":
        dtypes = {"int16": torch.int16, "int32": torch.int32, "uint8": torch.uint8}
        idx = dtypes.get(config.get("index_dtype", "int32"))
        return cls(int(config["in_features"]), int(config["out_features"]), config["layout"],
                   int(config.get("stored", 0)), bool(config.get("bias", True)),
                   idx if config["layout"] == "csr" else None,
                   dense_from_batch=config.get("dense_from_batch"))

    @staticmethod
    def _validate_after_load(module, incompatible_keys):
        sparse_format.check_layout(module.values.detach(), module.indices, module.offsets,
                                   module.layout, module.out_features, module.in_features)
