#include "int8_gemm_kernels.h"

#include "row_absmax.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace scalenn::cpu {
namespace {

inline int32_t load_u32(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline const int32_t* comp_of(const int8_t* packed, int64_t N, int64_t K) {
  return reinterpret_cast<const int32_t*>(packed + packed_n(N) * packed_k(K));
}

inline int64_t panel_blocks(int64_t N, int64_t p) {
  return std::min<int64_t>(4, (packed_n(N) - p * kPanel) / 16);
}

// ============================== activation quantization ==============================
// Identical arithmetic to quantize_kernels.cpp (the scalenn::quantize_per_row contract), writing
// into the padded, possibly offset-by-128 layout the GEMM wants.

struct RowScale {
  float scale;
  float inv;
  bool finite;
};

inline RowScale row_scale_for(float amax, bool nonfinite, float static_scale) {
  if (nonfinite || !(amax <= FLT_MAX))
    return {std::numeric_limits<float>::quiet_NaN(), 0.0f, false};
  if (static_scale > 0.0f) return {static_scale, 1.0f / static_scale, true};
  return {amax / kQMax, amax > 0.0f ? kQMax / amax : 0.0f, true};
}

void quantize_row_scalar(FloatKind kind, const void* x, int64_t K, int64_t Kp, float static_scale,
                         uint8_t xor_bits, uint8_t* a, float* scale) {
  float amax = 0.0f;
  bool nonfinite = false;
  row_absmax_scalar(kind, x, 0, K, &amax, &nonfinite);
  RowScale s = row_scale_for(amax, nonfinite, static_scale);
  *scale = s.scale;
  if (!s.finite) {
    std::memset(a, xor_bits, Kp);
    return;
  }
  for (int64_t k = 0; k < K; ++k)
    a[k] = static_cast<uint8_t>(quantize_value(load_scalar(kind, x, k), s.inv)) ^ xor_bits;
  std::memset(a + K, xor_bits, Kp - K);
}

SCALENN_TARGET_AVX2 void quantize_row_avx2(FloatKind kind, const void* x, int64_t K, int64_t Kp,
                                           float static_scale, uint8_t xor_bits, uint8_t* a,
                                           float* scale) {
  bool nonfinite = false;
  const float amax = row_absmax_avx2(kind, x, K, &nonfinite);
  RowScale s = row_scale_for(amax, nonfinite, static_scale);
  *scale = s.scale;
  if (!s.finite) {
    std::memset(a, xor_bits, Kp);
    return;
  }
  const __m256 inv = _mm256_set1_ps(s.inv);
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  const __m128i flip = _mm_set1_epi8(static_cast<char>(xor_bits));
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256i i32 = _mm256_cvtps_epi32(_mm256_mul_ps(load8(kind, x, k), inv));  // MXCSR: RNE
    i32 = _mm256_min_epi32(_mm256_max_epi32(i32, lo), hi);
    __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    __m128i i8 = _mm_xor_si128(_mm_packs_epi16(i16, i16), flip);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(a + k), i8);
  }
  for (; k < K; ++k)
    a[k] = static_cast<uint8_t>(quantize_value(load_scalar(kind, x, k), s.inv)) ^ xor_bits;
  std::memset(a + K, xor_bits, Kp - K);
}

