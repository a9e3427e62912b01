// Int8 tensor-core GEMM with the W8A8 epilogue fused (see int8_gemm_kernels.h for the contract).
//
// Structure: the weight W [N, K] is the MMA `A` operand (rows = output features) and the
// quantized activations xq [M, K] are `B` (columns = tokens), so the kernel computes y^T tiles;
// with few tokens (decode) the 8-wide MMA N dimension matches the token count instead of wasting
// a 16-row M tile on padding. Both operands are row-major with K contiguous, which is exactly the
// "row.col" form of mma.sync m16n8k32.s8.s8.s32, so no transposes anywhere.
//
// Per block: a kOut x kTok output tile; K advances in 64-byte slabs through a 3-8 stage cp.async
// pipeline in swizzled shared memory; fragments come from ldmatrix.x4; each warp runs MT x NT
// MMAs per 32-wide K step. The epilogue applies row_scale[m] * w_scale[n] + bias[n] and the
// activation in float32 and stores y [M, N] directly.
#include "int8_gemm_kernels.h"
#include "mma_common.cuh"

namespace scalenn::cuda {
namespace {

using namespace detail;

constexpr int kSlab = 64;  // bytes of K per pipeline stage = two m16n8k32 steps

__device__ __forceinline__ void mma_s8_m16n8k32(int (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Copies rows [row0, row0 + ROWS) x bytes [k0, k0 + 64) of a row-major int8 matrix [R, K] into
// a swizzled shared slab; rows >= R and bytes >= K read as zero. ALIGNED (K % 16 == 0): 16-byte
// cp.async, a chunk is either wholly inside K or wholly outside. Otherwise: bytewise, synchronous.
template <int ROWS, int THREADS, bool ALIGNED>
__device__ __forceinline__ void load_slab(int8_t* smem, const int8_t* __restrict__ g, int64_t row0,
                                          int64_t R, int64_t K, int64_t k0) {
  for (int i = threadIdx.x; i < ROWS * 4; i += THREADS) {
    const int r = i >> 2, c = i & 3;
    const int64_t row = row0 + r;
    const int64_t k = k0 + c * 16;
    int8_t* dst = smem + swizzle64(r, c);
    if constexpr (ALIGNED) {
      const bool inside = row < R && k < K;
      cp_async16(dst, inside ? g + row * K + k : g, inside ? 16 : 0);
    } else {
      uint32_t words[4] = {0u, 0u, 0u, 0u};
      if (row < R) {
        for (int b = 0; b < 16; ++b) {
          if (k + b < K) {
            words[b >> 2] |= uint32_t(uint8_t(g[row * K + k + b])) << (8 * (b & 3));
          }
        }
      }
      *reinterpret_cast<uint4*>(dst) = make_uint4(words[0], words[1], words[2], words[3]);
    }
  }
}

template <class Cfg, int kStages, bool ALIGNED, typename OutT>
__global__ void __launch_bounds__(Cfg::kThreads)
    int8_gemm_kernel(const int8_t* __restrict__ xq, const float* __restrict__ row_scale,
                     const int8_t* __restrict__ w, const float* __restrict__ w_scale,
                     const float* __restrict__ bias, OutT* __restrict__ y, int64_t M, int64_t N,
                     int64_t K, int act) {
  extern __shared__ __align__(128) int8_t smem[];
  constexpr int kStageBytes = (Cfg::kOut + Cfg::kTok) * kSlab;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warp_o = warp % Cfg::WO, warp_t = warp / Cfg::WO;
  const int64_t out0 = int64_t(blockIdx.x) * Cfg::kOut;
  const int64_t tok0 = int64_t(blockIdx.y) * Cfg::kTok;
  const int num_slabs = static_cast<int>((K + kSlab - 1) / kSlab);

  auto load_stage = [&](int stage, int slab) {
    int8_t* sA = smem + stage * kStageBytes;
    load_slab<Cfg::kOut, Cfg::kThreads, ALIGNED>(sA, w, out0, N, K, int64_t(slab) * kSlab);
    load_slab<Cfg::kTok, Cfg::kThreads, ALIGNED>(sA + Cfg::kOut * kSlab, xq, tok0, M, K,
                                                 int64_t(slab) * kSlab);
  };

  int acc[Cfg::MT][Cfg::NT][4];
#pragma unroll
  for (int i = 0; i < Cfg::MT; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::NT; ++j)
#pragma unroll
      for (int v = 0; v < 4; ++v) acc[i][j][v] = 0;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < num_slabs) load_stage(s, s);
    cp_async_commit();
  }
  for (int slab = 0; slab < num_slabs; ++slab) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // slab is in shared memory, and everyone is done with slab - 1's stage
    const int next = slab + kStages - 1;
    if (next < num_slabs) load_stage(next % kStages, next);
    cp_async_commit();

    const int8_t* sA = smem + (slab % kStages) * kStageBytes;
    const int8_t* sB = sA + Cfg::kOut * kSlab;
    // B (tokens): one ldmatrix.x4 gives all four 16-byte K chunks of 8 tokens: registers 0,1
    // are the first m16n8k32 step's b0/b1, registers 2,3 the second step's.
    uint32_t b[Cfg::NT][4];
#pragma unroll
    for (int nt = 0; nt < Cfg::NT; ++nt) {
      const int row = (warp_t * Cfg::NT + nt) * 8 + (lane & 7);
      ldmatrix_x4(b[nt], sB + swizzle64(row, lane >> 3));
    }
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
#pragma unroll
      for (int mt = 0; mt < Cfg::MT; ++mt) {
        // A (weights): matrices (rows 0-7 | 8-15) x (bytes 0-15 | 16-31) of this K step.
        uint32_t a[4];
        const int row = (warp_o * Cfg::MT + mt) * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        ldmatrix_x4(a, sA + swizzle64(row, kk * 2 + (lane >> 4)));
#pragma unroll
        for (int nt = 0; nt < Cfg::NT; ++nt)
          mma_s8_m16n8k32(acc[mt][nt], a, b[nt][2 * kk], b[nt][2 * kk + 1]);
      }
    }
  }
  cp_async_wait<0>();

