#include "sparse_int8_kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "int8_gemm_kernels.h"  // packed_k: the activation row stride shared with Int8Linear

namespace scalenn::cpu {
namespace {

constexpr int64_t kChunk = kEntriesPerChunk;

inline bool is_quad(SparseInt8Format f) { return f == SparseInt8Format::quad; }

// ============================== packing ==============================
inline bool group_nonzero(const int8_t* row, int64_t K, int64_t g) {
  for (int64_t k = 4 * g; k < std::min(K, 4 * g + 4); ++k)
    if (row[k] != 0) return true;
  return false;
}

// The packers walk the weight once to count chunks (values == nullptr) and once more to fill
// them (starting at chunk `first`): one walk for both passes, so count and fill cannot disagree.

// quad: row n's nonzero groups; a chunk starts on a 16-group boundary and spans <= 256 groups.
int64_t walk_quad_row(const int8_t* row, int64_t K, int64_t first, int8_t* values, uint8_t* rel,
                      uint16_t* base) {
  int64_t chunks = 0, slot = kChunk, chunk_base = 0;
  auto close_chunk = [&] {  // pad the open chunk with zero-weight entries at rel 0
    if (values == nullptr || chunks == 0) return;
    const int64_t c = first + chunks - 1;
    std::memset(rel + c * kChunk + slot, 0, kChunk - slot);
    std::memset(values + (c * kChunk + slot) * 4, 0, (kChunk - slot) * 4);
  };
  for (int64_t u = 0; u < (K + 3) / 4; ++u) {
    if (!group_nonzero(row, K, u)) continue;
    if (slot == kChunk || u - chunk_base > kMaxRel) {
      close_chunk();
      ++chunks;
      slot = 0;
      chunk_base = u / 16 * 16;
      if (values != nullptr) base[first + chunks - 1] = static_cast<uint16_t>(chunk_base);
    }
    if (values != nullptr) {
      const int64_t e = (first + chunks - 1) * kChunk + slot;
      rel[e] = static_cast<uint8_t>(u - chunk_base);
      for (int64_t j = 0; j < 4; ++j) values[e * 4 + j] = 4 * u + j < K ? row[4 * u + j] : 0;
    }
    ++slot;
  }
  close_chunk();
  return chunks;
}

// elem16: group g's rows advance through their nonzeros independently; each step's base is the
// lowest next column of any row, rounded down to 64 columns, and each row takes up to
// kElemSlots of its next nonzeros below base + kElemSpan (see the header).
int64_t walk_elem16_group(const int8_t* w, const int32_t* order, int64_t N, int64_t K, int64_t g,
                          int64_t first, int8_t* values, uint8_t* rel, uint16_t* base) {
  const int8_t* rows[kElemRows];  // the group's rows of w (nullptr: padding past N)
  for (int64_t r = 0; r < kElemRows; ++r)
    rows[r] = kElemRows * g + r < N ? w + int64_t(order[kElemRows * g + r]) * K : nullptr;
  int64_t next[kElemRows];  // next nonzero column of each row (K: none left)
  auto advance = [&](int64_t r, int64_t from) {
    if (rows[r] == nullptr) return K;
    while (from < K && rows[r][from] == 0) ++from;
    return from;
  };
  for (int64_t r = 0; r < kElemRows; ++r) next[r] = advance(r, 0);
  int64_t steps = 0;
  for (;;) {
    const int64_t lowest = *std::min_element(next, next + kElemRows);
    if (lowest >= K) break;
    const int64_t step_base = lowest / 64 * 16;  // in units of 4 columns
    const int64_t end = std::min(K, 4 * step_base + kElemSpan);  // next[r] == K: row done
    const int64_t e0 = (first + kElemRows * steps) * kElemSlots;  // the step's first entry
    if (values != nullptr) base[first / kElemRows + steps] = static_cast<uint16_t>(step_base);
    for (int64_t r = 0; r < kElemRows; ++r) {
      int64_t slot = 0;
      for (; slot < kElemSlots && next[r] < end; ++slot) {
        if (values != nullptr) {
          rel[e0 + kElemSlots * r + slot] = static_cast<uint8_t>(next[r] - 4 * step_base);
          values[e0 + kElemSlots * r + slot] = rows[r][next[r]];
        }
        next[r] = advance(r, next[r] + 1);
      }
      for (; values != nullptr && slot < kElemSlots; ++slot) {  // zero-weight padding at rel 0
        rel[e0 + kElemSlots * r + slot] = 0;
        values[e0 + kElemSlots * r + slot] = 0;
      }
    }
    ++steps;
  }
  return kElemRows * steps;
}

// Row n's chunks: chunk i is first + i * stride (quad: a contiguous run of 16-entry chunks;
// elem16: its 4 entries of each step of its group).
struct RowChunks {
  int64_t first, count, stride;
};

inline RowChunks row_chunks(const SparseInt8Weight& w, int64_t n) {
  if (is_quad(w.format)) return {w.row_offsets[n], w.row_offsets[n + 1] - w.row_offsets[n], 1};
  const int64_t g0 = n / kElemRows * kElemRows;
  const int64_t begin = w.row_offsets[g0], end = w.row_offsets[std::min(g0 + kElemRows, w.N)];
  return {begin + n % kElemRows, (end - begin) / kElemRows, kElemRows};
}

inline int64_t chunk_base(const SparseInt8Weight& w, int64_t c) {
  return w.base[c / w.chunks_per_base()];
}

// An elem16 group's steps: [row_offsets[16g], row_offsets[min(16g + 16, N)]) / 16.
inline void group_steps(const SparseInt8Weight& w, int64_t g, int64_t* s_begin, int64_t* s_end) {
  *s_begin = w.row_offsets[kElemRows * g] / kElemRows;
  *s_end = w.row_offsets[std::min(kElemRows * g + kElemRows, w.N)] / kElemRows;
}

// ============================== bounds check ==============================
SCALENN_TARGET_AVX512 uint16_t max_u16_avx512(const uint16_t* v, int64_t n) {
  __m512i m = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) m = _mm512_max_epu16(m, _mm512_loadu_si512(v + i));
  m = _mm512_max_epu16(m, _mm512_maskz_loadu_epi16(_cvtu32_mask32((1u << (n - i)) - 1), v + i));
  __m256i h = _mm256_max_epu16(_mm512_castsi512_si256(m), _mm512_extracti64x4_epi64(m, 1));
  __m128i q = _mm_max_epu16(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
  // max(x) = 0xFFFF - min(0xFFFF - x); _mm_minpos_epu16 finds the minimum of 8 u16 lanes.
  q = _mm_minpos_epu16(_mm_xor_si128(q, _mm_set1_epi16(-1)));
  return static_cast<uint16_t>(0xFFFF - _mm_extract_epi16(q, 0));
}

SCALENN_TARGET_AVX2 uint16_t max_u16_avx2(const uint16_t* v, int64_t n) {
  __m256i m = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    m = _mm256_max_epu16(m, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + i)));
  __m128i q = _mm_max_epu16(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
  q = _mm_minpos_epu16(_mm_xor_si128(q, _mm_set1_epi16(-1)));
  uint16_t best = static_cast<uint16_t>(0xFFFF - _mm_extract_epi16(q, 0));
  for (; i < n; ++i) best = std::max(best, v[i]);
  return best;
}

// ============================== AVX-512 VNNI ==============================
// Result of packed row p for token m.
inline void write_result(const SparseInt8Weight& w, const SparseInt8Problem& pr, int64_t m,
                         int64_t p, int32_t acc) {
  const int64_t n = w.row_order[p];
  if (pr.out_s32 != nullptr) {
    pr.out_s32[m * w.N + n] = acc;
    return;
  }
  pr.out[m * w.N + n] = std::fma(static_cast<float>(acc), pr.row_scale[m] * pr.w_scale[n],
                                 pr.bias ? pr.bias[n] : 0.0f);
}

// Where an elem16 group's results go: lane r = packed row p0 + r (rows < N), output row
// row_order[p0 + r], its weight scale and bias, gathered once per group; `in_order` when those
// are rows p0..p0+15 themselves (contiguous stores instead of a scatter).
struct GroupOut {
  __mmask16 rows;
  bool in_order;
  __m512i n;
  __m512 w_scale, bias;
};

SCALENN_TARGET_AVX512 inline GroupOut group_out(const SparseInt8Weight& w,
                                                const SparseInt8Problem& pr, int64_t p0) {
  GroupOut o;
  o.rows = static_cast<__mmask16>((1u << std::min<int64_t>(kElemRows, w.N - p0)) - 1);
  o.n = _mm512_maskz_loadu_epi32(o.rows, w.row_order + p0);
  const __m512i own = _mm512_add_epi32(
      _mm512_set1_epi32(static_cast<int32_t>(p0)),
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  o.in_order = _mm512_mask_cmpneq_epi32_mask(o.rows, o.n, own) == 0;
  o.w_scale = o.bias = _mm512_setzero_ps();
  if (pr.out_s32 == nullptr) {
    o.w_scale = _mm512_mask_i32gather_ps(o.w_scale, o.rows, o.n, pr.w_scale, 4);
    if (pr.bias) o.bias = _mm512_mask_i32gather_ps(o.bias, o.rows, o.n, pr.bias, 4);
  }
  return o;
}

// Token m's results of the group (lane r = packed row p0 + r) with write_result's epilogue,
// stored to their output rows.
SCALENN_TARGET_AVX512 inline void write_group(const SparseInt8Weight& w,
                                              const SparseInt8Problem& pr, const GroupOut& o,
                                              int64_t m, int64_t p0, __m512i sums) {
  if (pr.out_s32 != nullptr) {
    if (o.in_order)
      _mm512_mask_storeu_epi32(pr.out_s32 + m * w.N + p0, o.rows, sums);
    else
      _mm512_mask_i32scatter_epi32(pr.out_s32 + m * w.N, o.rows, o.n, sums, 4);
    return;
  }
  const __m512 scale = _mm512_mul_ps(_mm512_set1_ps(pr.row_scale[m]), o.w_scale);
  const __m512 y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, o.bias);
  if (o.in_order)
    _mm512_mask_storeu_ps(pr.out + m * w.N + p0, o.rows, y);
  else
    _mm512_mask_i32scatter_ps(pr.out + m * w.N, o.rows, o.n, y, 4);
}

// Sum of the 4 int32 lanes of each 128-bit lane of v, in that lane's first dword.
SCALENN_TARGET_AVX512 inline __m512i sum_lane_quads(__m512i v) {
  v = _mm512_add_epi32(v, _mm512_shuffle_epi32(v, _MM_PERM_BADC));
  return _mm512_add_epi32(v, _mm512_shuffle_epi32(v, _MM_PERM_CDAB));
}

// A superset of SCALENN_TARGET_AVX512 (f16c included), so GCC inlines the AVX-512 helpers
// (group_out, write_group) into the VBMI kernels: with a different set it silently called them,
// once per group and token (M = 128: 2.27 -> 2.12 ms at 4096 x 4096, 90%, 1 thread).
#define SCALENN_TARGET_AVX512_VBMI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,avx2,fma,f16c,bmi2")))

// One elem16 step for MT tokens: its 64 entries lie within kElemSpan = 128 columns of 4 * base,
// so the 128 activation bytes there (2 aligned zmm loads from L1) are the table of one vpermt2b
// that picks the 64 activations, and one vpdpbusd multiplies them with the 64 weights, row r's 4
// products summed into dword lane r. (256-column windows needed a second vpermt2b and a blend
// per token: 2.27 instead of 2.55 bytes per kept weight, but M = 16 0.53 instead of 0.40 ms.)
static_assert(kElemSpan == 128, "the window kernel looks up one 128-byte vpermt2b table");
template <int MT>
SCALENN_TARGET_AVX512_VBMI inline void elem16_step(const SparseInt8Weight& w, const uint8_t* x0,
                                                   int64_t Kp, int64_t s, __m512i* wsum,
                                                   __m512i (&acc)[MT]) {
  // Into L2, 64 steps (8 KiB) ahead. 4096 x 4096, 90%, interleaved A/B, 1 thread: M = 4 0.214
  // -> 0.168 ms, M = 16 0.413 -> 0.357 ms, M = 1 unchanged (the hardware prefetchers alone
  // left the first token pass over a block of groups waiting on memory); 16 steps ahead was
  // too late, 128 no better.
  // (A prefetch past the end of the arrays is harmless: it never faults.)
  _mm_prefetch(reinterpret_cast<const char*>(w.rel + (s + 64) * w.step_bytes), _MM_HINT_T1);
  _mm_prefetch(reinterpret_cast<const char*>(w.values + (s + 64) * w.step_bytes), _MM_HINT_T1);
  const __m512i idx = _mm512_loadu_si512(w.rel + s * w.step_bytes);
  const __m512i wv = _mm512_loadu_si512(w.values + s * w.step_bytes);
  *wsum = _mm512_dpbusd_epi32(*wsum, _mm512_set1_epi8(1), wv);
  const uint8_t* xs = x0 + 4 * int64_t(w.base[s]);
#pragma GCC unroll 16
  for (int t = 0; t < MT; ++t) {
    const uint8_t* x = xs + t * Kp;
    const __m512i picked = _mm512_permutex2var_epi8(_mm512_loadu_si512(x), idx,
                                                    _mm512_loadu_si512(x + 64));
    acc[t] = _mm512_dpbusd_epi32(acc[t], picked, wv);
  }
}

// Window kernel (elem16, tokens m0..m0+MT-1, groups [g0, g1), needs AVX512_VBMI). With few
// tokens, SETS accumulator sets on consecutive steps hide vpdpbusd's latency.
template <int MT, int SETS>
SCALENN_TARGET_AVX512_VBMI void elem16_window_avx512(const SparseInt8Weight& w,
                                                     const SparseInt8Problem& pr, int64_t m0,
                                                     int64_t g0, int64_t g1) {
  const int64_t Kp = packed_k(w.K);
  const uint8_t* x0 = pr.a + m0 * Kp;
  for (int64_t g = g0; g < g1; ++g) {
    int64_t s, s_end;
    group_steps(w, g, &s, &s_end);
    __m512i acc[SETS][MT], wsum[SETS];
#pragma GCC unroll 4
    for (int u = 0; u < SETS; ++u) {
      wsum[u] = _mm512_setzero_si512();
#pragma GCC unroll 16
      for (int t = 0; t < MT; ++t) acc[u][t] = _mm512_setzero_si512();
    }
    for (; s + SETS <= s_end; s += SETS) {
#pragma GCC unroll 4
      for (int u = 0; u < SETS; ++u) elem16_step<MT>(w, x0, Kp, s + u, &wsum[u], acc[u]);
    }
    for (; s < s_end; ++s) elem16_step<MT>(w, x0, Kp, s, &wsum[0], acc[0]);
#pragma GCC unroll 4
    for (int u = 1; u < SETS; ++u) {
      wsum[0] = _mm512_add_epi32(wsum[0], wsum[u]);
#pragma GCC unroll 16
      for (int t = 0; t < MT; ++t) acc[0][t] = _mm512_add_epi32(acc[0][t], acc[u][t]);
    }
    // u8 activations are q + 128: subtract 128 * (each row's weights).
    const __m512i comp = _mm512_slli_epi32(wsum[0], 7);
    const GroupOut out = group_out(w, pr, kElemRows * g);
#pragma GCC unroll 16
    for (int t = 0; t < MT; ++t)
      write_group(w, pr, out, m0 + t, kElemRows * g, _mm512_sub_epi32(acc[0][t], comp));
  }
}

// Rows [n0, n1) for every token with the window kernel, in passes of up to 8 tokens over
// blocks of 16 groups, whose weights stay in L2 across the passes; 8 tokens' activation rows
// (32 KiB at K = 4096) stay in L1. (Measured at 4096 x 4096, 90%, interleaved, weights from
// memory: 8-token passes against 6: M = 8-16 -8-21%, M = 32-128 -1-8% on 1 and 2 threads,
// since the stream layout and prefetch (before them 8 lost at M = 128); 6 against 4: M = 16
// -8-9%; 16-token passes lost everywhere; blocks of 4 or 64 groups 5-10%.)
SCALENN_TARGET_AVX512_VBMI void elem16_window_rows_avx512(const SparseInt8Weight& w,
                                                          const SparseInt8Problem& pr,
                                                          int64_t n0, int64_t n1) {
  const int64_t g_end = (n1 + kElemRows - 1) / kElemRows;
  for (int64_t g0 = n0 / kElemRows; g0 < g_end; g0 += 16) {
    const int64_t g1 = std::min(g_end, g0 + 16);
    for (int64_t m0 = 0; m0 < pr.M;) {
      switch (std::min<int64_t>(8, pr.M - m0)) {
        case 1: elem16_window_avx512<1, 2>(w, pr, m0, g0, g1); m0 += 1; break;
        case 2: elem16_window_avx512<2, 2>(w, pr, m0, g0, g1); m0 += 2; break;
        case 3: elem16_window_avx512<3, 1>(w, pr, m0, g0, g1); m0 += 3; break;
        case 4: elem16_window_avx512<4, 2>(w, pr, m0, g0, g1); m0 += 4; break;
        case 5: elem16_window_avx512<5, 1>(w, pr, m0, g0, g1); m0 += 5; break;
        case 6:
        case 7: elem16_window_avx512<6, 1>(w, pr, m0, g0, g1); m0 += 6; break;
        default: elem16_window_avx512<8, 1>(w, pr, m0, g0, g1); m0 += 8;
      }
    }
  }
}

// Gather kernel (elem16, few tokens; the fallback for AVX-512 CPUs without VBMI): per step and
// token, 4 vpgatherdd (16 entries = rows 4q..4q+3 each) load the aligned dword holding each
// entry's activation (its group of 4 columns; unaligned byte-offset gathers were 3x slower on
// Zen 5), and the entry's weight is shifted to the byte of its column within that dword.
template <int MT>
SCALENN_TARGET_AVX512 void elem16_gather_avx512(const SparseInt8Weight& w,
                                                const SparseInt8Problem& pr, int64_t m0,
                                                int64_t n0, int64_t n1) {
  const int64_t Kp = packed_k(w.K);
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t g = n0 / kElemRows; g < (n1 + kElemRows - 1) / kElemRows; ++g) {
    int64_t s, s_end;
    group_steps(w, g, &s, &s_end);
    __m512i acc[MT][4], wsum[4];
    for (int q = 0; q < 4; ++q) {
      wsum[q] = _mm512_setzero_si512();
      for (int t = 0; t < MT; ++t) acc[t][q] = _mm512_setzero_si512();
    }
    for (; s < s_end; ++s) {
      const __m512i b = _mm512_set1_epi32(4 * int32_t(w.base[s]));
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        const int64_t e = s * w.step_bytes + 16 * q;
        const __m512i col = _mm512_add_epi32(
            _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.rel + e))), b);
        const __m512i byte_shift = _mm512_slli_epi32(_mm512_and_si512(col, _mm512_set1_epi32(3)), 3);
        const __m512i wd = _mm512_sllv_epi32(
            _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.values + e))),
            byte_shift);
        const __m512i group = _mm512_srli_epi32(col, 2);
        wsum[q] = _mm512_dpbusd_epi32(wsum[q], ones, wd);
