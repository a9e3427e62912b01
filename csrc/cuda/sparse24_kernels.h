// Host launchers of the 2:4 sparse tensor-core linear (raw pointers, no torch headers).
//
// y[m, n] = act(sum_k W[n, k] x[m, k] (* row_scale[m] * w_scale[n] for int8) + bias[n]) where W
// [N, K] is 2:4 sparse along K and given as the register images built by
// scalenn/_ops/sparse24_layout.py: values [ceil(N/16)][S][32 lanes][16 bytes] and
// meta [ceil(N/16)][S][32] uint32, S = ceil(K / kstep), kstep = 32 (fp16/bf16) or 64 (int8).
//
// `kind`: 0 float16, 1 bfloat16 (x in the same dtype, fp32 accumulation, output in x's dtype),
// 2 int8 (xq = per-token quantized int8 activations, int32 accumulation, output `out_kind`:
// 0 float32, 1 bfloat16, 2 float16). Row bytes of x must be a multiple of 16
// (K % 8 == 0 for 16-bit x, K % 16 == 0 for int8). `act`: 0 none, 1 relu, 2 gelu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace scalenn::cuda {

cudaError_t launch_sparse24_linear(int kind, const void* values, const uint32_t* meta,
                                   const void* x, const float* row_scale, const float* w_scale,
                                   const float* bias, void* y, int out_kind, int64_t M, int64_t N,
                                   int64_t K, int64_t steps, int act, cudaStream_t stream);

// The same contract on Hopper's wgmma.mma_async.sp (sparse24_wgmma_kernels.cu). It exists only
// in sm_90a code (TORCH_CUDA_ARCH_LIST=9.0a): sparse24_wgmma_built() says whether the current
// GPU loads such code; without it the launcher returns cudaErrorNoKernelImageForDevice.
bool sparse24_wgmma_built();
cudaError_t launch_sparse24_wgmma_linear(int kind, const void* values, const uint32_t* meta,
                                         const void* x, const float* row_scale,
                                         const float* w_scale, const float* bias, void* y,
                                         int out_kind, int64_t M, int64_t N, int64_t K,
                                         int64_t steps, int act, cudaStream_t stream);

}  // namespace scalenn::cuda
