// Gradient-bucket kernels: pack (scale + cast into a flat buffer), unpack, int8 quantization
// with error feedback into wire records, and dequantize-and-sum of received records.
// Contracts in bucket_kernels.h.
//
// Every multiply and add is written out separately and contraction is off for this file, so no
// ISA path fuses `a * b + c` into an FMA: all paths and the PyTorch reference round alike.
#pragma GCC optimize("fp-contract=off")

#include "bucket_kernels.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace scalenn::cpu {
namespace {

constexpr float kQMax = 127.0f;

// Calls f(segment, first element inside the segment, flat index, count) for every piece of the
// flat range [begin, end) covered by a segment.
template <class F>
void for_each_piece(const BucketSegment* segs, int64_t nseg, int64_t begin, int64_t end, F&& f) {
  int64_t lo = 0, hi = nseg;
  while (lo < hi) {  // first segment ending after `begin`
    int64_t mid = (lo + hi) / 2;
    if (segs[mid].offset + segs[mid].numel <= begin) lo = mid + 1; else hi = mid;
  }
  for (int64_t i = lo; i < nseg && segs[i].offset < end; ++i) {
    int64_t a = std::max(begin, segs[i].offset);
    int64_t b = std::min(end, segs[i].offset + segs[i].numel);
    if (a < b) f(segs[i], a - segs[i].offset, a, b - a);
  }
}

size_t elem_size(FloatKind k) { return k == FloatKind::f32 ? 4 : 2; }

// ---------------- dst[j] = cast(float(src[j]) * scale) ----------------
void scale_convert_scalar(FloatKind sk, const void* src, FloatKind dk, void* dst, int64_t n,
                          float scale) {
  for (int64_t j = 0; j < n; ++j) store_scalar(dk, dst, j, load_scalar(sk, src, j) * scale);
}

// Kinds as template parameters so the per-vector switch in load/store folds away.
template <FloatKind SK, FloatKind DK>
SCALENN_TARGET_AVX512 void scale_convert_avx512_t(const void* src, void* dst, int64_t n,
                                                  float scale) {
  const __m512 s = _mm512_set1_ps(scale);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    store16(DK, dst, j, _mm512_mul_ps(load16(SK, src, j, 0xffff), s), 0xffff);
  if (j < n) {
    __mmask16 m = tail_mask16(n - j);
    store16(DK, dst, j, _mm512_mul_ps(load16(SK, src, j, m), s), m);
  }
}

template <FloatKind SK, FloatKind DK>
SCALENN_TARGET_AVX2 void scale_convert_avx2_t(const void* src, void* dst, int64_t n, float scale) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) store8(DK, dst, j, _mm256_mul_ps(load8(SK, src, j), s));
  for (; j < n; ++j) store_scalar(DK, dst, j, load_scalar(SK, src, j) * scale);
}

using ConvertFn = void (*)(const void*, void*, int64_t, float);

template <template <FloatKind, FloatKind> class Sel>
ConvertFn pick(FloatKind sk, FloatKind dk) {
#define SCALENN_CASE(S, D) \
  if (sk == FloatKind::S && dk == FloatKind::D) return Sel<FloatKind::S, FloatKind::D>::fn;
  SCALENN_CASE(f32, f32) SCALENN_CASE(f32, bf16) SCALENN_CASE(f32, f16)
  SCALENN_CASE(bf16, f32) SCALENN_CASE(bf16, bf16) SCALENN_CASE(bf16, f16)
  SCALENN_CASE(f16, f32) SCALENN_CASE(f16, bf16) SCALENN_CASE(f16, f16)
#undef SCALENN_CASE
  return nullptr;
}
template <FloatKind S, FloatKind D> struct Avx512Sel {
  static constexpr ConvertFn fn = &scale_convert_avx512_t<S, D>;
};
template <FloatKind S, FloatKind D> struct Avx2Sel {
  static constexpr ConvertFn fn = &scale_convert_avx2_t<S, D>;
};

void scale_convert(CpuIsa isa, FloatKind sk, const void* src, FloatKind dk, void* dst, int64_t n,
                   float scale) {
  switch (isa) {
    case CpuIsa::avx512: pick<Avx512Sel>(sk, dk)(src, dst, n, scale); break;
    case CpuIsa::avx2: pick<Avx2Sel>(sk, dk)(src, dst, n, scale); break;
    default: scale_convert_scalar(sk, src, dk, dst, n, scale);
  }
}