#pragma GCC unroll 2
        for (int t = 0; t < MT; ++t)
          acc[t][q] = _mm512_dpbusd_epi32(
              acc[t][q], _mm512_i32gather_epi32(group, pr.a + (m0 + t) * Kp, 4), wd);
      }
    }
    const GroupOut out = group_out(w, pr, kElemRows * g);
    for (int t = 0; t < MT; ++t) {
      // Lane j of acc[t][q] belongs to row 4q + j / 4: sum each 128-bit lane, then gather the
      // four sums of each q into lanes 4q..4q+3.
      __m512i rows = _mm512_setzero_si512();
      for (int q = 0; q < 4; ++q) {
        const __m512i v = sum_lane_quads(_mm512_sub_epi32(acc[t][q], _mm512_slli_epi32(wsum[q], 7)));
        rows = _mm512_mask_expand_epi32(rows, static_cast<__mmask16>(0xF << (4 * q)),
                                        _mm512_maskz_compress_epi32(0x1111, v));
      }
      write_group(w, pr, out, m0 + t, kElemRows * g, rows);
    }
  }
}

// Quad window kernel (few tokens, AVX-512F): a quad chunk's entries lie within 256 groups of its
// base, whose activations (1 KiB, 16 aligned zmm loads from L1: the packer starts quad chunks
// on 16-group boundaries) are a lookup table of 256 dwords: 8 vpermt2d cover 32 dwords each
// and a tree of 7 blends on bits 5-7 of rel picks the right one. On Zen 5 this is several
// times cheaper than the 16-lane vpgatherdd it replaces.
template <int MT>
SCALENN_TARGET_AVX512 inline void quad_window_chunk(const SparseInt8Weight& w,
                                                    const SparseInt8Problem& pr, int64_t m0,
                                                    int64_t Kp, int64_t c, __m512i* wsum,
                                                    __m512i (&acc)[MT]) {
  const __m512i idx = _mm512_cvtepu8_epi32(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.rel + c * kChunk)));
  const __m512i wd = _mm512_loadu_si512(w.values + c * kChunk * 4);
  const __mmask16 b5 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(32));
  const __mmask16 b6 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(64));
  const __mmask16 b7 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(128));
  *wsum = _mm512_dpbusd_epi32(*wsum, _mm512_set1_epi8(1), wd);
