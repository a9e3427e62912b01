// Host launchers of the gradient-bucket kernels of scalenn.distributed (raw pointers, no torch
// headers). Contracts: csrc/cpu/bucket_kernels.h and the "bucket" block of csrc/ops.cpp; every
// kernel is bit-identical to them (float32 math, round to nearest even, no FMA: __fmul_rn /
// __fadd_rn / __fsub_rn, which nvcc never contracts).
//
// Copies between gradients and a flat buffer are a list of pieces (one CUDA block each) given by
// three device int64 tables of length n_pieces: addr (the piece's first element in its gradient,
// as a device address), off (its flat index) and len. Pieces never cross tensors, so any number
// of tensors of one dtype is one launch (same layout as kernels/bucket_pack.py).
// Dtype kinds: 0 float32, 1 bfloat16, 2 float16.
//
// int8 records: uint8 [N, C + 4]: C int8 values of chunk c (flat [c*C, (c+1)*C)), then the
// chunk's float32 scale as 4 little-endian bytes (not 4-byte aligned: stored bytewise).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace scalenn::cuda {

// flat[off + i] = cast(float(grad[i]) * scale)
cudaError_t launch_bucket_pack(int src_kind, int dst_kind, const int64_t* addr,
                               const int64_t* off, const int64_t* len, int64_t n_pieces,
                               void* flat, float scale, cudaStream_t stream);
// grad[i] = cast(float(flat[off + i]) * scale)
cudaError_t launch_bucket_unpack(int flat_kind, int dst_kind, const int64_t* addr,
                                 const int64_t* off, const int64_t* len, int64_t n_pieces,
                                 const void* flat, float scale, cudaStream_t stream);
// residual[off + i] = float(grad[i]) * scale + residual[off + i]  (v of bucket_quantize_int8)
cudaError_t launch_bucket_accumulate(int src_kind, const int64_t* addr, const int64_t* off,
                                     const int64_t* len, int64_t n_pieces, float* residual,
                                     float scale, cudaStream_t stream);
// Per chunk c < N of v = residual[c*C, (c+1)*C): s = amax/127, q = clamp(rint(v * (127/amax))),
// residual = v - q*s; NaN/Inf in the chunk: s NaN, q 0, residual 0. Writes records [N, C+4].
cudaError_t launch_bucket_quantize_chunks(float* residual, uint8_t* records, int64_t N, int64_t C,
                                          cudaStream_t stream);
// records [W, N, C+4] -> out[c*C + j] = sum over w = 0..W-1 (in order, from +0) of q_w * s_w.
cudaError_t launch_bucket_dequantize_sum(const uint8_t* records, int64_t W, int64_t N, int64_t C,
                                         float* out, cudaStream_t stream);

}  // namespace scalenn::cuda