SCALENN_TARGET_AVX512 void quantize_row_avx512(FloatKind kind, const void* x, int64_t K,
                                               int64_t Kp, float static_scale, uint8_t xor_bits,
                                               uint8_t* a, float* scale) {
  bool nonfinite = false;
  const float amax = row_absmax_avx512(kind, x, K, &nonfinite);
  RowScale s = row_scale_for(amax, nonfinite, static_scale);
  *scale = s.scale;
  if (!s.finite) {
    std::memset(a, xor_bits, Kp);
    return;
  }
  const __m512 inv = _mm512_set1_ps(s.inv);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  const __m128i flip = _mm_set1_epi8(static_cast<char>(xor_bits));
  for (int64_t k = 0; k < K; k += 16) {
    __mmask16 m = tail_mask16(K - k);
    __m512i i32 = _mm512_cvtps_epi32(_mm512_mul_ps(load16(kind, x, k, m), inv));  // MXCSR: RNE
    i32 = _mm512_min_epi32(_mm512_max_epi32(i32, lo), hi);
    // Narrow in registers, then store: the memory form of vpmovsdb is microcoded on Zen.
    __m128i i8 = _mm_xor_si128(_mm512_cvtsepi32_epi8(i32), flip);
    if (m == 0xffff)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(a + k), i8);
    else
      _mm_mask_storeu_epi8(a + k, m, i8);
  }
  std::memset(a + K, xor_bits, Kp - K);
}

// ============================== epilogue math ==============================
// exp for v <= 0 and erf by Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7), written once per ISA
// with the same operation sequence (fma where fma), so every path gives the same floats.
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kErfP = 0.3275911f;
constexpr float kA1 = 0.254829592f, kA2 = -0.284496736f, kA3 = 1.421413741f,
                kA4 = -1.453152027f, kA5 = 1.061405429f;
constexpr float kSqrtHalf = 0.70710678118654752f;

float exp_neg_scalar(float v) {
  v = std::max(v, -87.0f);
  float n = std::nearbyint(v * kLog2e);
  float r = std::fma(n, -kLn2Hi, v);
  r = std::fma(n, -kLn2Lo, r);
  float p = 1.0f / 720.0f;
  p = std::fma(p, r, 1.0f / 120.0f);
  p = std::fma(p, r, 1.0f / 24.0f);
  p = std::fma(p, r, 1.0f / 6.0f);
  p = std::fma(p, r, 0.5f);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  return std::ldexp(p, static_cast<int>(n));
}

float gelu_impl_scalar(float x) {
  float z = x * kSqrtHalf;
  float az = std::fabs(z);
  float t = 1.0f / std::fma(kErfP, az, 1.0f);
  float poly = std::fma(kA5, t, kA4);
  poly = std::fma(poly, t, kA3);
  poly = std::fma(poly, t, kA2);
  poly = std::fma(poly, t, kA1);
  poly = poly * t;
  float e = exp_neg_scalar(-(az * az));
  float erf_abs = std::fma(-poly, e, 1.0f);
  float erf = std::copysign(erf_abs, z);
  return (0.5f * x) * (1.0f + erf);
}

SCALENN_TARGET_AVX512 inline __m512 gelu_avx512(__m512 x) {
  __m512 z = _mm512_mul_ps(x, _mm512_set1_ps(kSqrtHalf));
  __m512 az = _mm512_abs_ps(z);
  __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f),
                           _mm512_fmadd_ps(_mm512_set1_ps(kErfP), az, _mm512_set1_ps(1.0f)));
  __m512 poly = _mm512_fmadd_ps(_mm512_set1_ps(kA5), t, _mm512_set1_ps(kA4));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(kA3));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(kA2));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(kA1));
  poly = _mm512_mul_ps(poly, t);
  // exp(-az^2)
  __m512 v = _mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(az, az)),
                           _mm512_set1_ps(-87.0f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(kLog2e)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-kLn2Hi), v);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(-kLn2Lo), r);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.0f / 720.0f), r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  __m512 e = _mm512_scalef_ps(p, n);
  __m512 erf_abs = _mm512_fnmadd_ps(poly, e, _mm512_set1_ps(1.0f));
  // copysign(erf_abs, z)
  __m512 sign = _mm512_and_ps(z, _mm512_set1_ps(-0.0f));
  __m512 erf = _mm512_or_ps(erf_abs, sign);
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x),
                       _mm512_add_ps(_mm512_set1_ps(1.0f), erf));
}

