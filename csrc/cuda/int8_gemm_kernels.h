// Host launchers of the int8 tensor-core GEMM (raw pointers, no torch headers).
//
// y[m, n] = act(acc[m, n] * row_scale[m] * w_scale[n] + bias[n]) with
// acc[m, n] = sum_k xq[m, k] * w[n, k] in exact int32 (mma.sync m16n8k32 s8 x s8 -> s32).
// xq [M, K] int8 row-major (per-token quantized activations), w [N, K] int8 row-major,
// row_scale [M] and w_scale [N] float32, bias [N] float32 or nullptr.
// `out_kind`: 0 float32, 1 bfloat16, 2 float16. `act`: 0 none, 1 relu, 2 gelu (erf).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace scalenn::cuda {

cudaError_t launch_int8_gemm(const int8_t* xq, const float* row_scale, const int8_t* w,
                             const float* w_scale, const float* bias, void* y, int out_kind,
                             int64_t M, int64_t N, int64_t K, int act, cudaStream_t stream);


}  // namespace scalenn::cuda
