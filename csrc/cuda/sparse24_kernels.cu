// 2:4 semi-structured sparse linear on sparse tensor cores (mma.sp), fp16/bf16 and int8.
//
// The 2:4 weight is the sparse `A` operand (rows = output features); activations are the dense
// `B` operand (columns = tokens), so the kernel computes y^T tiles, as the int8 GEMM does.
// The weight arrives pre-arranged as per-lane register images (values: 16 bytes per lane per
// instruction; metadata: one 32-bit word per lane), built and unit-tested on the host by
// scalenn/_ops/sparse24_layout.py. So a warp's A operand for one instruction is one coalesced
// 512-byte load straight into registers, prefetched 2-4 K steps ahead; only the activations go
// through shared memory (3-8 stage cp.async pipeline, swizzled, ldmatrix.x4), where they are
// shared by all warps of the block.
//
// One K step = 64 bytes of each activation row = one mma.sp per (m16, n8) tile:
//   fp16/bf16: mma.sp::ordered_metadata m16n8k32 (32 logical K, 16 kept per row), f32 accumulate
//   int8:      mma.sp::ordered_metadata m16n8k64 .s8 (64 logical K), s32 accumulate
// The `ordered_metadata` form (indices ascending in each group, as the packer writes them) is
// the one sm_90 runs at full rate; it is valid from sm_80 on.
#include <type_traits>

#include "mma_common.cuh"
#include "sparse24_kernels.h"