SCALENN_TARGET_AVX2 inline __m256 gelu_avx2(__m256 x) {
  __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(kSqrtHalf));
  __m256 az = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), z);
  __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f),
                           _mm256_fmadd_ps(_mm256_set1_ps(kErfP), az, _mm256_set1_ps(1.0f)));
  __m256 poly = _mm256_fmadd_ps(_mm256_set1_ps(kA5), t, _mm256_set1_ps(kA4));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(kA3));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(kA2));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(kA1));
  poly = _mm256_mul_ps(poly, t);
  __m256 v = _mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(az, az)),
                           _mm256_set1_ps(-87.0f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(kLog2e)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-kLn2Hi), v);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(-kLn2Lo), r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(1.0f / 720.0f), r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  // 2^n for n in [-126, 0]: a normal float built from its exponent bits, so the product rounds
  // exactly like ldexp / vscalefps.
  __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  __m256 e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
  __m256 erf_abs = _mm256_fnmadd_ps(poly, e, _mm256_set1_ps(1.0f));
  __m256 sign = _mm256_and_ps(z, _mm256_set1_ps(-0.0f));
  __m256 erf = _mm256_or_ps(erf_abs, sign);
  return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x),
                       _mm256_add_ps(_mm256_set1_ps(1.0f), erf));
}

inline float activate_scalar(Activation act, float y) {
  if (act == Activation::relu) return std::isnan(y) ? y : (y > 0.0f ? y : 0.0f);
  if (act == Activation::gelu) return gelu_impl_scalar(y);
  return y;
}

SCALENN_TARGET_AVX512 inline __m512 activate_avx512(Activation act, __m512 y) {
  // max(0, y) returns its second operand when either is NaN, so NaN rows stay NaN.
  if (act == Activation::relu) return _mm512_max_ps(_mm512_setzero_ps(), y);
  if (act == Activation::gelu) return gelu_avx512(y);
  return y;
}

SCALENN_TARGET_AVX2 inline __m256 activate_avx2(Activation act, __m256 y) {
  if (act == Activation::relu) return _mm256_max_ps(_mm256_setzero_ps(), y);
  if (act == Activation::gelu) return gelu_avx2(y);
  return y;
}

// ============================== AVX-512 VNNI microkernel ==============================
// MR rows x NB blocks of 16 channels over k-steps [s0, s1): accumulators stay in zmm registers
// (MR*NB <= 24). K is cut into chunks whose slice of the weight panel (64 ch x kChunkSteps*4 k
// = 24 KiB) stays in L1 while every row tile of the block runs over it, so the panel is read
// from memory (or L2) once per row block and the weight stream overlaps the compute of all row
// tiles. Between chunks the accumulators park in a small int32 scratch (L1); after the last
// chunk the epilogue writes each output once. PF: which software prefetch a tile issues (the
// first row tile of a chunk pulls the chunk into L1; the second requests the next chunk into L2,
// so memory keeps streaming while the later tiles compute from L1: at M=16 on one core this
// took a 4096x4096 layer from 0.98 to 0.73 ms).
// Near prefetch 64 k-steps ahead (16 KiB of the panel): at M=1 the stream is all there is, and
// 8 KiB kept too few lines in flight (4096^2, M=1, rotated weights: 36.6 -> 38.9 GB/s on one
// thread, 46.8 -> 49.9 GB/s on two).
constexpr int64_t kPrefetchBytes = 16384;
constexpr int64_t kChunkSteps = 96;

constexpr int kPrefetchNone = 0, kPrefetchNear = 1, kPrefetchNextChunk = 2;

