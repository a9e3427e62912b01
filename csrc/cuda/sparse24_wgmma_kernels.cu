// 2:4 semi-structured sparse linear on Hopper's asynchronous warpgroup MMA (wgmma.mma_async.sp),
// fp16/bf16 and int8. SCALENN_NEEDS_SM90A: wgmma exists only in sm_90a code; for every other
// target this file compiles to a kernel with an empty body, and the launcher refuses to run it
// (sparse24_wgmma_built() tells the binding which code the current GPU would load).
//
// Same contract and the same weight register images as sparse24_kernels.cu (the mma.sp kernel):
// the weight W [N, K] is the sparse A operand (rows = output features), the activations are the
// dense B operand (columns = tokens). What changes on Hopper:
// - one instruction covers 64 features x 128 tokens x one k-step (m64n128k32 fp16/bf16,
//   m64n128k64 int8); a warpgroup (4 warps) issues it and the tensor cores run it while the
//   warps go on (wgmma.commit_group / wait_group keep one stage in flight);
// - the A operand comes from registers, in the per-warp layout of mma.sp m16n8k32/k64, so each
//   warp of a warpgroup supplies one 16-row register image of the packer. PTX ISA 9.7.15.6.2
//   ("matrix fragments for wgmma with sparse matrix A"): warp w % 4 holds rows 16(w % 4) ..
//   +15, and the metadata figures for m64nNk32 f16/bf16 and m64nNk64 s8 are the very figures of
//   mma.sp m16n8k32 and m16n8k64 (the layouts the mma.sp kernel was verified with on an H200);
// - the activations are read by the tensor cores straight from shared memory through a matrix
//   descriptor: each stage holds 128 tokens x 128 bytes of K in the 128-byte swizzled layout
//   (16-byte chunk c of row r at chunk c ^ (r % 8); 8-row groups 1024 bytes apart), which is
//   bank-conflict free for the tensor cores; cp.async writes it, 16 bytes per thread.
//
// Block: 2 warpgroups x 2 m64 tiles = 256 output features, 128 tokens; fp32/int32 accumulators
// (128 registers per thread). Pipeline: kStages shared-memory stages of two k-steps each, the
// weight images (16 tiles x 2 steps x 640 bytes) and the activation tile loaded by cp.async
// kStages - 2 stages ahead; one stage of wgmma in flight.
//
// NOT YET RUN ON A GPU (written without one; compile-checked for sm_90a, and tested by
// tests/test_cuda_kernels.py on a Hopper machine through benchmarks/gpu_check.py).
#include <type_traits>

#include "mma_common.cuh"
#include "sparse24_kernels.h"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SCALENN_HAS_WGMMA 1
#endif

