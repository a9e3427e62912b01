// Gradient-bucket pack/unpack: one block per chunk (see bucket_kernels.h). Each thread handles
// 4 elements per iteration spaced a block apart, so every load instruction of a warp is
// coalesced and four are in flight per thread: a streaming copy limited by DRAM bandwidth.
#include <cfloat>

#include "bucket_kernels.h"
#include "mma_common.cuh"

namespace scalenn::cuda {
namespace {

using namespace detail;

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

template <typename Src, typename Dst>
__global__ void __launch_bounds__(kThreads)
    pack_kernel(const int64_t* __restrict__ addr, const int64_t* __restrict__ off,
                const int64_t* __restrict__ len, Dst* __restrict__ flat, float scale) {
  const int64_t c = blockIdx.x;
  const Src* src = reinterpret_cast<const Src*>(addr[c]);
  Dst* dst = flat + off[c];
  const int64_t n = len[c];
  for (int64_t base = threadIdx.x; base < n; base += kThreads * kUnroll) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads;
      v[u] = i < n ? to_float(src[i]) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads;
      if (i < n) dst[i] = from_float<Dst>(v[u] * scale);
    }
  }
}

template <typename Flat, typename Dst>
__global__ void __launch_bounds__(kThreads)
    unpack_kernel(const int64_t* __restrict__ addr, const int64_t* __restrict__ off,
                  const int64_t* __restrict__ len, const Flat* __restrict__ flat, float scale) {
  const int64_t c = blockIdx.x;
  Dst* dst = reinterpret_cast<Dst*>(addr[c]);
  const Flat* src = flat + off[c];
  const int64_t n = len[c];
  for (int64_t base = threadIdx.x; base < n; base += kThreads * kUnroll) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads;
      v[u] = i < n ? to_float(src[i]) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads;
      if (i < n) dst[i] = from_float<Dst>(v[u] * scale);
    }
  }
}

// Block-wide max of |v| over finite values plus an "any non-finite" flag.
__device__ __forceinline__ void block_amax(float& amax, int& bad) {
  __shared__ float s_max[kThreads / 32];
  __shared__ int s_bad[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    bad |= __shfl_xor_sync(0xffffffffu, bad, o);
  }
  if ((threadIdx.x & 31) == 0) {
    s_max[threadIdx.x >> 5] = amax;
    s_bad[threadIdx.x >> 5] = bad;
  }
  __syncthreads();
  amax = 0.f;
  bad = 0;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) {
    amax = fmaxf(amax, s_max[w]);
    bad |= s_bad[w];
  }
}

template <typename Src>
__global__ void __launch_bounds__(kThreads)
    pack_int8_kernel(const int64_t* __restrict__ addr, const int64_t* __restrict__ off,
                     const int64_t* __restrict__ len, int8_t* __restrict__ q,
                     float* __restrict__ chunk_scale, float scale) {
  const int64_t c = blockIdx.x;
  const Src* src = reinterpret_cast<const Src*>(addr[c]);
  int8_t* dst = q + off[c];
  const int64_t n = len[c];
  float amax = 0.f;
  int bad = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const float a = fabsf(to_float(src[i]) * scale);
    bad |= !(a <= FLT_MAX);
    if (a <= FLT_MAX) amax = fmaxf(amax, a);
  }
  block_amax(amax, bad);
  const bool finite = bad == 0;
  if (threadIdx.x == 0)
    chunk_scale[c] = finite ? __fdiv_rn(amax, 127.f) : __int_as_float(0x7fc00000);
  const float inv = (finite && amax > 0.f) ? __fdiv_rn(127.f, amax) : 0.f;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {  // second pass hits L1/L2
    const float v = __fmul_rn(to_float(src[i]), scale);
    const int r = finite ? __float2int_rn(__fmul_rn(v, inv)) : 0;
    dst[i] = static_cast<int8_t>(max(-127, min(127, r)));
  }
}