namespace scalenn::cuda {
namespace {

using namespace detail;

constexpr int kSlab = 64;  // activation bytes per K step
// Metadata for padding tiles (rows >= N): positions 0 and 1 in every group (valid, ordered).
constexpr uint32_t kPadMeta = 0x44444444u;

enum Kind : int { kF16 = 0, kBF16 = 1, kS8 = 2 };

__device__ __forceinline__ void mma_sp(float (&c)[4], const uint4& a, const uint32_t (&b)[4],
                                       uint32_t e, std::integral_constant<int, kF16>) {
  asm volatile(
      "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]),
        "r"(e));
}

__device__ __forceinline__ void mma_sp(float (&c)[4], const uint4& a, const uint32_t (&b)[4],
                                       uint32_t e, std::integral_constant<int, kBF16>) {
  asm volatile(
      "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]),
        "r"(e));
}

__device__ __forceinline__ void mma_sp(int (&c)[4], const uint4& a, const uint32_t (&b)[4],
                                       uint32_t e, std::integral_constant<int, kS8>) {
  asm volatile(
      "mma.sp::ordered_metadata.sync.aligned.m16n8k64.row.col.s32.s8.s8.s32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]),
        "r"(e));
}

// Rows [row0, row0 + ROWS) x bytes [b0, b0 + 64) of a row-major matrix with `row_bytes` bytes
// per row (a multiple of 16) into a swizzled slab; outside rows/bytes read as zero.
template <int ROWS, int THREADS>
__device__ __forceinline__ void load_slab(char* smem, const char* __restrict__ g, int64_t row0,
                                          int64_t R, int64_t row_bytes, int64_t b0) {
  for (int i = threadIdx.x; i < ROWS * 4; i += THREADS) {
    const int r = i >> 2, c = i & 3;
    const int64_t row = row0 + r;
    const int64_t byte = b0 + c * 16;
    const bool inside = row < R && byte < row_bytes;
    cp_async16(smem + swizzle64(r, c), inside ? g + row * row_bytes + byte : g, inside ? 16 : 0);
  }
}

// Pipeline depths: activation slabs in shared memory (kStages) and weight steps in registers
// (kAhead). Few tokens = a weight-streaming kernel: keep more weight bytes in flight per warp.
template <class Cfg>
constexpr int stages_for() {
  return Cfg::kTok <= 16 ? 8 : (Cfg::kTok <= 32 ? 4 : 3);
}
template <class Cfg>
constexpr int ahead_for() {
  return Cfg::kTok <= 32 ? 4 : 2;
}

template <class Cfg, int KIND, typename OutT>
__global__ void __launch_bounds__(Cfg::kThreads)
    sparse24_kernel(const uint4* __restrict__ values, const uint32_t* __restrict__ meta,
                    const char* __restrict__ x, const float* __restrict__ row_scale,
                    const float* __restrict__ w_scale, const float* __restrict__ bias,
                    OutT* __restrict__ y, int64_t M, int64_t N, int64_t K, int64_t steps,
                    int act) {
  using Acc = std::conditional_t<KIND == kS8, int, float>;
  constexpr int kStages = stages_for<Cfg>();
  constexpr int kAhead = ahead_for<Cfg>();
  extern __shared__ __align__(128) char smem[];
  constexpr int kStageBytes = Cfg::kTok * kSlab;
  const int64_t row_bytes = K * (KIND == kS8 ? 1 : 2);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warp_o = warp % Cfg::WO, warp_t = warp / Cfg::WO;
  const int64_t out0 = int64_t(blockIdx.x) * Cfg::kOut;
  const int64_t tok0 = int64_t(blockIdx.y) * Cfg::kTok;
  const int64_t row_tiles = (N + 15) / 16;

  auto load_a = [&](int64_t step, uint4 (&a)[Cfg::MT], uint32_t (&e)[Cfg::MT]) {
#pragma unroll
    for (int mt = 0; mt < Cfg::MT; ++mt) {
      const int64_t tile = out0 / 16 + warp_o * Cfg::MT + mt;
      if (tile < row_tiles) {
        const int64_t at = (tile * steps + step) * 32 + lane;
        a[mt] = __ldg(values + at);
        e[mt] = __ldg(meta + at);
      } else {
        a[mt] = make_uint4(0u, 0u, 0u, 0u);
        e[mt] = kPadMeta;
      }
    }
  };

  Acc acc[Cfg::MT][Cfg::NT][4];
#pragma unroll
  for (int i = 0; i < Cfg::MT; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::NT; ++j)
#pragma unroll
      for (int v = 0; v < 4; ++v) acc[i][j][v] = Acc(0);

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < steps)
      load_slab<Cfg::kTok, Cfg::kThreads>(smem + s * kStageBytes, x, tok0, M, row_bytes,
                                          int64_t(s) * kSlab);
    cp_async_commit();
  }
  // Weight images for steps s .. s + kAhead - 1 live in a register ring; the ring index is a
  // compile-time constant after unrolling the inner loop, so the ring never touches local memory.
  uint4 a_buf[kAhead][Cfg::MT];
  uint32_t e_buf[kAhead][Cfg::MT];
#pragma unroll
  for (int p = 0; p < kAhead; ++p)
    if (p < steps) load_a(p, a_buf[p], e_buf[p]);

  for (int64_t s0 = 0; s0 < steps; s0 += kAhead) {
#pragma unroll
    for (int p = 0; p < kAhead; ++p) {
      const int64_t step = s0 + p;
      if (step >= steps) break;  // uniform across the block
      cp_async_wait<kStages - 2>();
      __syncthreads();
      const int64_t next = step + kStages - 1;
      if (next < steps)
        load_slab<Cfg::kTok, Cfg::kThreads>(smem + (next % kStages) * kStageBytes, x, tok0, M,
                                            row_bytes, next * kSlab);
      cp_async_commit();

      const char* sB = smem + (step % kStages) * kStageBytes;
#pragma unroll
      for (int nt = 0; nt < Cfg::NT; ++nt) {
        uint32_t b[4];
        const int row = (warp_t * Cfg::NT + nt) * 8 + (lane & 7);
        ldmatrix_x4(b, sB + swizzle64(row, lane >> 3));
#pragma unroll
        for (int mt = 0; mt < Cfg::MT; ++mt)
          mma_sp(acc[mt][nt], a_buf[p][mt], b, e_buf[p][mt], std::integral_constant<int, KIND>());
      }
      if (step + kAhead < steps) load_a(step + kAhead, a_buf[p], e_buf[p]);
    }
  }
  cp_async_wait<0>();

  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < Cfg::MT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < Cfg::NT; ++nt) {
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        const int64_t o = out0 + (warp_o * Cfg::MT + mt) * 16 + g + (v >= 2 ? 8 : 0);
        const int64_t tk = tok0 + (warp_t * Cfg::NT + nt) * 8 + 2 * t + (v & 1);
        if (o >= N || tk >= M) continue;
        float r = static_cast<float>(acc[mt][nt][v]);
        if constexpr (KIND == kS8) r = r * row_scale[tk] * w_scale[o];
        if (bias != nullptr) r += bias[o];
        y[tk * N + o] = from_float<OutT>(activate(r, act));
      }
    }
  }
}