namespace scalenn::cuda {
namespace {

using namespace detail;

enum Kind : int { kF16 = 0, kBF16 = 1, kS8 = 2 };

constexpr int kThreads = 256;             // two warpgroups
constexpr int kTiles = 16;                // 16-row weight tiles per block: 2 WG x 2 m64 x 4 warps
constexpr int kRows = kTiles * 16;        // output features per block
constexpr int kTok = 128;                 // tokens per block (the wgmma N)
constexpr int kStepsPerStage = 2;         // k-steps of 64 activation bytes each
constexpr int kRowBytes = 64 * kStepsPerStage;  // = the 128-byte swizzle width
constexpr int kStages = 5;
constexpr int kImageBytes = 32 * 16;      // one tile's values for one k-step (16 B per lane)
constexpr int kMetaImageBytes = 32 * 4;   // one tile's metadata for one k-step
constexpr int kXBytes = kTok * kRowBytes;
constexpr int kValBytes = kStepsPerStage * kTiles * kImageBytes;
constexpr int kMetaBytes = kStepsPerStage * kTiles * kMetaImageBytes;
constexpr int kStageBytes = kXBytes + kValBytes + kMetaBytes;
constexpr int kSmemBytes = kStages * kStageBytes + 1024;  // + room to align stage 0 to 1024
// The probe kernel has static shared memory only in sm_90a code.
constexpr int kProbeMarkerBytes = 272;

static_assert(kStageBytes % 1024 == 0, "every stage's activation tile must be 1024-aligned");
static_assert(kXBytes % 1024 == 0, "the weight images follow the activation tile");

#ifdef SCALENN_HAS_WGMMA  // device helpers of the sm_90a code

// Metadata of padding tiles (rows >= N): positions 0 and 1 in every group (valid, ordered).
constexpr uint32_t kPadMeta = 0x44444444u;

template <typename T>
using Acc64 = T[64];

// wgmma shared-memory matrix descriptor (PTX ISA "matrix descriptor format"): start address,
// leading-dimension byte offset (not used by swizzled K-major operands; 16 by convention),
// stride byte offset 1024 (between 8-row groups: 8 rows x 128 bytes), swizzle mode 1 = 128 B.
__device__ __forceinline__ uint64_t swizzle128_desc(uint32_t smem_address) {
  return uint64_t((smem_address & 0x3FFFF) >> 4) | (uint64_t(16 >> 4) << 16) |
         (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// cp.async writes shared memory through the generic proxy; wgmma reads it through the async
// proxy, so every writing thread fences before the barrier that publishes a stage.
__device__ __forceinline__ void fence_async_proxy() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Ties the accumulators to this point for the compiler: it must not read them (epilogue) before
// the wgmma.wait_group above, nor hoist the zero-initialization past the first wgmma.
template <typename T>
__device__ __forceinline__ void fence_operands(Acc64<T>& d) {
#pragma unroll
  for (int i = 0; i < 64; ++i) {
    if constexpr (std::is_same_v<T, float>)
      asm volatile("" : "+f"(d[i])::"memory");
    else
      asm volatile("" : "+r"(d[i])::"memory");
  }
}

// The 64 accumulator operands of one m64n128 wgmma: "%0" .. "%63".
#define SN_ACC8(C, i) \
  C(d[i]), C(d[i + 1]), C(d[i + 2]), C(d[i + 3]), C(d[i + 4]), C(d[i + 5]), C(d[i + 6]), C(d[i + 7])
#define SN_ACC64(C)                                                                         \
  SN_ACC8(C, 0), SN_ACC8(C, 8), SN_ACC8(C, 16), SN_ACC8(C, 24), SN_ACC8(C, 32), SN_ACC8(C, 40), \
      SN_ACC8(C, 48), SN_ACC8(C, 56)
#define SN_ACC_REGS                                                                          \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "    \
  "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, " \
  "%37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, " \
  "%55, %56, %57, %58, %59, %60, %61, %62, %63}"
// Operands after the accumulators: A registers %64-%67, B descriptor %68, metadata %69,
// scale-d %70 (1: accumulate). Sparsity selector 0: lanes 4g and 4g+1 supply the metadata.
#define SN_WGMMA_SP(SHAPE_TYPES, TAIL, C)                                                       \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %70, 0;\n"                                     \
               "wgmma.mma_async.sp.sync.aligned." SHAPE_TYPES " " SN_ACC_REGS                    \
               ", {%64, %65, %66, %67}, %68, %69, 0, p" TAIL ";\n}\n"                          \
               : SN_ACC64(C)                                                                    \
               : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "l"(b_desc), "r"(e), "n"(1))

// Float kinds also take imm-scale-a, imm-scale-b (1: no negation) and imm-trans-b (0: B is
// K-major, as x's rows are).
__device__ __forceinline__ void wgmma_sp(Acc64<float>& d, const uint4& a, uint64_t b_desc,
                                         uint32_t e, std::integral_constant<int, kF16>) {
  SN_WGMMA_SP("m64n128k32.f32.f16.f16", ", 1, 1, 0", "+f");
}
__device__ __forceinline__ void wgmma_sp(Acc64<float>& d, const uint4& a, uint64_t b_desc,
                                         uint32_t e, std::integral_constant<int, kBF16>) {
  SN_WGMMA_SP("m64n128k32.f32.bf16.bf16", ", 1, 1, 0", "+f");
}
__device__ __forceinline__ void wgmma_sp(Acc64<int>& d, const uint4& a, uint64_t b_desc,
                                         uint32_t e, std::integral_constant<int, kS8>) {
  SN_WGMMA_SP("m64n128k64.s32.s8.s8", "", "+r");
}

#undef SN_WGMMA_SP
#undef SN_ACC_REGS
#undef SN_ACC64
#undef SN_ACC8

#endif  // SCALENN_HAS_WGMMA

__global__ void wgmma_probe_kernel(int* sink) {
#ifdef SCALENN_HAS_WGMMA
  // Never launched: whether it has static shared memory (cudaFuncGetAttributes) says whether
  // the code this GPU loads is the sm_90a build.
  __shared__ volatile char marker[kProbeMarkerBytes];
  marker[threadIdx.x % kProbeMarkerBytes] = 1;
  if (sink != nullptr) *sink = marker[(threadIdx.x + 1) % kProbeMarkerBytes];
#else
  if (sink != nullptr) *sink = 0;
#endif
}

template <int KIND, typename OutT>
__global__ void __launch_bounds__(kThreads, 1)
    sparse24_wgmma_kernel(const uint4* __restrict__ values, const uint32_t* __restrict__ meta,
                          const char* __restrict__ x, const float* __restrict__ row_scale,
                          const float* __restrict__ w_scale, const float* __restrict__ bias,
                          OutT* __restrict__ y, int64_t M, int64_t N, int64_t K, int64_t steps,
                          int act) {
#ifdef SCALENN_HAS_WGMMA
  using Acc = std::conditional_t<KIND == kS8, int, float>;
  extern __shared__ __align__(1024) char smem_raw[];
  char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2, wq = warp & 3;  // warpgroup, warp within it
  const int64_t tile0 = int64_t(blockIdx.x) * kTiles;
  const int64_t tok0 = int64_t(blockIdx.y) * kTok;
  const int64_t row_tiles = (N + 15) / 16;
  const int64_t row_bytes = K * (KIND == kS8 ? 1 : 2);
  const int n_stages = static_cast<int>((steps + kStepsPerStage - 1) / kStepsPerStage);

  // Stage s = k-steps [2s, 2s + 2): the activation tile (zero past M and K) and the weight
  // images [step j][tile t][lane] of the block's tiles (zero values and valid metadata past N
  // and past the last k-step, so that every stage runs the same wgmmas: a wgmma under a branch
  // makes ptxas close each group with a wait, which would serialize the pipeline).
  // Each thread's share is the same in every stage, only the k offset moves:
  // - activations: rows r = tid / 8 + 32 k (k < 4), 16-byte chunk c = tid % 8 of the 128;
  // - weight values: lane `lane` of tiles warp and warp + 8, both k-steps (4 chunks);
  // - metadata: 16 bytes (lanes 4q .. 4q+3, q = tid % 8) of image tid / 8 (j = image / 16).
  static_assert(kTok * kRowBytes / 16 == 4 * kThreads && kTiles == 2 * (kThreads / 32) &&
                    kStepsPerStage * kTiles * kMetaImageBytes / 16 == kThreads,
                "the per-thread copy plan below assumes these sizes");
  const int xc = tid & 7, xr = tid >> 3;
  const int x_dst = xr * kRowBytes + ((xc ^ (xr & 7)) << 4);  // + 32 k rows (same swizzle)
  const int64_t x_row_bytes32 = 32 * row_bytes;
  const char* x_src = x + (tok0 + xr) * row_bytes + xc * 16;
  // Sources at k-step 0; a stage s is 2s k-steps = 64 s image lanes further on.
  const uint4* v_src = values + (tile0 + warp) * steps * 32 + lane;  // tile warp (+ 8)
  const int64_t v_tile8 = 8 * steps * 32;
  const bool v_real[2] = {tile0 + warp < row_tiles, tile0 + warp + 8 < row_tiles};
  const int mq = tid & 7, mj = (tid >> 3) / kTiles, mt = (tid >> 3) % kTiles;
  const uint32_t* m_src = meta + ((tile0 + mt) * steps + mj) * 32 + 4 * mq;
  const bool m_real = tile0 + mt < row_tiles;
  const int m_dst = kXBytes + kValBytes + (mj * kTiles + mt) * kMetaImageBytes + mq * 16;

  auto load_stage = [&](int s, char* st) {
    const int64_t b0 = int64_t(s) * kRowBytes;
    const bool k_inside = b0 + xc * 16 < row_bytes;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const bool inside = k_inside && tok0 + xr + 32 * k < M;
      cp_async16(st + x_dst + k * 32 * kRowBytes, inside ? x_src + k * x_row_bytes32 + b0 : x,
                 inside ? 16 : 0);
    }
    const int64_t step0 = int64_t(s) * kStepsPerStage;
#pragma unroll
    for (int j = 0; j < kStepsPerStage; ++j) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const bool real = v_real[half] && step0 + j < steps;
        const uint4* src = v_src + half * v_tile8 + (step0 + j) * 32;
        cp_async16(st + kXBytes + ((j * kTiles + warp + 8 * half) * 32 + lane) * 16,
                   real ? src : values, real ? 16 : 0);
      }
    }
    if (m_real && step0 + mj < steps)
      cp_async16(st + m_dst, m_src + step0 * 32, 16);
    else
      *reinterpret_cast<uint4*>(st + m_dst) = make_uint4(kPadMeta, kPadMeta, kPadMeta, kPadMeta);
  };

