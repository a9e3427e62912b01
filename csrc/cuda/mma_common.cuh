// Device helpers shared by the tensor-core kernels (int8 GEMM, 2:4 sparse): async copies,
// ldmatrix, the shared-memory swizzle, and the fused dequant/bias/activation epilogue.
// Raw pointers only, no torch headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace scalenn::cuda::detail {

// Activation codes shared with the bindings and the Triton kernels.
enum Activation : int { kActNone = 0, kActRelu = 1, kActGelu = 2 };

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses L1; the last (16 - src_bytes) bytes are zero-filled,
// so out-of-range rows/columns are loaded as zeros without a branch around the copy.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)),
               "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8x8 b16 matrices (8 rows x 16 bytes each); lanes 8j..8j+7 give the row addresses of
// matrix j, and register j of lane l receives row l/4, bytes 4*(l%4)..+3 of matrix j.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(smem)));
}

// Shared tiles have 64-byte rows (4 chunks of 16 bytes). XOR-ing the chunk with (row/2)%4 puts
// the 8 rows an ldmatrix reads at 8 different 16-byte bank groups: conflict-free without padding.
__device__ __forceinline__ int swizzle64(int row, int chunk) {
  return row * 64 + ((chunk ^ ((row >> 1) & 3)) << 4);
}

__device__ __forceinline__ float activate(float y, int act) {
  if (act == kActRelu) return y < 0.f ? 0.f : y;  // NaN stays NaN, as torch.relu
  if (act == kActGelu) return 0.5f * y * (1.f + erff(y * 0.70710678118654752f));
  return y;
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Warp/tile geometry of the tensor-core kernels: WO x WT warps, each owning MT m16 tiles of
// output features and NT n8 tiles of tokens.
template <int WO_, int WT_, int MT_, int NT_>
struct TileConfig {
  static constexpr int WO = WO_, WT = WT_, MT = MT_, NT = NT_;
  static constexpr int kThreads = WO * WT * 32;
  static constexpr int kOut = WO * MT * 16;  // output features per block
  static constexpr int kTok = WT * NT * 8;   // tokens per block
};

}  // namespace scalenn::cuda::detail