#pragma GCC unroll 4
  for (int t = 0; t < MT; ++t) {
    const uint8_t* x = pr.a + (m0 + t) * Kp + 4 * int64_t(w.base[c]);
    __m512i r[8];
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j)
      r[j] = _mm512_permutex2var_epi32(_mm512_loadu_si512(x + 128 * j), idx,
                                       _mm512_loadu_si512(x + 128 * j + 64));
    const __m512i lo = _mm512_mask_blend_epi32(b6, _mm512_mask_blend_epi32(b5, r[0], r[1]),
                                               _mm512_mask_blend_epi32(b5, r[2], r[3]));
    const __m512i hi = _mm512_mask_blend_epi32(b6, _mm512_mask_blend_epi32(b5, r[4], r[5]),
                                               _mm512_mask_blend_epi32(b5, r[6], r[7]));
    acc[t] = _mm512_dpbusd_epi32(acc[t], _mm512_mask_blend_epi32(b7, lo, hi), wd);
  }
}

// The same row driver as window_rows_avx512, kept separate because that one is compiled for
// AVX512_VBMI and this one must run on AVX-512 CPUs without it.
template <int MT>
SCALENN_TARGET_AVX512 void quad_window_rows_avx512(const SparseInt8Weight& w,
                                                   const SparseInt8Problem& pr, int64_t m0,
                                                   int64_t n0, int64_t n1) {
  const int64_t Kp = packed_k(w.K);
  for (int64_t n = n0; n < n1; ++n) {
    __m512i even[MT], odd[MT], wsum_even = _mm512_setzero_si512(), wsum_odd = wsum_even;
    for (int t = 0; t < MT; ++t) even[t] = odd[t] = _mm512_setzero_si512();
    const int64_t end = w.row_offsets[n + 1];
    int64_t c = w.row_offsets[n];
    for (; c + 1 < end; c += 2) {
      quad_window_chunk<MT>(w, pr, m0, Kp, c, &wsum_even, even);
      quad_window_chunk<MT>(w, pr, m0, Kp, c + 1, &wsum_odd, odd);
    }
    if (c < end) quad_window_chunk<MT>(w, pr, m0, Kp, c, &wsum_even, even);
    const int32_t comp = -128 * _mm512_reduce_add_epi32(_mm512_add_epi32(wsum_even, wsum_odd));
    for (int t = 0; t < MT; ++t)
      write_result(w, pr, m0 + t, n,
                   _mm512_reduce_add_epi32(_mm512_add_epi32(even[t], odd[t])) + comp);
  }
}