template <int MR, int NB, int PF>
SCALENN_TARGET_AVX512 void tile_avx512(const GemmProblem& g, int64_t m0, int64_t p, int64_t s0,
                                       int64_t s1, int32_t* scratch, bool first, bool last) {
  const int64_t Kp = packed_k(g.K);
  const int8_t* w = g.packed + p * kPanel * Kp;
  const uint8_t* a = g.a + m0 * Kp;
  __m512i acc[MR][NB];
#pragma GCC unroll 24
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j)
      acc[i][j] = first ? _mm512_setzero_si512() : _mm512_loadu_si512(scratch + i * kPanel + 16 * j);
  for (int64_t s = s0; s < s1; ++s) {
    const int8_t* ws = w + s * NB * 64;
    if constexpr (PF == kPrefetchNear) {
#pragma GCC unroll 4
      for (int j = 0; j < NB; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(ws + kPrefetchBytes + 64 * j), _MM_HINT_T0);
    } else if constexpr (PF == kPrefetchNextChunk) {
      // The same position in the next k-chunk, into L2: keeps the memory stream busy while this
      // chunk is reused from L1 by the other row tiles.
#pragma GCC unroll 4
      for (int j = 0; j < NB; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(ws + kChunkSteps * NB * 64 + 64 * j),
                     _MM_HINT_T1);
    }
    __m512i b[NB];
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) b[j] = _mm512_loadu_si512(ws + 64 * j);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      __m512i av = _mm512_set1_epi32(load_u32(a + i * Kp + 4 * s));
#pragma GCC unroll 4
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], av, b[j]);
    }
  }
  if (!last) {
#pragma GCC unroll 24
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NB; ++j) _mm512_storeu_si512(scratch + i * kPanel + 16 * j, acc[i][j]);
    return;
  }
  const int64_t n0 = p * kPanel;
  const int32_t* comp = comp_of(g.packed, g.N, g.K) + n0;
#pragma GCC unroll 4
  for (int j = 0; j < NB; ++j) {
    const int64_t n = n0 + 16 * j;
    if (n >= g.N) break;
    const __mmask16 mask = tail_mask16(g.N - n);
    const __m512i c = _mm512_loadu_si512(comp + 16 * j);
    if (g.out_s32 != nullptr) {
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i)
        _mm512_mask_storeu_epi32(g.out_s32 + (m0 + i) * g.N + n, mask,
                                 _mm512_add_epi32(acc[i][j], c));
      continue;
    }
    const __m512 ws = _mm512_maskz_loadu_ps(mask, g.w_scale + n);
    const __m512 bias = g.bias ? _mm512_maskz_loadu_ps(mask, g.bias + n) : _mm512_setzero_ps();
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      __m512 scale = _mm512_mul_ps(_mm512_set1_ps(g.row_scale[m0 + i]), ws);
      __m512 y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(acc[i][j], c)), scale, bias);
      store16(g.out_kind, g.out, (m0 + i) * g.N + n, activate_avx512(g.act, y), mask);
    }
  }
}

struct ChunkArgs {
  int64_t s0, s1;
  int32_t* scratch;
  bool first, last;
};

template <int MR, int PF>
SCALENN_TARGET_AVX512 void tile_avx512_nb(const GemmProblem& g, int64_t m0, int64_t p, int64_t nb,
                                          const ChunkArgs& c) {
  switch (nb) {
    case 1: tile_avx512<MR, 1, PF>(g, m0, p, c.s0, c.s1, c.scratch, c.first, c.last); break;
    case 2: tile_avx512<MR, 2, PF>(g, m0, p, c.s0, c.s1, c.scratch, c.first, c.last); break;
    case 3: tile_avx512<MR, 3, PF>(g, m0, p, c.s0, c.s1, c.scratch, c.first, c.last); break;
    default: tile_avx512<MR, 4, PF>(g, m0, p, c.s0, c.s1, c.scratch, c.first, c.last);
  }
}

template <int PF>
SCALENN_TARGET_AVX512 void tile_avx512_any(const GemmProblem& g, int64_t m0, int64_t mr,
                                           int64_t p, int64_t nb, const ChunkArgs& c) {
  switch (mr) {
    case 1: tile_avx512_nb<1, PF>(g, m0, p, nb, c); break;
    case 2: tile_avx512_nb<2, PF>(g, m0, p, nb, c); break;
    case 3: tile_avx512_nb<3, PF>(g, m0, p, nb, c); break;
    case 4: tile_avx512_nb<4, PF>(g, m0, p, nb, c); break;
    case 5: tile_avx512_nb<5, PF>(g, m0, p, nb, c); break;
    default: tile_avx512_nb<6, PF>(g, m0, p, nb, c);
  }
}

