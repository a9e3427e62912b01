// Gradient-bucket kernels of scalenn.distributed (contracts: bucket_kernels.h). Pack/unpack: a
// piece is split over kSplit blocks; each thread handles kUnroll elements per iteration spaced a
// block apart, so every load instruction of a warp is coalesced and eight are in flight per
// thread: a streaming copy limited by DRAM bandwidth. int8: one block per chunk of C values.
// Explicit _rn intrinsics keep nvcc from contracting a*b+c into an FMA (the contract is
// bit-exact to the CPU).
#include <cfloat>

#include "bucket_kernels.h"
#include "mma_common.cuh"

namespace scalenn::cuda {
namespace {

using namespace detail;

constexpr int kThreads = 256;
constexpr int kUnroll = 8;
// Each piece (up to 64 Ki elements, bucket_cuda.cpp) is split over kSplit blocks (grid.y), one
// loop iteration each for a full piece: with one block per piece a 100 M-element bucket was
// ~1.5 waves of long blocks with 4 loads in flight per thread, half the copy bandwidth on an
// H200; 8 blocks of 4 iterations reached 0.68 of it. Spans are whole multiples of one
// block-iteration, so every load of a warp stays coalesced.
constexpr int kSplit = 32;

// dst[i] = Dst(float(src[i]) * scale) for this block's span of [0, n): kUnroll loads in flight
// per thread, spaced a block apart.
template <typename Src, typename Dst>
__device__ __forceinline__ void copy_scaled_span(const Src* __restrict__ src,
                                                 Dst* __restrict__ dst, int64_t n, float scale) {
  constexpr int64_t kStep = int64_t{kThreads} * kUnroll;
  const int64_t per_block = (n + gridDim.y - 1) / gridDim.y;
  const int64_t span = (per_block + kStep - 1) / kStep * kStep;
  const int64_t begin = blockIdx.y * span;
  const int64_t end = begin + span < n ? begin + span : n;
  for (int64_t base = begin + threadIdx.x; base < end; base += kStep) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads;
      v[u] = i < end ? to_float(src[i]) : 0.f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * kThreads;
      if (i < end) dst[i] = from_float<Dst>(__fmul_rn(v[u], scale));
    }
  }
}

template <typename Src, typename Dst>
__global__ void __launch_bounds__(kThreads)
    pack_kernel(const int64_t* __restrict__ addr, const int64_t* __restrict__ off,
                const int64_t* __restrict__ len, Dst* __restrict__ flat, float scale) {
  const int64_t c = blockIdx.x;
  copy_scaled_span(reinterpret_cast<const Src*>(addr[c]), flat + off[c], len[c], scale);
}

template <typename Flat, typename Dst>
__global__ void __launch_bounds__(kThreads)
    unpack_kernel(const int64_t* __restrict__ addr, const int64_t* __restrict__ off,
                  const int64_t* __restrict__ len, const Flat* __restrict__ flat, float scale) {
  const int64_t c = blockIdx.x;
  copy_scaled_span(flat + off[c], reinterpret_cast<Dst*>(addr[c]), len[c], scale);
}

// Block-wide max of |v| over finite values plus an "any non-finite" flag (every thread gets both).
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
    accumulate_kernel(const int64_t* __restrict__ addr, const int64_t* __restrict__ off,
                      const int64_t* __restrict__ len, float* __restrict__ residual,
                      float scale) {
  const int64_t c = blockIdx.x;
  const Src* src = reinterpret_cast<const Src*>(addr[c]);
  float* r = residual + off[c];
  const int64_t n = len[c];
  for (int64_t i = threadIdx.x; i < n; i += kThreads)
    r[i] = __fadd_rn(__fmul_rn(to_float(src[i]), scale), r[i]);
}