// Epilogue of one panel: acc [rows][P] int32 (rows n0..n1-1; token t of the panel in slot
// slot_of(t)) -> y rows p*P + t < M, walking y row by row so the writes are contiguous
// (scattering 16 tokens straight into y [M, N] touched 16 pages per store and cost more than
// the products).
template <class SlotOf>
void write_panel(const SparseInt8Weight& w, const SparseInt8Problem& pr, const int32_t* acc,
                 int64_t P, int64_t p, int64_t n0, int64_t n1, SlotOf slot_of) {
  for (int64_t t = 0; t < P && p * P + t < pr.M; ++t) {
    const int64_t m = p * P + t, slot = slot_of(t);
    for (int64_t n = n0; n < n1; ++n) write_result(w, pr, m, n, acc[(n - n0) * P + slot]);
  }
}

// Per-thread accumulator scratch [rows][P] for the panel kernels.
int32_t* panel_scratch(int64_t size) {
  thread_local std::vector<int32_t> scratch;
  if (static_cast<int64_t>(scratch.size()) < size) scratch.resize(size);
  return scratch.data();
}

// Weight dword E of a chunk's 16 (its zmm) in every lane: two in-register shuffles (the lane
// shuffle is shared by the 4 entries of a 128-bit lane) instead of a vpbroadcastd load per
// entry next to its activation load; ~5% at M = 16-128 (quad panels, 1 and 2 threads).
template <int E>
SCALENN_TARGET_AVX512 inline __m512i chunk_dword(__m512i weights) {
  const __m512i lane = _mm512_shuffle_i32x4(weights, weights, (E / 4) * 0x55);
  return _mm512_shuffle_epi32(lane, static_cast<_MM_PERM_ENUM>((E % 4) * 0x55));
}

