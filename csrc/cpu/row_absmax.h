// The first pass of per-row symmetric int8 quantization, shared by quantize_per_row
// (quantize_kernels.cpp) and the activation side of the int8 GEMM (int8_gemm_kernels.cpp), so both
// follow the one contract of quantize_kernels.h bit for bit: max |x| over a row, whether the row
// holds NaN/Inf, and the scalar rounding used for tails.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "float_convert.h"
#include "isa.h"

namespace scalenn::cpu {

constexpr float kQMax = 127.0f;

// round-half-even(v * inv) clamped to [-127, 127] (default rounding mode, like torch.round).
inline int8_t quantize_value(float v, float inv) {
  float r = std::nearbyint(v * inv);
  r = r > kQMax ? kQMax : (r < -kQMax ? -kQMax : r);
  return static_cast<int8_t>(r);
}

// Elements [k0, K): folds max |x| into *amax and NaN/Inf into *nonfinite.
inline void row_absmax_scalar(FloatKind kind, const void* x, int64_t k0, int64_t K, float* amax,
                              bool* nonfinite) {
  for (int64_t k = k0; k < K; ++k) {
    float a = std::fabs(load_scalar(kind, x, k));
    *nonfinite |= !(a <= FLT_MAX);
    *amax = a > *amax ? a : *amax;
  }
}

SCALENN_TARGET_AVX2 inline float row_absmax_avx2(FloatKind kind, const void* x, int64_t K,
                                                 bool* nonfinite) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 fmax = _mm256_set1_ps(FLT_MAX);
  __m256 vmax = _mm256_setzero_ps();
  __m256 bad = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 a = _mm256_andnot_ps(sign, load8(kind, x, k));
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, fmax, _CMP_NLE_UQ));
    vmax = _mm256_max_ps(vmax, a);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  float amax = 0.0f;
  for (float v : lanes) amax = v > amax ? v : amax;
  *nonfinite = _mm256_movemask_ps(bad) != 0;
  row_absmax_scalar(kind, x, k, K, &amax, nonfinite);
  return amax;
}

// Full vectors with plain loads, one masked load for the tail (masked lanes read 0).
SCALENN_TARGET_AVX512 inline float row_absmax_avx512(FloatKind kind, const void* x, int64_t K,
                                                     bool* nonfinite) {
  const __m512 fmax = _mm512_set1_ps(FLT_MAX);
  const int64_t K16 = K & ~int64_t(15);
  __m512 vmax = _mm512_setzero_ps();
  __mmask16 bad = 0;
  for (int64_t k = 0; k < K16; k += 16) {
    __m512 a = _mm512_abs_ps(load16(kind, x, k));
    bad |= _mm512_cmp_ps_mask(a, fmax, _CMP_NLE_UQ);
    vmax = _mm512_max_ps(vmax, a);
  }
  if (K16 < K) {
    __m512 a = _mm512_abs_ps(load16(kind, x, K16, tail_mask16(K - K16)));
    bad |= _mm512_cmp_ps_mask(a, fmax, _CMP_NLE_UQ);
    vmax = _mm512_max_ps(vmax, a);
  }
  *nonfinite = bad != 0;
  return _mm512_reduce_max_ps(vmax);
}

}  // namespace scalenn::cpu