// ---------------- r[j] = float(src[j]) * scale + r[j], tracking max |r[j]| ----------------
// The running max of |v| is taken in the same pass that builds v, so quantizing a chunk needs
// one more pass, not two. max is exact and order-free, so every ISA gets the same amax.
struct AbsMax {
  float amax = 0.0f;
  bool nonfinite = false;
};

void scale_accumulate_scalar(FloatKind sk, const void* src, float* r, int64_t n, float scale,
                             AbsMax* m) {
  for (int64_t j = 0; j < n; ++j) {
    float p = load_scalar(sk, src, j) * scale;
    float v = p + r[j];
    r[j] = v;
    float a = std::fabs(v);
    m->nonfinite |= !(a <= FLT_MAX);
    m->amax = a > m->amax ? a : m->amax;
  }
}

SCALENN_TARGET_AVX512 void scale_accumulate_avx512(FloatKind sk, const void* src, float* r,
                                                   int64_t n, float scale, AbsMax* m) {
  const __m512 s = _mm512_set1_ps(scale), fmax = _mm512_set1_ps(FLT_MAX);
  __m512 vmax = _mm512_setzero_ps();
  __mmask16 bad = 0;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {  // full vectors unmasked; masked ops cost more on Zen
    __m512 p = _mm512_mul_ps(load16(sk, src, j, 0xffff), s);
    __m512 v = _mm512_add_ps(p, _mm512_loadu_ps(r + j));
    _mm512_storeu_ps(r + j, v);
    __m512 a = _mm512_abs_ps(v);
    bad |= _mm512_cmp_ps_mask(a, fmax, _CMP_NLE_UQ);
    vmax = _mm512_max_ps(vmax, a);
  }
  if (j < n) {
    __mmask16 k = tail_mask16(n - j);
    __m512 p = _mm512_mul_ps(load16(sk, src, j, k), s);
    __m512 v = _mm512_add_ps(p, _mm512_maskz_loadu_ps(k, r + j));  // masked-off lanes: 0
    _mm512_mask_storeu_ps(r + j, k, v);
    __m512 a = _mm512_abs_ps(v);
    bad |= _mm512_cmp_ps_mask(a, fmax, _CMP_NLE_UQ);
    vmax = _mm512_max_ps(vmax, a);
  }
  float amax = _mm512_reduce_max_ps(vmax);  // meaningless if bad, and then unused
  m->nonfinite |= bad != 0;
  m->amax = amax > m->amax ? amax : m->amax;
}

SCALENN_TARGET_AVX2 void scale_accumulate_avx2(FloatKind sk, const void* src, float* r,
                                               int64_t n, float scale, AbsMax* m) {
  const __m256 s = _mm256_set1_ps(scale), sign = _mm256_set1_ps(-0.0f);
  const __m256 fmax = _mm256_set1_ps(FLT_MAX);
  __m256 vmax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 p = _mm256_mul_ps(load8(sk, src, j), s);
    __m256 v = _mm256_add_ps(p, _mm256_loadu_ps(r + j));
    _mm256_storeu_ps(r + j, v);
    __m256 a = _mm256_andnot_ps(sign, v);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, fmax, _CMP_NLE_UQ));
    vmax = _mm256_max_ps(vmax, a);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  for (float v : lanes) m->amax = v > m->amax ? v : m->amax;
  m->nonfinite |= _mm256_movemask_ps(bad) != 0;
  scale_accumulate_scalar(sk, static_cast<const char*>(src) + j * elem_size(sk), r + j, n - j,
                          scale, m);
}

// ---------------- one chunk: quantize v (held in r) and leave the residual in r ----------------
struct ChunkScale {
  float scale;
  float inv;
  bool finite;
};

inline ChunkScale chunk_scale(float amax, bool nonfinite) {
  if (nonfinite || !(amax <= FLT_MAX))
    return {std::numeric_limits<float>::quiet_NaN(), 0.0f, false};
  return {amax / kQMax, amax > 0.0f ? kQMax / amax : 0.0f, true};
}

inline void write_poisoned(float* r, int8_t* q, int64_t C) {
  std::memset(q, 0, C);
  std::memset(r, 0, C * sizeof(float));
}