// The 16 entries of quad chunk `weights` (its values) / `rc` (its rel) against the dword panels
// at `xc` (its base), one vpdpbusd per 16 tokens, entry E into accumulator set E % U.
template <int V, int U, int... E>
SCALENN_TARGET_AVX512 inline void quad_panel_chunk(const uint8_t* xc, const uint8_t* rc,
                                                   __m512i weights, __m512i (&acc)[U][V],
                                                   std::integer_sequence<int, E...>) {
  constexpr int64_t P = 16 * V;
  auto entry = [&](const uint8_t* x, __m512i b, __m512i(&a)[V]) SCALENN_TARGET_AVX512 {
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) a[v] = _mm512_dpbusd_epi32(a[v], _mm512_loadu_si512(x + 64 * v), b);
  };
  (entry(xc + int64_t(rc[E]) * 4 * P, chunk_dword<E>(weights), acc[E % U]), ...);
}

// Quad panel kernel: "dword panels" panel[g][t] = the 4 activation bytes of group g of token t
// (P = 16 * V tokens). Per entry one weight dword, broadcast in registers, x V vpdpbusd.
template <int V>
SCALENN_TARGET_AVX512 void quad_panel_rows_avx512(const SparseInt8Weight& w,
                                                  const SparseInt8Problem& pr, int64_t n0,
                                                  int64_t n1) {
  constexpr int64_t P = 16 * V;
  constexpr int U = 8 / V;  // independent accumulator sets: vpdpbusd latency x throughput
  const int64_t panel_bytes = packed_k(w.K) * P;
  const __m512i ones = _mm512_set1_epi8(1);
  int32_t* out = panel_scratch((n1 - n0) * P);
  for (int64_t p = 0; p * P < pr.M; ++p) {
    const uint8_t* panel = pr.a + p * panel_bytes;
    for (int64_t n = n0; n < n1; ++n) {
      __m512i acc[U][V], wsum = _mm512_setzero_si512();
      for (int u = 0; u < U; ++u)
        for (int v = 0; v < V; ++v) acc[u][v] = _mm512_setzero_si512();
      for (int64_t c = w.row_offsets[n]; c < w.row_offsets[n + 1]; ++c) {
        // Into L2, 64 chunks (4 KiB of values) ahead: 4096 x 4096, 90% 1x4 blocks, weights
        // from memory, 1 thread: M = 4 0.33 -> 0.23 ms, M = 16 0.36 -> 0.26 ms (32 chunks
        // ahead the same).
        _mm_prefetch(reinterpret_cast<const char*>(w.values + (c + 64) * kChunk * 4), _MM_HINT_T1);
        _mm_prefetch(reinterpret_cast<const char*>(w.rel + (c + 64) * kChunk), _MM_HINT_T1);
        const __m512i weights = _mm512_loadu_si512(w.values + c * kChunk * 4);
        const uint8_t* rc = w.rel + c * kChunk;
        const uint8_t* xc = panel + int64_t(w.base[c]) * 4 * P;
        wsum = _mm512_dpbusd_epi32(wsum, ones, weights);
        quad_panel_chunk<V, U>(xc, rc, weights, acc, std::make_integer_sequence<int, kChunk>{});
      }
      // u8 activations are q + 128: subtract 128 * (sum of the row's weights).
      const __m512i comp = _mm512_set1_epi32(-128 * _mm512_reduce_add_epi32(wsum));
      for (int v = 0; v < V; ++v) {
        __m512i sum = acc[0][v];
        for (int u = 1; u < U; ++u) sum = _mm512_add_epi32(sum, acc[u][v]);
        _mm512_storeu_si512(out + (n - n0) * P + 16 * v, _mm512_add_epi32(sum, comp));
      }
    }
    write_panel(w, pr, out, P, p, n0, n1, [](int64_t t) { return t; });
  }
}

