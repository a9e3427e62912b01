// Loading fp32/bf16/fp16 as fp32 and storing fp32 as any of them, per ISA level.
// Rounding is IEEE round-to-nearest-even everywhere, so every ISA path and torch's own
// conversions give bit-identical results.
#pragma once

#include <immintrin.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

#include "isa.h"

namespace scalenn::cpu {

enum class FloatKind : int { f32 = 0, bf16 = 1, f16 = 2 };

// ---- portable ----
inline float load_scalar(FloatKind kind, const void* base, int64_t i) {
  switch (kind) {
    case FloatKind::bf16: return static_cast<float>(static_cast<const c10::BFloat16*>(base)[i]);
    case FloatKind::f16: return static_cast<float>(static_cast<const c10::Half*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

inline void store_scalar(FloatKind kind, void* base, int64_t i, float v) {
  switch (kind) {
    case FloatKind::bf16: static_cast<c10::BFloat16*>(base)[i] = c10::BFloat16(v); break;
    case FloatKind::f16: static_cast<c10::Half*>(base)[i] = c10::Half(v); break;
    default: static_cast<float*>(base)[i] = v;
  }
}

// ---- AVX-512: 16 lanes ----
// Full vectors use plain loads/stores; the `mask` overloads are for tails only (on Zen 5,
// masked memory operations in a main loop cost several times a plain one).
SCALENN_TARGET_AVX512 inline __m512 load16(FloatKind kind, const void* base, int64_t i) {
  switch (kind) {
    case FloatKind::bf16: {
      __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
          static_cast<const uint16_t*>(base) + i));
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case FloatKind::f16: {
      __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
          static_cast<const uint16_t*>(base) + i));
      return _mm512_cvtph_ps(h);
    }
    default: return _mm512_loadu_ps(static_cast<const float*>(base) + i);
  }
}

SCALENN_TARGET_AVX512 inline __m512 load16(FloatKind kind, const void* base, int64_t i,
                                           __mmask16 mask) {
  switch (kind) {
    case FloatKind::bf16: {
      __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(base) + i);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case FloatKind::f16: {
      __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(base) + i);
      return _mm512_cvtph_ps(h);
    }
    default: return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(base) + i);
  }
}

SCALENN_TARGET_AVX512 inline __m256i fp32_to_bf16_avx512(__m512 v) {
  __m512i bits = _mm512_castps_si512(v);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), lsb);
  __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7fc00000));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
}

SCALENN_TARGET_AVX512 inline void store16(FloatKind kind, void* base, int64_t i, __m512 v) {
  switch (kind) {
    case FloatKind::bf16:
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(base) + i),
                          fp32_to_bf16_avx512(v));
      break;
    case FloatKind::f16:
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(base) + i),
                          _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    default: _mm512_storeu_ps(static_cast<float*>(base) + i, v);
  }
}

SCALENN_TARGET_AVX512 inline void store16(FloatKind kind, void* base, int64_t i, __m512 v,
                                          __mmask16 mask) {
  switch (kind) {
    case FloatKind::bf16:
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(base) + i, mask, fp32_to_bf16_avx512(v));
      break;
    case FloatKind::f16:
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(base) + i, mask,
                               _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    default: _mm512_mask_storeu_ps(static_cast<float*>(base) + i, mask, v);
  }
}

SCALENN_TARGET_AVX512 inline __mmask16 tail_mask16(int64_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xffff)
                         : static_cast<__mmask16>((1u << remaining) - 1u);
}

// ---- AVX2: 8 full lanes (tails go through the portable functions) ----
SCALENN_TARGET_AVX2 inline __m256 load8(FloatKind kind, const void* base, int64_t i) {
  switch (kind) {
    case FloatKind::bf16: {
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(
          static_cast<const uint16_t*>(base) + i));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case FloatKind::f16: {
      __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(
          static_cast<const uint16_t*>(base) + i));
      return _mm256_cvtph_ps(h);
    }
    default: return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  }
}

SCALENN_TARGET_AVX2 inline void store8(FloatKind kind, void* base, int64_t i, __m256 v) {
  switch (kind) {
    case FloatKind::bf16: {
      __m256i bits = _mm256_castps_si256(v);
      __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
      __m256i r = _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), lsb);
      __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc00000), nan);
      r = _mm256_srli_epi32(r, 16);
      __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(base) + i),
                       _mm256_castsi256_si128(packed));
      break;
    }
    case FloatKind::f16:
      _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(base) + i),
                       _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      break;
    default: _mm256_storeu_ps(static_cast<float*>(base) + i, v);
  }
}

}  // namespace scalenn::cpu