// max |r| over a chunk (when no pass that built it took it: a residual about to be stored as a
// record, or a chunk the gradients do not fully cover). max is order-free: every ISA agrees.
AbsMax chunk_absmax_scalar(const float* r, int64_t C) {
  AbsMax m;
  for (int64_t j = 0; j < C; ++j) {
    float a = std::fabs(r[j]);
    m.nonfinite |= !(a <= FLT_MAX);
    m.amax = a > m.amax ? a : m.amax;
  }
  return m;
}

SCALENN_TARGET_AVX512 AbsMax chunk_absmax_avx512(const float* r, int64_t C) {
  const __m512 fmax = _mm512_set1_ps(FLT_MAX);
  __m512 vmax = _mm512_setzero_ps();
  __mmask16 bad = 0;
  int64_t j = 0;
  for (; j + 16 <= C; j += 16) {
    __m512 a = _mm512_abs_ps(_mm512_loadu_ps(r + j));
    bad |= _mm512_cmp_ps_mask(a, fmax, _CMP_NLE_UQ);
    vmax = _mm512_max_ps(vmax, a);
  }
  AbsMax m = chunk_absmax_scalar(r + j, C - j);
  const float amax = _mm512_reduce_max_ps(vmax);
  m.nonfinite |= bad != 0;
  m.amax = amax > m.amax ? amax : m.amax;
  return m;
}

SCALENN_TARGET_AVX2 AbsMax chunk_absmax_avx2(const float* r, int64_t C) {
  const __m256 sign = _mm256_set1_ps(-0.0f), fmax = _mm256_set1_ps(FLT_MAX);
  __m256 vmax = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= C; j += 8) {
    __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(r + j));
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, fmax, _CMP_NLE_UQ));
    vmax = _mm256_max_ps(vmax, a);
  }
  AbsMax m = chunk_absmax_scalar(r + j, C - j);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vmax);
  for (float v : lanes) m.amax = v > m.amax ? v : m.amax;
  m.nonfinite |= _mm256_movemask_ps(bad) != 0;
  return m;
}

AbsMax chunk_absmax(CpuIsa isa, const float* r, int64_t C) {
  switch (isa) {
    case CpuIsa::avx512: return chunk_absmax_avx512(r, C);
    case CpuIsa::avx2: return chunk_absmax_avx2(r, C);
    default: return chunk_absmax_scalar(r, C);
  }
}

void quantize_chunk_scalar(float* r, int8_t* q, float* scale_out, int64_t C, AbsMax m) {
  ChunkScale s = chunk_scale(m.amax, m.nonfinite);
  *scale_out = s.scale;
  if (!s.finite) return write_poisoned(r, q, C);
  for (int64_t j = 0; j < C; ++j) {
    float t = std::nearbyint(r[j] * s.inv);  // default rounding mode: half to even
    t = t > kQMax ? kQMax : (t < -kQMax ? -kQMax : t);
    q[j] = static_cast<int8_t>(t);
    float lost = t * s.scale;
    r[j] = r[j] - lost;
  }
}

// The rounded value t (from an int conversion, so never -0) with x's sign: nearbyint(x) gives
// -0 for x in [-0.5, -0], and that zero's sign reaches the residual (v - (-0)*s = +0 for
// v = -0). OR-ing x's sign bit is a no-op for t != 0 (same sign as x), so every ISA and the
// reference (torch.round) agree bit for bit.
SCALENN_TARGET_AVX512 inline __m512 with_sign_of(__m512 t, __m512 x) {
  return _mm512_or_ps(t, _mm512_and_ps(x, _mm512_set1_ps(-0.0f)));
}
SCALENN_TARGET_AVX2 inline __m256 with_sign_of(__m256 t, __m256 x) {
  return _mm256_or_ps(t, _mm256_and_ps(x, _mm256_set1_ps(-0.0f)));
}