// One row block x one panel on AVX-512: k-chunks outside, row tiles inside.
void block_avx512(const GemmProblem& g, int64_t mb, int64_t mb_end, int64_t p) {
  const int64_t steps = packed_k(g.K) / 4, nb = panel_blocks(g.N, p);
  // Accumulators of every row tile of the block between chunks (row block <= kMaxRowBlock).
  thread_local std::vector<int32_t> scratch;
  const bool chunked = steps > kChunkSteps;
  if (chunked && static_cast<int64_t>(scratch.size()) < (mb_end - mb) * kPanel)
    scratch.resize((mb_end - mb) * kPanel);
  for (int64_t s0 = 0; s0 < steps || s0 == 0; s0 += kChunkSteps) {
    ChunkArgs c;
    c.s0 = s0;
    c.s1 = chunked ? std::min(steps, s0 + kChunkSteps) : steps;
    c.first = s0 == 0;
    c.last = c.s1 == steps;
    for (int64_t m0 = mb; m0 < mb_end; m0 += 6) {
      const int64_t mr = std::min<int64_t>(6, mb_end - m0);
      c.scratch = chunked ? scratch.data() + (m0 - mb) * kPanel : nullptr;
      // First row tile: prefetch its own stream just ahead (it pulls the chunk in); second:
      // the next chunk into L2, overlapping memory with the remaining tiles' compute.
      if (m0 == mb)
        tile_avx512_any<kPrefetchNear>(g, m0, mr, p, nb, c);
      else if (m0 == mb + 6 && c.s1 < steps)
        tile_avx512_any<kPrefetchNextChunk>(g, m0, mr, p, nb, c);
      else
        tile_avx512_any<kPrefetchNone>(g, m0, mr, p, nb, c);
    }
    if (!chunked) break;
  }
}

// ============================== AVX2 microkernel ==============================
// s8 activations; vpmaddubsw is u8 x s8 with int16 SATURATION, so feed it |q| (<= 128) and the
// weight with q's sign applied (vpsignb; weights are >= -127 so negation never wraps): each
// product is q*w exactly and a pair sums to at most 2*128*127 = 32512 < 32767, no saturation.
// vpmaddwd with ones then sums pairs into int32: bit-identical to VNNI and scalar.
// 16 ymm registers: MR rows x one 16-channel block (2 ymm) at a time.
template <int MR>
SCALENN_TARGET_AVX2 void tile_avx2_block(const GemmProblem& g, int64_t m0, int64_t p, int64_t nb,
                                         int64_t j) {
  const int64_t Kp = packed_k(g.K), steps = Kp / 4;
  const int8_t* w = g.packed + p * kPanel * Kp + j * 64;
  const int64_t stride = nb * 64;
  const int8_t* a = reinterpret_cast<const int8_t*>(g.a) + m0 * Kp;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[MR][2];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
  for (int64_t s = 0; s < steps; ++s) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + s * stride));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + s * stride + 32));
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      __m256i av = _mm256_set1_epi32(load_u32(reinterpret_cast<const uint8_t*>(a + i * Kp + 4 * s)));
      __m256i aabs = _mm256_abs_epi8(av);
      __m256i p0 = _mm256_maddubs_epi16(aabs, _mm256_sign_epi8(b0, av));
      __m256i p1 = _mm256_maddubs_epi16(aabs, _mm256_sign_epi8(b1, av));
      acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(p0, ones));
      acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(p1, ones));
    }
  }
  const int64_t n = p * kPanel + 16 * j;
  const int64_t valid = std::min<int64_t>(16, g.N - n);
  for (int i = 0; i < MR; ++i) {
    alignas(32) int32_t lanes[16];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[i][0]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes + 8), acc[i][1]);
    const int64_t row = m0 + i;
    if (g.out_s32 != nullptr) {
      std::memcpy(g.out_s32 + row * g.N + n, lanes, valid * sizeof(int32_t));
      continue;
    }
    const float rs = g.row_scale[row];
    if (valid == 16) {
      for (int h = 0; h < 2; ++h) {
        __m256 scale = _mm256_mul_ps(_mm256_set1_ps(rs), _mm256_loadu_ps(g.w_scale + n + 8 * h));
        __m256 bias = g.bias ? _mm256_loadu_ps(g.bias + n + 8 * h) : _mm256_setzero_ps();
        __m256 acc_f = _mm256_cvtepi32_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(lanes + 8 * h)));
        store8(g.out_kind, g.out, row * g.N + n + 8 * h,
               activate_avx2(g.act, _mm256_fmadd_ps(acc_f, scale, bias)));
      }
    } else {
      for (int64_t c = 0; c < valid; ++c) {
        float y = std::fma(static_cast<float>(lanes[c]), rs * g.w_scale[n + c],
                           g.bias ? g.bias[n + c] : 0.0f);
        store_scalar(g.out_kind, g.out, row * g.N + n + c, activate_scalar(g.act, y));
      }
    }
  }
}