  Acc acc[2][64];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[h][i] = Acc(0);
    fence_operands<Acc>(acc[h]);
  }

#pragma unroll
  for (int s = 0; s < kStages - 2; ++s) {
    if (s < n_stages) load_stage(s, smem + s * kStageBytes);
    cp_async_commit();
  }
  // Stage s is group s; kStages - 3 younger groups may still be in flight. The buffer loaded in
  // iteration s was last read by the wgmmas of stage s - 2, which every warpgroup has waited
  // for (wait_group 1 in iteration s - 1) before this iteration's barrier.
  int use_buf = 0, load_buf = kStages - 2;
  for (int s = 0; s < n_stages; ++s) {
    cp_async_wait<kStages - 3>();
    fence_async_proxy();
    __syncthreads();
    if (s + kStages - 2 < n_stages) load_stage(s + kStages - 2, smem + load_buf * kStageBytes);
    cp_async_commit();
    load_buf = load_buf + 1 == kStages ? 0 : load_buf + 1;

    const char* st = smem + use_buf * kStageBytes;
    use_buf = use_buf + 1 == kStages ? 0 : use_buf + 1;
    const uint4* vals = reinterpret_cast<const uint4*>(st + kXBytes);
    const uint32_t* metas = reinterpret_cast<const uint32_t*>(st + kXBytes + kValBytes);
    uint4 a[kStepsPerStage][2];
    uint32_t e[kStepsPerStage][2];
#pragma unroll
    for (int j = 0; j < kStepsPerStage; ++j) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int slot = j * kTiles + wg * 8 + h * 4 + wq;  // this warp's tile of the m64
        a[j][h] = vals[slot * 32 + lane];
        e[j][h] = metas[slot * 32 + lane];
      }
    }
    // k-step j is bytes [64j, 64j + 64) of every 128-byte row: the swizzle is a function of the
    // address, so advancing the start address selects it. (Everything a wgmma reads from
    // registers is computed before the fence.)
    uint64_t desc[kStepsPerStage];