// Elem16 panel kernel (P = 64 tokens): "byte panels" panel[k][t] = activation byte of column k
// of token t. Row by row, its 4 entries of each step of its group at a time: their four token
// vectors (4 zmm loads) are interleaved into dwords by 8 in-lane unpacks (byte j of token t's
// dword = entry j's activation) and one vpdpbusd per 16 tokens multiplies them with the 4
// entries' weights, which are already one dword in the values array. Output vector v, dword
// lane l holds token 16 * (l / 4) + 4 * v + l % 4.
SCALENN_TARGET_AVX512 inline int64_t elem64_slot(int64_t t) {
  const int64_t r = t % 16;
  return (r / 4) * 16 + 4 * (t / 16) + r % 4;
}

SCALENN_TARGET_AVX512 inline void elem16_panel_entries(const SparseInt8Weight& w,
                                                       const uint8_t* panel, int64_t c,
                                                       __m512i* wsum, __m512i (&acc)[4]) {
  constexpr int64_t P = 64;
  const uint8_t* rc = w.rel + w.elem16_chunk(c);
  const uint8_t* xc = panel + chunk_base(w, c) * 4 * P;
  int32_t wd;
  std::memcpy(&wd, w.values + w.elem16_chunk(c), 4);
  const __m512i b = _mm512_set1_epi32(wd);
  *wsum = _mm512_dpbusd_epi32(*wsum, _mm512_set1_epi8(1), b);
  const __m512i x0 = _mm512_loadu_si512(xc + int64_t(rc[0]) * P);
  const __m512i x1 = _mm512_loadu_si512(xc + int64_t(rc[1]) * P);
  const __m512i x2 = _mm512_loadu_si512(xc + int64_t(rc[2]) * P);
  const __m512i x3 = _mm512_loadu_si512(xc + int64_t(rc[3]) * P);
  const __m512i lo01 = _mm512_unpacklo_epi8(x0, x1), hi01 = _mm512_unpackhi_epi8(x0, x1);
  const __m512i lo23 = _mm512_unpacklo_epi8(x2, x3), hi23 = _mm512_unpackhi_epi8(x2, x3);
  acc[0] = _mm512_dpbusd_epi32(acc[0], _mm512_unpacklo_epi16(lo01, lo23), b);
  acc[1] = _mm512_dpbusd_epi32(acc[1], _mm512_unpackhi_epi16(lo01, lo23), b);
  acc[2] = _mm512_dpbusd_epi32(acc[2], _mm512_unpacklo_epi16(hi01, hi23), b);
  acc[3] = _mm512_dpbusd_epi32(acc[3], _mm512_unpackhi_epi16(hi01, hi23), b);
}

SCALENN_TARGET_AVX512 void elem16_panel64_rows_avx512(const SparseInt8Weight& w,
                                                      const SparseInt8Problem& pr, int64_t n0,
                                                      int64_t n1) {
  constexpr int64_t P = 64;
  const int64_t panel_bytes = packed_k(w.K) * P;
  int32_t* out = panel_scratch((n1 - n0) * P);
  for (int64_t p = 0; p * P < pr.M; ++p) {
    const uint8_t* panel = pr.a + p * panel_bytes;
    for (int64_t n = n0; n < n1; ++n) {
      // Two accumulator sets on alternate steps, written out so they stay in registers.
      __m512i even[4], odd[4], wsum_even = _mm512_setzero_si512(), wsum_odd = wsum_even;
      for (int v = 0; v < 4; ++v) even[v] = odd[v] = _mm512_setzero_si512();
      const RowChunks rc = row_chunks(w, n);
      int64_t i = 0;
      for (; i + 1 < rc.count; i += 2) {
        elem16_panel_entries(w, panel, rc.first + i * rc.stride, &wsum_even, even);
        elem16_panel_entries(w, panel, rc.first + (i + 1) * rc.stride, &wsum_odd, odd);
      }
      if (i < rc.count) elem16_panel_entries(w, panel, rc.first + i * rc.stride, &wsum_even, even);
      // Every lane of wsum holds the sum of the row's weights: subtract 128 times it.
      const __m512i comp = _mm512_slli_epi32(_mm512_add_epi32(wsum_even, wsum_odd), 7);
      for (int v = 0; v < 4; ++v)
        _mm512_storeu_si512(out + (n - n0) * P + 16 * v,
                            _mm512_sub_epi32(_mm512_add_epi32(even[v], odd[v]), comp));
    }
    write_panel(w, pr, out, P, p, n0, n1, elem64_slot);
  }
}

