// Per-row int8 quantization on NVIDIA GPUs: one thread block per row, a block-wide max
// reduction, then a second pass that writes q. Rounding (__float2int_rn) and the IEEE division
// match the CPU kernels and the PyTorch reference bit for bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>

#include "quantize_kernels.h"

namespace scalenn::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

template <typename T>
__global__ void quantize_per_row_kernel(const T* __restrict__ x, int64_t K, int8_t* __restrict__ q,
                                        float* __restrict__ scale) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * K;
  int8_t* qr = q + row * K;
  float amax = 0.f;
  int bad = 0;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) {
    float a = fabsf(to_float(xr[k]));
    bad |= !(a <= FLT_MAX);
    amax = fmaxf(amax, a);
  }
  __shared__ float s_max[kThreads / 32];
  __shared__ int s_bad[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    bad |= __shfl_xor_sync(0xffffffffu, bad, off);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    s_max[warp] = amax;
    s_bad[warp] = bad;
  }
  __syncthreads();
  amax = 0.f;
  bad = 0;
  for (int w = 0; w < kThreads / 32; ++w) {
    amax = fmaxf(amax, s_max[w]);
    bad |= s_bad[w];
  }
  const bool finite = !bad && amax <= FLT_MAX;
  if (threadIdx.x == 0) scale[row] = finite ? amax / 127.f : __int_as_float(0x7fc00000);
  const float inv = (finite && amax > 0.f) ? 127.f / amax : 0.f;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) {
    int v = finite ? __float2int_rn(to_float(xr[k]) * inv) : 0;
    qr[k] = static_cast<int8_t>(max(-127, min(127, v)));
  }
}

template <typename T>
__global__ void dequantize_per_row_kernel(const int8_t* __restrict__ q,
                                          const float* __restrict__ scale, int64_t K,
                                          T* __restrict__ y) {
  const int64_t row = blockIdx.x;
  const float s = scale[row];
  for (int64_t k = threadIdx.x; k < K; k += kThreads)
    y[row * K + k] = from_float<T>(static_cast<float>(q[row * K + k]) * s);
}

template <typename T>
cudaError_t quantize_typed(const void* x, int64_t rows, int64_t K, int8_t* q, float* scale,
                           cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  quantize_per_row_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      static_cast<const T*>(x), K, q, scale);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dequantize_typed(const int8_t* q, const float* scale, int64_t rows, int64_t K, void* y,
                             cudaStream_t stream) {
  if (rows == 0 || K == 0) return cudaSuccess;
  dequantize_per_row_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      q, scale, K, static_cast<T*>(y));
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_quantize_per_row(int kind, const void* x, int64_t rows, int64_t K, int8_t* q,
                                    float* scale, cudaStream_t stream) {
  switch (kind) {
    case 1: return quantize_typed<__nv_bfloat16>(x, rows, K, q, scale, stream);
    case 2: return quantize_typed<__half>(x, rows, K, q, scale, stream);
    default: return quantize_typed<float>(x, rows, K, q, scale, stream);
  }
}

cudaError_t launch_dequantize_per_row(int kind, const int8_t* q, const float* scale, int64_t rows,
                                      int64_t K, void* y, cudaStream_t stream) {
  switch (kind) {
    case 1: return dequantize_typed<__nv_bfloat16>(q, scale, rows, K, y, stream);
    case 2: return dequantize_typed<__half>(q, scale, rows, K, y, stream);
    default: return dequantize_typed<float>(q, scale, rows, K, y, stream);
  }
}

}  // namespace scalenn::cuda