template <typename Dst>
__global__ void __launch_bounds__(kThreads)
    unpack_int8_kernel(const int64_t* __restrict__ addr, const int64_t* __restrict__ off,
                       const int64_t* __restrict__ len, const int8_t* __restrict__ q,
                       const float* __restrict__ chunk_scale, float scale) {
  const int64_t c = blockIdx.x;
  Dst* dst = reinterpret_cast<Dst*>(addr[c]);
  const int8_t* src = q + off[c];
  const float s = chunk_scale[c] * scale;
  const int64_t n = len[c];
  for (int64_t i = threadIdx.x; i < n; i += kThreads)
    dst[i] = from_float<Dst>(static_cast<float>(src[i]) * s);
}

bool grid_ok(int64_t n_chunks) { return n_chunks > 0 && n_chunks <= INT32_MAX; }

// Calls f(type_tag) with the C++ type of a dtype kind.
template <typename F>
cudaError_t with_kind(int kind, F&& f) {
  switch (kind) {
    case 1: return f(__nv_bfloat16{});
    case 2: return f(__half{});
    default: return f(float{});
  }
}

}  // namespace

cudaError_t launch_bucket_pack(int src_kind, int dst_kind, const int64_t* addr,
                               const int64_t* off, const int64_t* len, int64_t n_chunks,
                               void* flat, float scale, cudaStream_t stream) {
  if (!grid_ok(n_chunks)) return n_chunks == 0 ? cudaSuccess : cudaErrorInvalidConfiguration;
  return with_kind(src_kind, [&](auto src_tag) {
    return with_kind(dst_kind, [&](auto dst_tag) {
      using S = decltype(src_tag);
      using D = decltype(dst_tag);
      pack_kernel<S, D><<<static_cast<unsigned>(n_chunks), kThreads, 0, stream>>>(
          addr, off, len, static_cast<D*>(flat), scale);
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_bucket_unpack(int flat_kind, int dst_kind, const int64_t* addr,
                                 const int64_t* off, const int64_t* len, int64_t n_chunks,
                                 const void* flat, float scale, cudaStream_t stream) {
  if (!grid_ok(n_chunks)) return n_chunks == 0 ? cudaSuccess : cudaErrorInvalidConfiguration;
  return with_kind(flat_kind, [&](auto flat_tag) {
    return with_kind(dst_kind, [&](auto dst_tag) {
      using F = decltype(flat_tag);
      using D = decltype(dst_tag);
      unpack_kernel<F, D><<<static_cast<unsigned>(n_chunks), kThreads, 0, stream>>>(
          addr, off, len, static_cast<const F*>(flat), scale);
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_bucket_pack_int8(int src_kind, const int64_t* addr, const int64_t* off,
                                    const int64_t* len, int64_t n_chunks, int8_t* q,
                                    float* chunk_scale, float scale, cudaStream_t stream) {
  if (!grid_ok(n_chunks)) return n_chunks == 0 ? cudaSuccess : cudaErrorInvalidConfiguration;
  return with_kind(src_kind, [&](auto src_tag) {
    using S = decltype(src_tag);
    pack_int8_kernel<S><<<static_cast<unsigned>(n_chunks), kThreads, 0, stream>>>(
        addr, off, len, q, chunk_scale, scale);
    return cudaGetLastError();
  });
}

cudaError_t launch_bucket_unpack_int8(int dst_kind, const int64_t* addr, const int64_t* off,
                                      const int64_t* len, int64_t n_chunks, const int8_t* q,
                                      const float* chunk_scale, float scale,
                                      cudaStream_t stream) {
  if (!grid_ok(n_chunks)) return n_chunks == 0 ? cudaSuccess : cudaErrorInvalidConfiguration;
  return with_kind(dst_kind, [&](auto dst_tag) {
    using D = decltype(dst_tag);
    unpack_int8_kernel<D><<<static_cast<unsigned>(n_chunks), kThreads, 0, stream>>>(
        addr, off, len, q, chunk_scale, scale);
    return cudaGetLastError();
  });
}

}  // namespace scalenn::cuda