// ============================== AVX2 ==============================
// s8 activations. quad: vpmaddubsw with the sign trick of int8_gemm_kernels.cpp (|q| u8 x w
// with q's sign; pairs stay below 2^15) and vpmaddwd with ones, per token and chunk.
template <int MT>
SCALENN_TARGET_AVX2 void quad_gather_avx2(const SparseInt8Weight& w, const SparseInt8Problem& pr,
                                          int64_t m0, int64_t n0, int64_t n1) {
  const int64_t Kp = packed_k(w.K);
  const __m256i ones16 = _mm256_set1_epi16(1);
  for (int64_t n = n0; n < n1; ++n) {
    __m256i acc[MT];
    for (int t = 0; t < MT; ++t) acc[t] = _mm256_setzero_si256();
    for (int64_t c = w.row_offsets[n]; c < w.row_offsets[n + 1]; ++c) {
      const int32_t b = w.base[c];
      for (int64_t h = 0; h < 2; ++h) {
        const __m256i idx = _mm256_cvtepu8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.rel + c * kChunk + 8 * h)));
        const __m256i off = _mm256_slli_epi32(_mm256_add_epi32(idx, _mm256_set1_epi32(b)), 2);
        const __m256i wd = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(w.values + (c * kChunk + 8 * h) * 4));
        for (int t = 0; t < MT; ++t) {
          const __m256i x = _mm256_i32gather_epi32(
              reinterpret_cast<const int*>(pr.a + (m0 + t) * Kp), off, 1);
          const __m256i prod = _mm256_maddubs_epi16(_mm256_abs_epi8(x), _mm256_sign_epi8(wd, x));
          acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(prod, ones16));
        }
      }
    }
    for (int t = 0; t < MT; ++t) {
      __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc[t]), _mm256_extracti128_si256(acc[t], 1));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
      write_result(w, pr, m0 + t, n, _mm_cvtsi128_si32(s));
    }
  }
}

// elem16, token m: per step 8 byte-offset vpgatherdd (8 entries = rows 2h, 2h + 1 each); the
// gathered dword's low byte is q: sign-extend it and vpmulld with the sign-extended weight.
SCALENN_TARGET_AVX2 void elem16_gather_avx2(const SparseInt8Weight& w,
                                            const SparseInt8Problem& pr, int64_t m, int64_t n0,
                                            int64_t n1) {
  const int* a = reinterpret_cast<const int*>(pr.a + m * packed_k(w.K));
  for (int64_t g = n0 / kElemRows; g < (n1 + kElemRows - 1) / kElemRows; ++g) {
    int64_t s, s_end;
    group_steps(w, g, &s, &s_end);
    __m256i acc[8];
    for (int h = 0; h < 8; ++h) acc[h] = _mm256_setzero_si256();
    for (; s < s_end; ++s) {
      const __m256i b = _mm256_set1_epi32(4 * int32_t(w.base[s]));
#pragma GCC unroll 8
      for (int h = 0; h < 8; ++h) {
        const int64_t e = s * w.step_bytes + 8 * h;
        const __m256i off = _mm256_add_epi32(
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.rel + e))), b);
        const __m256i wd = _mm256_cvtepi8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.values + e)));
        const __m256i q = _mm256_srai_epi32(_mm256_slli_epi32(_mm256_i32gather_epi32(a, off, 1), 24), 24);
        acc[h] = _mm256_add_epi32(acc[h], _mm256_mullo_epi32(q, wd));
      }
    }
    alignas(32) int32_t lanes[8][8];
    for (int h = 0; h < 8; ++h) _mm256_store_si256(reinterpret_cast<__m256i*>(lanes[h]), acc[h]);
    for (int64_t r = 0; r < kElemRows && kElemRows * g + r < w.N; ++r) {
      const int32_t* l = lanes[r / 2] + 4 * (r % 2);
      write_result(w, pr, m, kElemRows * g + r, l[0] + l[1] + l[2] + l[3]);
    }
  }
}

// ============================== scalar ==============================
void rows_scalar(const SparseInt8Weight& w, const SparseInt8Problem& pr, int64_t n0, int64_t n1) {
  const int64_t Kp = packed_k(w.K);
  const bool quad = is_quad(w.format);
  const int64_t entries = w.chunk_entries();
  const int8_t* a = reinterpret_cast<const int8_t*>(pr.a);
  for (int64_t m = 0; m < pr.M; ++m) {
    for (int64_t n = n0; n < n1; ++n) {
      int32_t acc = 0;
      const RowChunks rc = row_chunks(w, n);
      for (int64_t i = 0; i < rc.count; ++i) {
        const int64_t c = rc.first + i * rc.stride, b = chunk_base(w, c);
        if (quad) {
          for (int64_t e = c * entries; e < (c + 1) * entries; ++e) {
            const int8_t* x = a + m * Kp + 4 * (b + w.rel[e]);
            for (int j = 0; j < 4; ++j) acc += int32_t(x[j]) * int32_t(w.values[4 * e + j]);
          }
        } else {
          for (int64_t e = w.elem16_chunk(c); e < w.elem16_chunk(c) + entries; ++e)
            acc += int32_t(a[m * Kp + 4 * b + w.rel[e]]) * int32_t(w.values[e]);
        }
      }
      write_result(w, pr, m, n, acc);
    }
  }
}