  // Accumulator fragment: c0,c1 at (row g, cols 2t, 2t+1), c2,c3 at row g+8. Rows are output
  // features, columns tokens.
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
        float r = static_cast<float>(acc[mt][nt][v]) * row_scale[tk] * w_scale[o];
        if (bias != nullptr) r += bias[o];
        y[tk * N + o] = from_float<OutT>(activate(r, act));
      }
    }
  }
}

// Decode-sized M streams the weight: the small tile keeps 8 slabs in flight per block so that
// enough bytes are outstanding per SM to approach DRAM bandwidth with few warps.
using SmallTile = TileConfig<2, 1, 1, 2>;   // 32 features x 16 tokens: decode, many blocks
using MediumTile = TileConfig<4, 1, 2, 4>;  // 128 x 32
using LargeTile = TileConfig<4, 2, 2, 8>;   // 128 x 128: prefill / training shapes

template <class Cfg>
constexpr int stages_for() {
  return Cfg::kTok <= 16 ? 8 : (Cfg::kTok <= 32 ? 4 : 3);
}

template <class Cfg, bool ALIGNED, typename OutT>
cudaError_t run(const int8_t* xq, const float* row_scale, const int8_t* w, const float* w_scale,
                const float* bias, OutT* y, int64_t M, int64_t N, int64_t K,
                int act, cudaStream_t stream) {
  constexpr int kStages = stages_for<Cfg>();
  constexpr int smem = kStages * (Cfg::kOut + Cfg::kTok) * kSlab;
  auto kernel = int8_gemm_kernel<Cfg, kStages, ALIGNED, OutT>;
  if (smem > 48 * 1024) {
    cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
  }
  const int64_t grid_y = (M + Cfg::kTok - 1) / Cfg::kTok;
  if (grid_y > 65535) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>((N + Cfg::kOut - 1) / Cfg::kOut),
                  static_cast<unsigned>(grid_y));
  kernel<<<grid, Cfg::kThreads, smem, stream>>>(xq, row_scale, w, w_scale, bias, y, M, N, K, act);
  return cudaGetLastError();
}

template <typename OutT>
cudaError_t dispatch(const int8_t* xq, const float* row_scale, const int8_t* w,
                     const float* w_scale, const float* bias, OutT* y, int64_t M,
                     int64_t N, int64_t K, int act, cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  if (K % 16 != 0)  // rows not 16-byte aligned: correct but slower bytewise loads
    return run<MediumTile, false>(xq, row_scale, w, w_scale, bias, y, M, N, K, act, stream);
  if (M <= 32)
    return run<SmallTile, true>(xq, row_scale, w, w_scale, bias, y, M, N, K, act, stream);
  if (M <= 256)
    return run<MediumTile, true>(xq, row_scale, w, w_scale, bias, y, M, N, K, act, stream);
  return run<LargeTile, true>(xq, row_scale, w, w_scale, bias, y, M, N, K, act, stream);
}

}  // namespace

cudaError_t launch_int8_gemm(const int8_t* xq, const float* row_scale, const int8_t* w,
                             const float* w_scale, const float* bias, void* y, int out_kind,
                             int64_t M, int64_t N, int64_t K, int act, cudaStream_t stream) {
  switch (out_kind) {
    case 1:
      return dispatch(xq, row_scale, w, w_scale, bias, static_cast<__nv_bfloat16*>(y), M, N, K,
                      act, stream);
    case 2:
      return dispatch(xq, row_scale, w, w_scale, bias, static_cast<__half*>(y), M, N, K, act,
                      stream);
    default:
      return dispatch(xq, row_scale, w, w_scale, bias, static_cast<float*>(y), M, N, K, act,
                      stream);
  }
}

}  // namespace scalenn::cuda