#pragma unroll
    for (int j = 0; j < kStepsPerStage; ++j) desc[j] = swizzle128_desc(smem_addr(st) + 64 * j);
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < kStepsPerStage; ++j) {
#pragma unroll
      for (int h = 0; h < 2; ++h)
        wgmma_sp(acc[h], a[j][h], desc[j], e[j][h], std::integral_constant<int, KIND>());
    }
    wgmma_commit();
    wgmma_wait<1>();
  }
  wgmma_wait<0>();
  cp_async_wait<0>();
  fence_operands<Acc>(acc[0]);
  fence_operands<Acc>(acc[1]);

  // Accumulator i of a thread (per m64 tile): feature row g + 8 * ((i / 2) % 2) of its warp's
  // 16 rows, token column 8 * (i / 4) + 2 * t + i % 2.
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t row0 = (tile0 + wg * 8 + h * 4 + wq) * 16 + g;
#pragma unroll
    for (int i = 0; i < 64; ++i) {
      const int64_t o = row0 + ((i >> 1) & 1) * 8;
      const int64_t tk = tok0 + (i >> 2) * 8 + 2 * t + (i & 1);
      if (o >= N || tk >= M) continue;
      float r = static_cast<float>(acc[h][i]);
      if constexpr (KIND == kS8) r = r * row_scale[tk] * w_scale[o];
      if (bias != nullptr) r += bias[o];
      y[tk * N + o] = from_float<OutT>(activate(r, act));
    }
  }