// The scale of a record: 4 little-endian bytes at any alignment.
__device__ __forceinline__ float load_record_scale(const uint8_t* p) {
  const uint32_t bits = static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
                        (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
  return __uint_as_float(bits);
}

// One block per chunk of v (in residual): max |v| pass, then quantize + error feedback. The
// second pass re-reads the chunk (C floats, L1/L2-resident).
__global__ void __launch_bounds__(kThreads)
    quantize_chunks_kernel(float* __restrict__ residual, uint8_t* __restrict__ records,
                           int64_t C) {
  const int64_t c = blockIdx.x;
  float* r = residual + c * C;
  uint8_t* rec = records + c * (C + 4);
  float amax = 0.f;
  int bad = 0;
  for (int64_t j = threadIdx.x; j < C; j += kThreads) {
    const float a = fabsf(r[j]);
    bad |= !(a <= FLT_MAX);
    amax = fmaxf(amax, a);  // NaN-free when it matters (bad == 0)
  }
  block_amax(amax, bad);
  const bool finite = bad == 0;
  const float s = finite ? __fdiv_rn(amax, 127.f) : __int_as_float(0x7fc00000);
  const float inv = (finite && amax > 0.f) ? __fdiv_rn(127.f, amax) : 0.f;
  for (int64_t j = threadIdx.x; j < C; j += kThreads) {
    const float v = r[j];
    float t = rintf(__fmul_rn(v, inv));  // round half to even
    t = fminf(fmaxf(t, -127.f), 127.f);
    rec[j] = static_cast<uint8_t>(static_cast<int8_t>(finite ? static_cast<int>(t) : 0));
    r[j] = finite ? __fsub_rn(v, __fmul_rn(t, s)) : 0.f;
  }
  if (threadIdx.x < 4)
    rec[C + threadIdx.x] = static_cast<uint8_t>(__float_as_uint(s) >> (8 * threadIdx.x));
}

__global__ void __launch_bounds__(kThreads)
    dequantize_sum_kernel(const uint8_t* __restrict__ records, int64_t W, int64_t N, int64_t C,
                          float* __restrict__ out) {
  const int64_t c = blockIdx.x;
  const int64_t stride = N * (C + 4);
  for (int64_t j = threadIdx.x; j < C; j += kThreads) {
    float acc = 0.f;
    const uint8_t* rec = records + c * (C + 4);
    for (int64_t w = 0; w < W; ++w, rec += stride) {
      const float q = static_cast<float>(static_cast<int8_t>(rec[j]));
      acc = __fadd_rn(acc, __fmul_rn(q, load_record_scale(rec + C)));
    }
    out[c * C + j] = acc;
  }
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
      pack_kernel<S, D><<<dim3(static_cast<unsigned>(n_chunks), kSplit), kThreads, 0, stream>>>(
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
      unpack_kernel<F, D><<<dim3(static_cast<unsigned>(n_chunks), kSplit), kThreads, 0,
                                                     stream>>>(
          addr, off, len, static_cast<const F*>(flat), scale);
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_bucket_accumulate(int src_kind, const int64_t* addr, const int64_t* off,
                                     const int64_t* len, int64_t n_pieces, float* residual,
                                     float scale, cudaStream_t stream) {
  if (!grid_ok(n_pieces)) return n_pieces == 0 ? cudaSuccess : cudaErrorInvalidConfiguration;
  return with_kind(src_kind, [&](auto src_tag) {
    using S = decltype(src_tag);
    accumulate_kernel<S><<<static_cast<unsigned>(n_pieces), kThreads, 0, stream>>>(
        addr, off, len, residual, scale);
    return cudaGetLastError();
  });
}

cudaError_t launch_bucket_quantize_chunks(float* residual, uint8_t* records, int64_t N, int64_t C,
                                          cudaStream_t stream) {
  if (!grid_ok(N) || C < 1) return N == 0 ? cudaSuccess : cudaErrorInvalidConfiguration;
  quantize_chunks_kernel<<<static_cast<unsigned>(N), kThreads, 0, stream>>>(residual, records, C);
  return cudaGetLastError();
}

cudaError_t launch_bucket_dequantize_sum(const uint8_t* records, int64_t W, int64_t N, int64_t C,
                                         float* out, cudaStream_t stream) {
  if (!grid_ok(N) || C < 1) return N == 0 ? cudaSuccess : cudaErrorInvalidConfiguration;
  dequantize_sum_kernel<<<static_cast<unsigned>(N), kThreads, 0, stream>>>(records, W, N, C, out);
  return cudaGetLastError();
}

}  // namespace scalenn::cuda
