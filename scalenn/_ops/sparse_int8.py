"""Sparse int8 linear ops (SparseInt8Linear): plain-PyTorch references (the test oracle), fake
kernels for torch.compile / torch.export, and autograd (gradient with respect to the input and
the bias; the int8 weight is frozen, gradients flow straight through activation quantization).

Contracts (schemas in csrc/ops.cpp, format in csrc/cpu/sparse_int8_kernels.h):
  sparse_int8_pack(w_int8 [N, K] int8 in [-127, 127], format)
      -> (values, rel, base, row_offsets, row_order)
  sparse_int8_gemm_s32(x_int8 [M, K], values, rel, base, row_offsets, row_order, format)
      -> int32 [M, N] = x_int8 @ W^T exactly.
  sparse_int8_linear(x [M, K] float, values, rel, base, row_offsets, row_order, w_scale [N] f32,
      bias [N] f32 | None, format) -> fma(acc, row_scale[m] * w_scale[n], bias[n]) in x.dtype,
      where (q, row_scale) = quantize_per_row(x) and acc = q @ W^T (int32).
"""
import torch

from ..compress.sparse_int8_format import (PackedSparseInt8, chunk_entries, chunks_per_base,
                                             unpack)
from .quantize import quantize_per_row_reference


def dense_weight_int8(values, rel, base, row_offsets, row_order, format, in_features
                      ) -> torch.Tensor:
    return unpack(PackedSparseInt8(values, rel, base, row_offsets, row_order, format),
                  in_features)


def sparse_int8_linear_reference(x, values, rel, base, row_offsets, row_order, w_scale, bias,
                                 format, dtype=torch.float64):
    """The op computed with plain PyTorch; the epilogue in `dtype` (float64 for tests)."""
    q, row_scale = quantize_per_row_reference(x)
    w = dense_weight_int8(values, rel, base, row_offsets, row_order, format, x.shape[1])
    acc = (q.long() @ w.long().t()).to(dtype)
    y = acc * (row_scale.to(dtype)[:, None] * w_scale.to(dtype)[None, :])
    return y + bias.to(dtype) if bias is not None else y


# ------------------------------------------------------------------ fake kernels
@torch.library.register_fake("scalenn::sparse_int8_pack")
def _pack_fake(w_int8, format):
    torch._check(w_int8.dim() == 2, lambda: "sparse_int8_pack: w_int8 must be 2-D")
    bases = torch.library.get_ctx().new_dynamic_size()
    entries = bases * chunks_per_base(format) * chunk_entries(format)
    width = 4 if format == "quad" else 1
    return (w_int8.new_empty((entries * width,)),
            w_int8.new_empty((entries,), dtype=torch.uint8),
            w_int8.new_empty((bases,), dtype=torch.int16),
            w_int8.new_empty((w_int8.shape[0] + 1,), dtype=torch.int32),
            w_int8.new_empty((w_int8.shape[0],), dtype=torch.int32))


@torch.library.register_fake("scalenn::sparse_int8_gemm_s32")
def _gemm_s32_fake(x_int8, values, rel, base, row_offsets, row_order, format):
    torch._check(x_int8.dim() == 2, lambda: "sparse_int8_gemm_s32: x_int8 must be 2-D")
    return x_int8.new_empty((x_int8.shape[0], row_offsets.shape[0] - 1), dtype=torch.int32)


@torch.library.register_fake("scalenn::sparse_int8_linear")
def _linear_fake(x, values, rel, base, row_offsets, row_order, w_scale, bias, format):
    torch._check(x.dim() == 2, lambda: "sparse_int8_linear: x must be 2-D")
    return x.new_empty((x.shape[0], row_offsets.shape[0] - 1))


# ------------------------------------------------------------------ autograd
def _setup_context(ctx, inputs, output):
    x, values, rel, base, row_offsets, row_order, w_scale, bias, format = inputs
    ctx.format = format
    ctx.in_features = x.shape[1]
    ctx.x_dtype = x.dtype
    ctx.has_bias = bias is not None
    ctx.save_for_backward(values, rel, base, row_offsets, row_order, w_scale)


def _backward(ctx, grad):
    values, rel, base, row_offsets, row_order, w_scale = ctx.saved_tensors
    g = grad.float()
    grad_x = grad_bias = None
    if ctx.needs_input_grad[0]:
        # The weight is frozen; its dense dequantized form exists only for this product.
        w = dense_weight_int8(values, rel, base, row_offsets, row_order, ctx.format,
                              ctx.in_features)
        grad_x = (g @ (w.float() * w_scale[:, None])).to(ctx.x_dtype)
    if ctx.has_bias and ctx.needs_input_grad[7]:
        grad_bias = g.sum(0)
    return grad_x, None, None, None, None, None, None, grad_bias, None


torch.library.register_autograd("scalenn::sparse_int8_linear", _backward,
                                setup_context=_setup_context)