SCALENN_TARGET_AVX512 void quantize_chunk_avx512(float* r, int8_t* q, float* scale_out,
                                                 int64_t C, AbsMax m) {
  ChunkScale s = chunk_scale(m.amax, m.nonfinite);
  *scale_out = s.scale;
  if (!s.finite) return write_poisoned(r, q, C);
  const __m512 inv = _mm512_set1_ps(s.inv), sv = _mm512_set1_ps(s.scale);
  int64_t j = 0;
  for (; j + 16 <= C; j += 16) {
    __m512 v = _mm512_loadu_ps(r + j);
    __m512 x = _mm512_mul_ps(v, inv);
    __m512i i32 = _mm512_cvtps_epi32(x);  // MXCSR: round half to even
    // |v * inv| <= 127 (+ rounding) so saturation never changes a value; narrow in registers
    // (the memory form of vpmovsdb is microcoded on Zen).
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + j), _mm512_cvtsepi32_epi8(i32));
    __m512 lost = _mm512_mul_ps(with_sign_of(_mm512_cvtepi32_ps(i32), x), sv);
    _mm512_storeu_ps(r + j, _mm512_sub_ps(v, lost));
  }
  if (j < C) {
    __mmask16 k = tail_mask16(C - j);
    __m512 v = _mm512_maskz_loadu_ps(k, r + j);
    __m512 x = _mm512_mul_ps(v, inv);
    __m512i i32 = _mm512_cvtps_epi32(x);
    _mm_mask_storeu_epi8(q + j, k, _mm512_cvtsepi32_epi8(i32));
    __m512 lost = _mm512_mul_ps(with_sign_of(_mm512_cvtepi32_ps(i32), x), sv);
    _mm512_mask_storeu_ps(r + j, k, _mm512_sub_ps(v, lost));
  }
}

SCALENN_TARGET_AVX2 void quantize_chunk_avx2(float* r, int8_t* q, float* scale_out, int64_t C,
                                             AbsMax m) {
  ChunkScale s = chunk_scale(m.amax, m.nonfinite);
  *scale_out = s.scale;
  if (!s.finite) return write_poisoned(r, q, C);
  const __m256 inv = _mm256_set1_ps(s.inv), sv = _mm256_set1_ps(s.scale);
  int64_t j = 0;
  for (; j + 8 <= C; j += 8) {
    __m256 v = _mm256_loadu_ps(r + j);
    __m256 x = _mm256_mul_ps(v, inv);
    __m256i i32 = _mm256_cvtps_epi32(x);
    __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + j), _mm_packs_epi16(i16, i16));
    __m256 lost = _mm256_mul_ps(with_sign_of(_mm256_cvtepi32_ps(i32), x), sv);
    _mm256_storeu_ps(r + j, _mm256_sub_ps(v, lost));
  }
  for (; j < C; ++j) {
    float t = std::nearbyint(r[j] * s.inv);
    t = t > kQMax ? kQMax : (t < -kQMax ? -kQMax : t);
    q[j] = static_cast<int8_t>(t);
    float lost = t * s.scale;
    r[j] = r[j] - lost;
  }
}

// ---------------- out[j] = sum_w q_w[j] * s_w ----------------
inline float record_scale(const uint8_t* rec, int64_t C) {
  float s;
  std::memcpy(&s, rec + C, sizeof(float));
  return s;
}

void dequantize_sum_chunk_scalar(const uint8_t* first, int64_t W, int64_t stride, int64_t C,
                                 float* out) {
  for (int64_t j = 0; j < C; ++j) out[j] = 0.0f;
  for (int64_t w = 0; w < W; ++w) {
    const uint8_t* rec = first + w * stride;
    const int8_t* q = reinterpret_cast<const int8_t*>(rec);
    float s = record_scale(rec, C);
    for (int64_t j = 0; j < C; ++j) {
      float p = static_cast<float>(q[j]) * s;
      out[j] = out[j] + p;
    }
  }
}

SCALENN_TARGET_AVX512 void dequantize_sum_chunk_avx512(const uint8_t* first, int64_t W,
                                                       int64_t stride, int64_t C, float* out) {
  int64_t j = 0;
  for (; j + 16 <= C; j += 16) {  // full vectors unmasked; masked ops cost more on Zen
    __m512 acc = _mm512_setzero_ps();
    for (int64_t w = 0; w < W; ++w) {
      const uint8_t* rec = first + w * stride;
      __m128i q8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rec + j));
      __m512 qf = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q8));
      acc = _mm512_add_ps(acc, _mm512_mul_ps(qf, _mm512_set1_ps(record_scale(rec, C))));
    }
    _mm512_storeu_ps(out + j, acc);
  }
  if (j < C) {
    __mmask16 m = tail_mask16(C - j);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t w = 0; w < W; ++w) {
      const uint8_t* rec = first + w * stride;
      __m512 qf = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, rec + j)));
      acc = _mm512_add_ps(acc, _mm512_mul_ps(qf, _mm512_set1_ps(record_scale(rec, C))));
    }
    _mm512_mask_storeu_ps(out + j, m, acc);
  }
}