#endif
}

template <int KIND, typename OutT>
cudaError_t run(const void* values, const uint32_t* meta, const void* x, const float* row_scale,
                const float* w_scale, const float* bias, void* y, int64_t M, int64_t N,
                int64_t K, int64_t steps, int act, cudaStream_t stream) {
  const int64_t grid_y = (M + kTok - 1) / kTok;
  if (grid_y > 65535) return cudaErrorInvalidConfiguration;
  auto* kernel = sparse24_wgmma_kernel<KIND, OutT>;
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>((N + kRows - 1) / kRows), static_cast<unsigned>(grid_y));
  kernel<<<grid, kThreads, kSmemBytes, stream>>>(
      static_cast<const uint4*>(values), meta, static_cast<const char*>(x), row_scale, w_scale,
      bias, static_cast<OutT*>(y), M, N, K, steps, act);
  return cudaGetLastError();
}

}  // namespace

bool sparse24_wgmma_built() {
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, wgmma_probe_kernel) != cudaSuccess) {
    cudaGetLastError();  // clear: a GPU that has no code for this function is just "no"
    return false;
  }
  return attr.sharedSizeBytes >= kProbeMarkerBytes;
}

cudaError_t launch_sparse24_wgmma_linear(int kind, const void* values, const uint32_t* meta,
                                         const void* x, const float* row_scale,
                                         const float* w_scale, const float* bias, void* y,
                                         int out_kind, int64_t M, int64_t N, int64_t K,
                                         int64_t steps, int act, cudaStream_t stream) {
  if (M == 0 || N == 0) return cudaSuccess;
  const int64_t esize = kind == kS8 ? 1 : 2;
  if ((K * esize) % 16 != 0) return cudaErrorInvalidValue;
  if (!sparse24_wgmma_built()) return cudaErrorNoKernelImageForDevice;
  switch (kind) {
    case kF16:
      return run<kF16, __half>(values, meta, x, nullptr, nullptr, bias, y, M, N, K, steps, act,
                               stream);
    case kBF16:
      return run<kBF16, __nv_bfloat16>(values, meta, x, nullptr, nullptr, bias, y, M, N, K,
                                       steps, act, stream);
    default:
      switch (out_kind) {
        case 1:
          return run<kS8, __nv_bfloat16>(values, meta, x, row_scale, w_scale, bias, y, M, N, K,
                                         steps, act, stream);
        case 2:
          return run<kS8, __half>(values, meta, x, row_scale, w_scale, bias, y, M, N, K, steps,
                                  act, stream);
        default:
          return run<kS8, float>(values, meta, x, row_scale, w_scale, bias, y, M, N, K, steps,
                                 act, stream);
      }
  }
}

}  // namespace scalenn::cuda