SCALENN_TARGET_AVX2 void tile_avx2_any(const GemmProblem& g, int64_t m0, int64_t mr, int64_t p,
                                       int64_t nb) {
  for (int64_t j = 0; j < nb; ++j) {
    switch (mr) {
      case 1: tile_avx2_block<1>(g, m0, p, nb, j); break;
      case 2: tile_avx2_block<2>(g, m0, p, nb, j); break;
      case 3: tile_avx2_block<3>(g, m0, p, nb, j); break;
      default: tile_avx2_block<4>(g, m0, p, nb, j);
    }
  }
}

// ============================== scalar ==============================
void tile_scalar(const GemmProblem& g, int64_t m0, int64_t mr, int64_t p, int64_t nb) {
  const int64_t Kp = packed_k(g.K), steps = Kp / 4;
  const int8_t* w = g.packed + p * kPanel * Kp;
  const int8_t* a = reinterpret_cast<const int8_t*>(g.a);
  const int64_t n0 = p * kPanel;
  for (int64_t i = 0; i < mr; ++i) {
    const int8_t* ar = a + (m0 + i) * Kp;
    for (int64_t c = 0; c < nb * 16 && n0 + c < g.N; ++c) {
      const int64_t j = c / 16, lane = c % 16;
      int32_t acc = 0;
      for (int64_t s = 0; s < steps; ++s) {
        const int8_t* ws = w + s * nb * 64 + j * 64 + lane * 4;
        for (int t = 0; t < 4; ++t) acc += int32_t(ar[4 * s + t]) * int32_t(ws[t]);
      }
      const int64_t n = n0 + c, row = m0 + i;
      if (g.out_s32 != nullptr) {
        g.out_s32[row * g.N + n] = acc;
      } else {
        float y = std::fma(static_cast<float>(acc), g.row_scale[row] * g.w_scale[n],
                           g.bias ? g.bias[n] : 0.0f);
        store_scalar(g.out_kind, g.out, row * g.N + n, activate_scalar(g.act, y));
      }
    }
  }
}

}  // namespace

void activate_inplace(Activation act, float* y, int64_t n) {
  if (act == Activation::none) return;
  for (int64_t i = 0; i < n; ++i) y[i] = activate_scalar(act, y[i]);
}

float gelu_scalar(float x) { return gelu_impl_scalar(x); }