SCALENN_TARGET_AVX2 void dequantize_sum_chunk_avx2(const uint8_t* first, int64_t W,
                                                   int64_t stride, int64_t C, float* out) {
  int64_t j = 0;
  for (; j + 8 <= C; j += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t w = 0; w < W; ++w) {
      const uint8_t* rec = first + w * stride;
      __m256i i32 = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(rec + j)));
      acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(i32),
                                             _mm256_set1_ps(record_scale(rec, C))));
    }
    _mm256_storeu_ps(out + j, acc);
  }
  for (; j < C; ++j) {
    float acc = 0.0f;
    for (int64_t w = 0; w < W; ++w) {
      const uint8_t* rec = first + w * stride;
      float p = static_cast<float>(reinterpret_cast<const int8_t*>(rec)[j]) * record_scale(rec, C);
      acc = acc + p;
    }
    out[j] = acc;
  }
}

void dequantize_sum_chunk(CpuIsa isa, const uint8_t* first, int64_t W, int64_t stride, int64_t C,
                          float* out) {
  switch (isa) {
    case CpuIsa::avx512: dequantize_sum_chunk_avx512(first, W, stride, C, out); break;
    case CpuIsa::avx2: dequantize_sum_chunk_avx2(first, W, stride, C, out); break;
    default: dequantize_sum_chunk_scalar(first, W, stride, C, out);
  }
}

void scale_accumulate(CpuIsa isa, FloatKind sk, const void* src, float* r, int64_t n,
                      float scale, AbsMax* m) {
  switch (isa) {
    case CpuIsa::avx512: scale_accumulate_avx512(sk, src, r, n, scale, m); break;
    case CpuIsa::avx2: scale_accumulate_avx2(sk, src, r, n, scale, m); break;
    default: scale_accumulate_scalar(sk, src, r, n, scale, m);
  }
}

// Quantizes v (held in r, max |v| known) into record `rec`; r becomes the residual.
void quantize_chunk_to_record(CpuIsa isa, float* r, uint8_t* rec, int64_t C, AbsMax m) {
  int8_t* q = reinterpret_cast<int8_t*>(rec);
  float s;
  switch (isa) {
    case CpuIsa::avx512: quantize_chunk_avx512(r, q, &s, C, m); break;
    case CpuIsa::avx2: quantize_chunk_avx2(r, q, &s, C, m); break;
    default: quantize_chunk_scalar(r, q, &s, C, m);
  }
  std::memcpy(rec + C, &s, sizeof(float));
}

// Chunk c's residual as floats: its slot of the float array, or its record dequantized into
// `scratch`.
float* load_residual(CpuIsa isa, Residual residual, int64_t c, int64_t C, float* scratch) {
  if (residual.values != nullptr) return residual.values + c * C;
  dequantize_sum_chunk(isa, residual.records + c * (C + 4), 1, 0, C, scratch);
  return scratch;
}

// After quantize_chunk_to_record left chunk c's new residual in r: a record residual stores it
// quantized (a float one already holds it).
void store_residual(CpuIsa isa, Residual residual, int64_t c, int64_t C, float* r) {
  if (residual.records != nullptr)
    quantize_chunk_to_record(isa, r, residual.records + c * (C + 4), C, chunk_absmax(isa, r, C));
}

}  // namespace

void bucket_pack_range(CpuIsa isa, const BucketSegment* segs, int64_t nseg, FloatKind flat_kind,
                       void* flat, float scale, int64_t begin, int64_t end) {
  const size_t fe = elem_size(flat_kind);
  for_each_piece(segs, nseg, begin, end, [&](const BucketSegment& s, int64_t in_seg, int64_t at,
                                             int64_t n) {
    const char* src = static_cast<const char*>(s.data) + in_seg * elem_size(s.kind);
    scale_convert(isa, s.kind, src, flat_kind, static_cast<char*>(flat) + at * fe, n, scale);
  });
}

