#include "quantize_kernels.h"

#include "row_absmax.h"

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>

namespace scalenn::cpu {
namespace {

// Shared by every ISA once amax is known, so all paths agree bit for bit.
struct RowScale {
  float scale;
  float inv;
  bool finite;
};

inline RowScale row_scale(float amax, bool nonfinite) {
  if (nonfinite || !(amax <= FLT_MAX))
    return {std::numeric_limits<float>::quiet_NaN(), 0.0f, false};
  return {amax / kQMax, amax > 0.0f ? kQMax / amax : 0.0f, true};
}

// ---------------- scalar ----------------
void quantize_row_scalar(FloatKind kind, const void* x, int64_t K, int8_t* q, float* scale) {
  float amax = 0.0f;
  bool nonfinite = false;
  row_absmax_scalar(kind, x, 0, K, &amax, &nonfinite);
  RowScale s = row_scale(amax, nonfinite);
  *scale = s.scale;
  if (!s.finite) {
    std::memset(q, 0, K);
    return;
  }
  for (int64_t k = 0; k < K; ++k) q[k] = quantize_value(load_scalar(kind, x, k), s.inv);
}

void dequantize_row_scalar(FloatKind kind, const int8_t* q, float scale, int64_t K, void* y,
                           int64_t k0 = 0) {
  for (int64_t k = k0; k < K; ++k) store_scalar(kind, y, k, static_cast<float>(q[k]) * scale);
}

// ---------------- AVX2 ----------------
SCALENN_TARGET_AVX2 void quantize_row_avx2(FloatKind kind, const void* x, int64_t K, int8_t* q,
                                           float* scale, const char* next_row) {
  bool nonfinite = false;
  const float amax = row_absmax_avx2(kind, x, K, &nonfinite);
  RowScale s = row_scale(amax, nonfinite);
  *scale = s.scale;
  if (!s.finite) {
    std::memset(q, 0, K);
    return;
  }
  const __m256 inv = _mm256_set1_ps(s.inv);
  const int64_t elem = kind == FloatKind::f32 ? 4 : 2;
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    if (next_row != nullptr) _mm_prefetch(next_row + k * elem, _MM_HINT_T0);  // see avx512
    __m256i i32 = _mm256_cvtps_epi32(_mm256_mul_ps(load8(kind, x, k), inv));  // MXCSR: RNE
    __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_packs_epi16(i16, i16));
  }
  for (; k < K; ++k) q[k] = quantize_value(load_scalar(kind, x, k), s.inv);
}

SCALENN_TARGET_AVX2 void dequantize_row_avx2(FloatKind kind, const int8_t* q, float scale,
                                             int64_t K, void* y) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256i i32 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + k)));
    store8(kind, y, k, _mm256_mul_ps(_mm256_cvtepi32_ps(i32), s));
  }
  dequantize_row_scalar(kind, q, scale, K, y, k);
}

// ---------------- AVX-512 ----------------
// Main loops on full vectors, one masked step for the tail.
SCALENN_TARGET_AVX512 void quantize_row_avx512(FloatKind kind, const void* x, int64_t K,
                                               int8_t* q, float* scale, const char* next_row) {
  const int64_t K16 = K & ~int64_t(15);
  const __mmask16 tail = tail_mask16(K - K16);
  bool nonfinite = false;
  const float amax = row_absmax_avx512(kind, x, K, &nonfinite);
  RowScale s = row_scale(amax, nonfinite);
  *scale = s.scale;
  if (!s.finite) {
    std::memset(q, 0, K);
    return;
  }
  const __m512 inv = _mm512_set1_ps(s.inv);
  const int64_t elem = kind == FloatKind::f32 ? 4 : 2;
  for (int64_t k = 0; k < K16; k += 16) {
    // The second pass reads this row from L1; meanwhile pull in the next row, whose first pass
    // would otherwise stall on memory at every page the hardware prefetcher does not cross.
    if (next_row != nullptr) _mm_prefetch(next_row + k * elem, _MM_HINT_T0);
    __m512i i32 = _mm512_cvtps_epi32(_mm512_mul_ps(load16(kind, x, k), inv));  // MXCSR: RNE
    // Narrow in registers, then store: the memory form of vpmovsdb is microcoded (slow) on Zen.
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + k), _mm512_cvtsepi32_epi8(i32));
  }
  if (K16 < K) {
    __m512i i32 = _mm512_cvtps_epi32(_mm512_mul_ps(load16(kind, x, K16, tail), inv));
    _mm_mask_storeu_epi8(q + K16, tail, _mm512_cvtsepi32_epi8(i32));
  }
}

SCALENN_TARGET_AVX512 void dequantize_row_avx512(FloatKind kind, const int8_t* q, float scale,
                                                 int64_t K, void* y) {
  const __m512 s = _mm512_set1_ps(scale);
  const int64_t K16 = K & ~int64_t(15);
  for (int64_t k = 0; k < K16; k += 16) {
    __m512i i32 = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + k)));
    store16(kind, y, k, _mm512_mul_ps(_mm512_cvtepi32_ps(i32), s));
  }
  if (K16 < K) {
    const __mmask16 m = tail_mask16(K - K16);
    __m512i i32 = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, q + K16));
    store16(kind, y, K16, _mm512_mul_ps(_mm512_cvtepi32_ps(i32), s), m);
  }
}

size_t element_size(FloatKind kind) { return kind == FloatKind::f32 ? 4 : 2; }

}  // namespace

void quantize_rows(CpuIsa isa, FloatKind kind, const void* x, int64_t K, int8_t* q,
                   float* scale, int64_t row_begin, int64_t row_end) {
  const size_t row_bytes = element_size(kind) * static_cast<size_t>(K);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const void* xr = static_cast<const char*>(x) + r * row_bytes;
    int8_t* qr = q + r * K;
    const char* next = r + 1 < row_end ? static_cast<const char*>(xr) + row_bytes : nullptr;
    switch (isa) {
      case CpuIsa::avx512:
        quantize_row_avx512(kind, xr, K, qr, scale + r, next);
        break;
      case CpuIsa::avx2: quantize_row_avx2(kind, xr, K, qr, scale + r, next); break;
      default: quantize_row_scalar(kind, xr, K, qr, scale + r);
    }
  }
}

void dequantize_rows(CpuIsa isa, FloatKind kind, const int8_t* q, const float* scale, int64_t K,
                     void* y, int64_t row_begin, int64_t row_end) {
  const size_t row_bytes = element_size(kind) * static_cast<size_t>(K);
  for (int64_t r = row_begin; r < row_end; ++r) {
    void* yr = static_cast<char*>(y) + r * row_bytes;
    switch (isa) {
      case CpuIsa::avx512: dequantize_row_avx512(kind, q + r * K, scale[r], K, yr); break;
      case CpuIsa::avx2: dequantize_row_avx2(kind, q + r * K, scale[r], K, yr); break;
      default: dequantize_row_scalar(kind, q + r * K, scale[r], K, yr);
    }
  }
}

}  // namespace scalenn::cpu