void pack_weight(const int8_t* w, int64_t N, int64_t K, int8_t* packed, int64_t n_begin,
                 int64_t n_end) {
  const int64_t Kp = packed_k(K), steps = Kp / 4;
  int32_t* comp = reinterpret_cast<int32_t*>(packed + packed_n(N) * Kp);
  for (int64_t n = n_begin; n < n_end; ++n) {
    const int64_t p = n / kPanel, nb = panel_blocks(N, p), j = (n % kPanel) / 16, c = n % 16;
    int8_t* dst = packed + p * kPanel * Kp + j * 64 + c * 4;
    int32_t sum = 0;
    for (int64_t s = 0; s < steps; ++s) {
      for (int t = 0; t < 4; ++t) {
        const int64_t k = 4 * s + t;
        const int8_t v = (n < N && k < K) ? w[n * K + k] : int8_t(0);
        dst[s * nb * 64 + t] = v;
        sum += v;
      }
    }
    comp[n] = -128 * sum;
  }
}

void unpack_weight(const int8_t* packed, int64_t N, int64_t K, int8_t* w, int64_t n_begin,
                   int64_t n_end) {
  const int64_t Kp = packed_k(K);
  for (int64_t n = n_begin; n < n_end; ++n) {
    const int64_t p = n / kPanel, nb = panel_blocks(N, p), j = (n % kPanel) / 16, c = n % 16;
    const int8_t* src = packed + p * kPanel * Kp + j * 64 + c * 4;
    for (int64_t k = 0; k < K; ++k) w[n * K + k] = src[(k / 4) * nb * 64 + k % 4];
  }
}

void quantize_activations(CpuIsa isa, FloatKind kind, const void* x, int64_t K, float static_scale,
                          uint8_t* a, float* row_scale, int64_t row_begin, int64_t row_end) {
  const int64_t Kp = packed_k(K);
  const size_t row_bytes = (kind == FloatKind::f32 ? 4 : 2) * static_cast<size_t>(K);
  const uint8_t flip = activations_unsigned(isa) ? 0x80 : 0x00;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const void* xr = static_cast<const char*>(x) + r * row_bytes;
    switch (isa) {
      case CpuIsa::avx512:
        quantize_row_avx512(kind, xr, K, Kp, static_scale, flip, a + r * Kp, row_scale + r);
        break;
      case CpuIsa::avx2:
        quantize_row_avx2(kind, xr, K, Kp, static_scale, flip, a + r * Kp, row_scale + r);
        break;
      default: quantize_row_scalar(kind, xr, K, Kp, static_scale, flip, a + r * Kp, row_scale + r);
    }
  }
}

void copy_int8_activations(CpuIsa isa, const int8_t* q, int64_t K, uint8_t* a, int64_t row_begin,
                           int64_t row_end) {
  const int64_t Kp = packed_k(K);
  const uint8_t flip = activations_unsigned(isa) ? 0x80 : 0x00;
  for (int64_t r = row_begin; r < row_end; ++r) {
    for (int64_t k = 0; k < K; ++k) a[r * Kp + k] = static_cast<uint8_t>(q[r * K + k]) ^ flip;
    std::memset(a + r * Kp + K, flip, Kp - K);
  }
}

void gemm_tile(CpuIsa isa, const GemmProblem& g, int64_t m_begin, int64_t m_end, int64_t p_begin,
               int64_t p_end) {
  const int64_t Kp = packed_k(g.K);
  const int64_t mr_max = isa == CpuIsa::avx512 ? 6 : (isa == CpuIsa::avx2 ? 4 : 1);
  const int64_t mc = row_block(Kp, mr_max);
  for (int64_t mb = m_begin; mb < m_end; mb += mc) {
    const int64_t mb_end = std::min(m_end, mb + mc);
    for (int64_t p = p_begin; p < p_end; ++p) {
      if (isa == CpuIsa::avx512) {
        block_avx512(g, mb, mb_end, p);
        continue;
      }
      const int64_t nb = panel_blocks(g.N, p);
      for (int64_t m0 = mb; m0 < mb_end; m0 += mr_max) {
        const int64_t mr = std::min(mr_max, mb_end - m0);
        if (isa == CpuIsa::avx2)
          tile_avx2_any(g, m0, mr, p, nb);
        else
          tile_scalar(g, m0, mr, p, nb);
      }
    }
  }
}

}  // namespace scalenn::cpu