// Per-token kernels for up to 4 tokens at a time (they share each chunk's decode).
template <class Run>
void per_token_blocks(int64_t M, Run run) {
  for (int64_t m0 = 0; m0 < M; m0 += 4) {
    switch (std::min<int64_t>(4, M - m0)) {
      case 1: run.template operator()<1>(m0); break;
      case 2: run.template operator()<2>(m0); break;
      case 3: run.template operator()<3>(m0); break;
      default: run.template operator()<4>(m0);
    }
  }
}

void quad_rows(CpuIsa isa, const SparseInt8Weight& w, const SparseInt8Problem& pr, int64_t n0,
               int64_t n1) {
  if (isa == CpuIsa::avx512 && pr.P > 0) {
    switch (pr.P) {
      case 16: quad_panel_rows_avx512<1>(w, pr, n0, n1); break;
      case 32: quad_panel_rows_avx512<2>(w, pr, n0, n1); break;
      default: quad_panel_rows_avx512<4>(w, pr, n0, n1);
    }
  } else if (isa == CpuIsa::avx512) {
    per_token_blocks(pr.M, [&]<int MT>(int64_t m0) { quad_window_rows_avx512<MT>(w, pr, m0, n0, n1); });
  } else if (isa == CpuIsa::avx2) {
    per_token_blocks(pr.M, [&]<int MT>(int64_t m0) { quad_gather_avx2<MT>(w, pr, m0, n0, n1); });
  } else {
    rows_scalar(w, pr, n0, n1);
  }
}

void elem16_rows(CpuIsa isa, const SparseInt8Weight& w, const SparseInt8Problem& pr, int64_t n0,
                 int64_t n1) {
  if (isa == CpuIsa::avx512 && pr.P > 0) {
    elem16_panel64_rows_avx512(w, pr, n0, n1);
  } else if (isa == CpuIsa::avx512 && vbmi_enabled()) {
    elem16_window_rows_avx512(w, pr, n0, n1);
  } else if (isa == CpuIsa::avx512) {
    for (int64_t m0 = 0; m0 < pr.M; m0 += 2) {
      if (pr.M - m0 >= 2)
        elem16_gather_avx512<2>(w, pr, m0, n0, n1);
      else
        elem16_gather_avx512<1>(w, pr, m0, n0, n1);
    }
  } else if (isa == CpuIsa::avx2) {
    for (int64_t m = 0; m < pr.M; ++m) elem16_gather_avx2(w, pr, m, n0, n1);
  } else {
    rows_scalar(w, pr, n0, n1);
  }
}

}  // namespace

uint16_t max_u16(CpuIsa isa, const uint16_t* v, int64_t n) {
  if (isa == CpuIsa::avx512) return max_u16_avx512(v, n);
  if (isa == CpuIsa::avx2) return max_u16_avx2(v, n);
  uint16_t best = 0;
  for (int64_t i = 0; i < n; ++i) best = std::max(best, v[i]);
  return best;
}

int64_t sparse_int8_block_rows(SparseInt8Format f) { return is_quad(f) ? 1 : kElemRows; }

int64_t sparse_int8_block_chunks(SparseInt8Format f, const int8_t* w, const int32_t* order,
                                 int64_t N, int64_t K, int64_t b) {
  return is_quad(f) ? walk_quad_row(w + int64_t(order[b]) * K, K, 0, nullptr, nullptr, nullptr)
                    : walk_elem16_group(w, order, N, K, b, 0, nullptr, nullptr, nullptr);
}

void sparse_int8_pack_block(SparseInt8Format f, const int8_t* w, const int32_t* order, int64_t N,
                            int64_t K, int64_t b, int64_t first, int8_t* values, uint8_t* rel,
                            uint16_t* base) {
  if (is_quad(f))
    walk_quad_row(w + int64_t(order[b]) * K, K, first, values, rel, base);
  else
    walk_elem16_group(w, order, N, K, b, first, values, rel, base);
}

int64_t sparse_int8_panel_width(CpuIsa isa, SparseInt8Format f, int64_t M) {
  if (isa != CpuIsa::avx512) return 0;
  if (is_quad(f)) return M < 3 ? 0 : (M <= 16 ? 16 : (M <= 32 ? 32 : 64));
  // elem16: the window kernel (VBMI) for every M: at 4096 x 4096, 90%, it beat the 64-token
  // panel kernel by 1.4x per token at M = 64 and 128 (1 thread). Without VBMI the gather
  // kernel below 3 tokens (a 64-token panel would be mostly padding), panels above.
  if (vbmi_enabled()) return 0;
  return M < 3 ? 0 : 64;
}

void sparse_int8_transpose_panels(SparseInt8Format f, const uint8_t* a, int64_t M, int64_t K,
                                  int64_t P, uint8_t* panels, int64_t p_begin, int64_t p_end) {
  const int64_t Kp = packed_k(K);
  const int64_t unit = is_quad(f) ? 4 : 1;  // bytes of a token per panel row (group / column)
  const int64_t panel_rows = Kp / unit;
  for (int64_t p = p_begin; p < p_end; ++p) {
    uint8_t* panel = panels + p * Kp * P;
    for (int64_t t = 0; t < P; ++t) {
      const int64_t m = p * P + t;
      for (int64_t r = 0; r < panel_rows; ++r) {
        if (m < M)
          std::memcpy(panel + (r * P + t) * unit, a + m * Kp + r * unit, unit);
        else
          std::memset(panel + (r * P + t) * unit, 0x80, unit);  // q = 0
      }
    }
  }
}

void sparse_int8_rows(CpuIsa isa, const SparseInt8Weight& w, const SparseInt8Problem& pr,
                      int64_t n_begin, int64_t n_end) {
  if (is_quad(w.format))
    quad_rows(isa, w, pr, n_begin, n_end);
  else
    elem16_rows(isa, w, pr, n_begin, n_end);
}

}  // namespace scalenn::cpu
