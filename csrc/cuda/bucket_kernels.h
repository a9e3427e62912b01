// Host launchers of the gradient-bucket pack/unpack kernels (raw pointers, no torch headers).
//
// The work is a list of chunks (one CUDA block each) described by three device int64 tables of
// length n_chunks: addr (the chunk's first element in its tensor, as a device address), off (its
// offset in the flat buffer, in elements) and len (<= chunk size). Chunks never cross tensors,
// so any number of tensors is one launch. Same layout as kernels/bucket_pack.py.
// Dtype kinds: 0 float32, 1 bfloat16, 2 float16.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace scalenn::cuda {

// flat[off + i] = cast(tensor[i] * scale)
cudaError_t launch_bucket_pack(int src_kind, int dst_kind, const int64_t* addr,
                               const int64_t* off, const int64_t* len, int64_t n_chunks,
                               void* flat, float scale, cudaStream_t stream);
// tensor[i] = cast(flat[off + i] * scale)
cudaError_t launch_bucket_unpack(int flat_kind, int dst_kind, const int64_t* addr,
                                 const int64_t* off, const int64_t* len, int64_t n_chunks,
                                 const void* flat, float scale, cudaStream_t stream);
// Per chunk: v = tensor * scale; chunk_scale = amax(v)/127; q = round_half_even(v * 127/amax)
// (a chunk holding NaN/Inf: scale NaN, q 0), the quantize_per_row contract per chunk.
cudaError_t launch_bucket_pack_int8(int src_kind, const int64_t* addr, const int64_t* off,
                                    const int64_t* len, int64_t n_chunks, int8_t* q,
                                    float* chunk_scale, float scale, cudaStream_t stream);
// tensor[i] = cast(q[off + i] * (chunk_scale[c] * scale))
cudaError_t launch_bucket_unpack_int8(int dst_kind, const int64_t* addr, const int64_t* off,
                                      const int64_t* len, int64_t n_chunks, const int8_t* q,
                                      const float* chunk_scale, float scale, cudaStream_t stream);

}  // namespace scalenn::cuda