void bucket_unpack_range(CpuIsa isa, const BucketSegment* segs, int64_t nseg, FloatKind flat_kind,
                         const void* flat, float scale, int64_t begin, int64_t end) {
  const size_t fe = elem_size(flat_kind);
  for_each_piece(segs, nseg, begin, end, [&](const BucketSegment& s, int64_t in_seg, int64_t at,
                                             int64_t n) {
    char* dst = static_cast<char*>(s.data) + in_seg * elem_size(s.kind);
    scale_convert(isa, flat_kind, static_cast<const char*>(flat) + at * fe, s.kind, dst, n, scale);
  });
}

void bucket_quantize_int8_chunks(CpuIsa isa, const BucketSegment* segs, int64_t nseg, float scale,
                                 Residual residual, uint8_t* records, int64_t C,
                                 int64_t chunk_begin, int64_t chunk_end) {
  std::vector<float> scratch(residual.values != nullptr ? 0 : C);
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    float* r = load_residual(isa, residual, c, C, scratch.data());
    // v = grad * scale + residual, built in the chunk's residual slot (stays in L1 for the
    // quantization pass right after), with max |v| taken on the way.
    AbsMax m;
    int64_t covered = 0;
    for_each_piece(segs, nseg, c * C, (c + 1) * C, [&](const BucketSegment& s, int64_t in_seg,
                                                       int64_t at, int64_t n) {
      const char* src = static_cast<const char*>(s.data) + in_seg * elem_size(s.kind);
      scale_accumulate(isa, s.kind, src, r + (at - c * C), n, scale, &m);
      covered += n;
    });
    // Chunks partly or not covered by gradients (the bucket's tail: flags, padding) hold
    // values the pass above did not see: take their max separately.
    if (covered != C) m = chunk_absmax(isa, r, C);
    quantize_chunk_to_record(isa, r, records + c * (C + 4), C, m);
    store_residual(isa, residual, c, C, r);
  }
}

void bucket_unpack_int8_chunks(CpuIsa isa, const BucketSegment* segs, int64_t nseg,
                               const uint8_t* records, int64_t W, int64_t nchunks, int64_t C,
                               int64_t chunk_begin, int64_t chunk_end) {
  std::vector<float> chunk(C);  // one chunk of dequantized values, hot in L1
  const int64_t stride = nchunks * (C + 4);
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    dequantize_sum_chunk(isa, records + c * (C + 4), W, stride, C, chunk.data());
    for_each_piece(segs, nseg, c * C, (c + 1) * C, [&](const BucketSegment& s, int64_t in_seg,
                                                       int64_t at, int64_t n) {
      char* dst = static_cast<char*>(s.data) + in_seg * elem_size(s.kind);
      scale_convert(isa, FloatKind::f32, chunk.data() + (at - c * C), s.kind, dst, n, 1.0f);
    });
  }
}

void bucket_requantize_int8_chunks(CpuIsa isa, const uint8_t* records, int64_t W, int64_t nchunks,
                                   int64_t C, Residual residual, uint8_t* out, int64_t chunk_begin,
                                   int64_t chunk_end) {
  std::vector<float> sum(C), scratch(residual.values != nullptr ? 0 : C);
  const int64_t stride = nchunks * (C + 4);
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    float* r = load_residual(isa, residual, c, C, scratch.data());
    dequantize_sum_chunk(isa, records + c * (C + 4), W, stride, C, sum.data());
    AbsMax m;
    scale_accumulate(isa, FloatKind::f32, sum.data(), r, C, 1.0f, &m);  // v = sum * 1 + residual
    quantize_chunk_to_record(isa, r, out + c * (C + 4), C, m);
    store_residual(isa, residual, c, C, r);
  }
}

void bucket_dequantize_sum_chunks(CpuIsa isa, const uint8_t* records, int64_t W, int64_t nchunks,
                                  int64_t C, float* out, int64_t chunk_begin, int64_t chunk_end) {
  const int64_t rec_bytes = C + 4, stride = nchunks * rec_bytes;
  for (int64_t c = chunk_begin; c < chunk_end; ++c)
    dequantize_sum_chunk(isa, records + c * rec_bytes, W, stride, C, out + c * C);
}

}  // namespace scalenn::cpu