using SmallTile = TileConfig<2, 1, 1, 2>;   // 32 features x 16 tokens
using MediumTile = TileConfig<4, 1, 2, 4>;  // 128 x 32
using LargeTile = TileConfig<4, 2, 2, 8>;   // 128 x 128

template <class Cfg, int KIND, typename OutT>
cudaError_t run(const void* values, const uint32_t* meta, const void* x, const float* row_scale,
                const float* w_scale, const float* bias, void* y, int64_t M, int64_t N,
                int64_t K, int64_t steps, int act, cudaStream_t stream) {
  constexpr int smem = stages_for<Cfg>() * Cfg::kTok * kSlab;
  const int64_t grid_y = (M + Cfg::kTok - 1) / Cfg::kTok;
  if (grid_y > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>((N + Cfg::kOut - 1) / Cfg::kOut),
                  static_cast<unsigned>(grid_y));
  sparse24_kernel<Cfg, KIND, OutT><<<grid, Cfg::kThreads, smem, stream>>>(
      static_cast<const uint4*>(values), meta, static_cast<const char*>(x), row_scale, w_scale,
      bias, static_cast<OutT*>(y), M, N, K, steps, act);
  return cudaGetLastError();
}

template <int KIND, typename OutT>
cudaError_t by_size(const void* values, const uint32_t* meta, const void* x,
                    const float* row_scale, const float* w_scale, const float* bias, void* y,
                    int64_t M, int64_t N, int64_t K, int64_t steps, int act,
                    cudaStream_t stream) {
  if (M <= 32)
    return run<SmallTile, KIND, OutT>(values, meta, x, row_scale, w_scale, bias, y, M, N, K,
                                      steps, act, stream);
  if (M <= 256)
    return run<MediumTile, KIND, OutT>(values, meta, x, row_scale, w_scale, bias, y, M, N, K,
                                       steps, act, stream);
  return run<LargeTile, KIND, OutT>(values, meta, x, row_scale, w_scale, bias, y, M, N, K, steps,
                                    act, stream);
}

}  // namespace

cudaError_t launch_sparse24_linear(int kind, const void* values, const uint32_t* meta,
                                   const void* x, const float* row_scale, const float* w_scale,
                                   const float* bias, void* y, int out_kind, int64_t M, int64_t N,
                                   int64_t K, int64_t steps, int act, cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  const int64_t esize = kind == kS8 ? 1 : 2;
  if ((K * esize) % 16 != 0) return cudaErrorInvalidValue;
  switch (kind) {
    case kF16:
      return by_size<kF16, __half>(values, meta, x, nullptr, nullptr, bias, y, M, N, K, steps,
                                   act, stream);
    case kBF16:
      return by_size<kBF16, __nv_bfloat16>(values, meta, x, nullptr, nullptr, bias, y, M, N, K,
                                           steps, act, stream);
    default:
      switch (out_kind) {
        case 1:
          return by_size<kS8, __nv_bfloat16>(values, meta, x, row_scale, w_scale, bias, y, M, N,
                                             K, steps, act, stream);
        case 2:
          return by_size<kS8, __half>(values, meta, x, row_scale, w_scale, bias, y, M, N, K,
                                      steps, act, stream);
        default:
          return by_size<kS8, float>(values, meta, x, row_scale, w_scale, bias, y, M, N, K, steps,
                                     act, stream);
      }
  }
}

}  // namespace scalenn::cuda
