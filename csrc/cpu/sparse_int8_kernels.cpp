#include "sparse_int8_kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "int8_gemm_kernels.h"  // packed_k: the activation row stride shared with Int8Linear

namespace scalenn::cpu {
namespace {

constexpr int64_t kChunk = kEntriesPerChunk;

inline bool is_quad(SparseInt8Format f) { return f == SparseInt8Format::quad; }

// ============================== packing ==============================
// A "unit" is what one entry holds: a column (elem) or a group of 4 columns (quad). Chunk bases
// are in units of 4 columns: elem base = the chunk's first column rounded down to a multiple of
// 64 (cache-line aligned windows, see the header), quad base = its first group;
// rel = unit - (elem ? 4 * base : base) must stay <= kMaxRel.
inline bool group_nonzero(const int8_t* row, int64_t K, int64_t g) {
  for (int64_t k = 4 * g; k < std::min(K, 4 * g + 4); ++k)
    if (row[k] != 0) return true;
  return false;
}

// Walks row n's units, counting chunks; with `values` non-null it also writes them (starting at
// chunk `first`). One walk for both passes, so count and fill cannot disagree.
int64_t walk_row(SparseInt8Format f, const int8_t* w, int64_t K, int64_t n, int64_t first,
                 int8_t* values, uint8_t* rel, uint16_t* base) {
  const int8_t* row = w + n * K;
  const bool quad = is_quad(f);
  const int64_t units = quad ? (K + 3) / 4 : K, eb = quad ? 4 : 1;
  int64_t chunks = 0, slot = kChunk, chunk_base = 0;
  auto close_chunk = [&] {  // pad the open chunk with zero-weight entries at rel 0
    if (values == nullptr || chunks == 0) return;
    const int64_t c = first + chunks - 1;
    for (int64_t s = slot; s < kChunk; ++s) {
      rel[c * kChunk + s] = 0;
      std::memset(values + (c * kChunk + s) * eb, 0, eb);
    }
  };
  for (int64_t u = 0; u < units; ++u) {
    if (quad ? !group_nonzero(row, K, u) : row[u] == 0) continue;
    const int64_t r = quad ? u - chunk_base : u - 4 * chunk_base;
    if (slot == kChunk || r > kMaxRel) {
      close_chunk();
      ++chunks;
      slot = 0;
      chunk_base = quad ? u / 16 * 16 : u / 64 * 16;
      if (values != nullptr) base[first + chunks - 1] = static_cast<uint16_t>(chunk_base);
    }
    if (values != nullptr) {
      const int64_t e = (first + chunks - 1) * kChunk + slot;
      rel[e] = static_cast<uint8_t>(quad ? u - chunk_base : u - 4 * chunk_base);
      if (quad) {
        for (int64_t j = 0; j < 4; ++j) values[e * 4 + j] = 4 * u + j < K ? row[4 * u + j] : 0;
      } else {
        values[e] = row[u];
      }
    }
    ++slot;
  }
  close_chunk();
  return chunks;
}

// ============================== AVX-512 VNNI ==============================
inline void write_result(const SparseInt8Weight& w, const SparseInt8Problem& pr, int64_t m,
                         int64_t n, int32_t acc) {
  if (pr.out_s32 != nullptr) {
    pr.out_s32[m * w.N + n] = acc;
    return;
  }
  pr.out[m * w.N + n] = std::fma(static_cast<float>(acc), pr.row_scale[m] * pr.w_scale[n],
                                 pr.bias ? pr.bias[n] : 0.0f);
}

// Gather kernel (elem, few tokens; the fallback for AVX-512 CPUs without VBMI): per chunk one
// vpgatherdd per token loads the aligned dword holding each entry's activation (its group of
// 4 columns; unaligned byte-offset gathers were 3x slower on Zen 5), and the entry's weight is
// shifted to the byte of its column within that dword.
template <int MT>
SCALENN_TARGET_AVX512 void gather_rows_avx512(const SparseInt8Weight& w,
                                              const SparseInt8Problem& pr, int64_t m0, int64_t n0,
                                              int64_t n1) {
  const int64_t Kp = packed_k(w.K);
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t n = n0; n < n1; ++n) {
    __m512i acc[MT], wsum = _mm512_setzero_si512();
    for (int t = 0; t < MT; ++t) acc[t] = _mm512_setzero_si512();
    for (int64_t c = w.row_offsets[n]; c < w.row_offsets[n + 1]; ++c) {
      const __m512i col = _mm512_add_epi32(
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.rel + c * kChunk))),
          _mm512_set1_epi32(4 * int32_t(w.base[c])));
      const __m512i byte_shift = _mm512_slli_epi32(_mm512_and_si512(col, _mm512_set1_epi32(3)), 3);
      const __m512i wd = _mm512_sllv_epi32(
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.values + c * kChunk))),
          byte_shift);
      const __m512i group = _mm512_srli_epi32(col, 2);
      wsum = _mm512_dpbusd_epi32(wsum, ones, wd);
#pragma GCC unroll 4
      for (int t = 0; t < MT; ++t) {
        const __m512i x = _mm512_i32gather_epi32(group, pr.a + (m0 + t) * Kp, 4);
        acc[t] = _mm512_dpbusd_epi32(acc[t], x, wd);
      }
    }
    // u8 activations are q + 128: subtract 128 * (sum of the row's weights).
    const int32_t comp = -128 * _mm512_reduce_add_epi32(wsum);
    for (int t = 0; t < MT; ++t) write_result(w, pr, m0 + t, n, _mm512_reduce_add_epi32(acc[t]) + comp);
  }
}

// Window kernel (elem, few tokens, needs AVX512_VBMI): a chunk's 16 entries lie within 256
// columns of 4 * base, so the 256 activation bytes there (4 zmm loads from L1) serve as a lookup
// table: two vpermt2b (128-byte halves, merged on bit 7 of rel) pick the 16 activations, and one
// vpdpbusd multiplies them with the 16 weights (4 entries per int32 lane; every lane is summed in
// the end, so which entries share a lane does not matter). On Zen 5 this is several times
// cheaper than a 16-lane vpgatherdd.
#define SCALENN_TARGET_AVX512_VBMI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,avx2,fma,bmi2")))

// One chunk of the window kernel for MT tokens, accumulating into acc[MT].
template <int MT>
SCALENN_TARGET_AVX512_VBMI inline void window_chunk(const SparseInt8Weight& w,
                                                   const SparseInt8Problem& pr, int64_t m0,
                                                   int64_t Kp, int64_t c, __m512i* wsum,
                                                   __m512i (&acc)[MT]) {
  // Lanes 16..63 of idx are 0 and of wd are 0, so whatever they pick is multiplied by 0.
  const __m512i idx = _mm512_castsi128_si512(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.rel + c * kChunk)));
  const __m512i wd = _mm512_castsi128_si512(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.values + c * kChunk)));
  const __mmask64 high = _mm512_movepi8_mask(idx);
  *wsum = _mm512_dpbusd_epi32(*wsum, _mm512_set1_epi8(1), wd);
#pragma GCC unroll 4
  for (int t = 0; t < MT; ++t) {
    const uint8_t* x = pr.a + (m0 + t) * Kp + 4 * int64_t(w.base[c]);
    const __m512i lo = _mm512_permutex2var_epi8(_mm512_loadu_si512(x), idx,
                                                _mm512_loadu_si512(x + 64));
    const __m512i hi = _mm512_permutex2var_epi8(_mm512_loadu_si512(x + 128), idx,
                                                _mm512_loadu_si512(x + 192));
    acc[t] = _mm512_dpbusd_epi32(acc[t], _mm512_mask_blend_epi8(high, lo, hi), wd);
  }
}

template <int MT>
SCALENN_TARGET_AVX512_VBMI void window_rows_avx512(const SparseInt8Weight& w,
                                                   const SparseInt8Problem& pr, int64_t m0,
                                                   int64_t n0, int64_t n1) {
  const int64_t Kp = packed_k(w.K);
  for (int64_t n = n0; n < n1; ++n) {
    // Two accumulator sets, chunks alternating, written out so they stay in registers (an
    // index like acc[c & 1] put them on the stack: a store-load round trip per chunk).
    __m512i even[MT], odd[MT], wsum_even = _mm512_setzero_si512(), wsum_odd = wsum_even;
    for (int t = 0; t < MT; ++t) even[t] = odd[t] = _mm512_setzero_si512();
    const int64_t end = w.row_offsets[n + 1];
    int64_t c = w.row_offsets[n];
    for (; c + 1 < end; c += 2) {
      window_chunk<MT>(w, pr, m0, Kp, c, &wsum_even, even);
      window_chunk<MT>(w, pr, m0, Kp, c + 1, &wsum_odd, odd);
    }
    if (c < end) window_chunk<MT>(w, pr, m0, Kp, c, &wsum_even, even);
    const int32_t comp = -128 * _mm512_reduce_add_epi32(_mm512_add_epi32(wsum_even, wsum_odd));
    for (int t = 0; t < MT; ++t)
      write_result(w, pr, m0 + t, n,
                   _mm512_reduce_add_epi32(_mm512_add_epi32(even[t], odd[t])) + comp);
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

// Quad panel kernel: "dword panels" panel[g][t] = the 4 activation bytes of group g of token t
// (P = 16 * V tokens). Per entry one broadcast weight dword x V vpdpbusd.
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
        const int8_t* wc = w.values + c * kChunk * 4;
        const uint8_t* rc = w.rel + c * kChunk;
        const uint8_t* xc = panel + int64_t(w.base[c]) * 4 * P;
        wsum = _mm512_dpbusd_epi32(wsum, ones, _mm512_loadu_si512(wc));
#pragma GCC unroll 16
        for (int e = 0; e < kChunk; ++e) {
          const uint8_t* x = xc + int64_t(rc[e]) * 4 * P;
          int32_t wd;
          std::memcpy(&wd, wc + 4 * e, 4);
          const __m512i b = _mm512_set1_epi32(wd);
#pragma GCC unroll 4
          for (int v = 0; v < V; ++v)
            acc[e % U][v] = _mm512_dpbusd_epi32(acc[e % U][v], _mm512_loadu_si512(x + 64 * v), b);
        }
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

// Elem panel kernels: "byte panels" panel[k][t] = activation byte of column k of token t. Four
// entries at a time: their four token vectors are interleaved into dwords (byte j of token t's
// dword = entry j's activation) and one vpdpbusd multiplies them with the 4 entries' weights,
// which are already one dword in the values array. 4x fewer loads and vpdpbusd than giving each
// elem entry a dword of its own.
//
// P = 64: 4 zmm loads, 8 in-lane unpacks (AVX512BW). Output vector v, dword lane l holds token
// 16 * (l / 4) + 4 * v + l % 4.
SCALENN_TARGET_AVX512 inline int64_t elem64_slot(int64_t t) {
  const int64_t r = t % 16;
  return (r / 4) * 16 + 4 * (t / 16) + r % 4;
}

SCALENN_TARGET_AVX512 void elem_panel64_rows_avx512(const SparseInt8Weight& w,
                                                    const SparseInt8Problem& pr, int64_t n0,
                                                    int64_t n1) {
  constexpr int64_t P = 64;
  const int64_t panel_bytes = packed_k(w.K) * P;
  const __m512i ones = _mm512_set1_epi8(1);
  int32_t* out = panel_scratch((n1 - n0) * P);
  for (int64_t p = 0; p * P < pr.M; ++p) {
    const uint8_t* panel = pr.a + p * panel_bytes;
    for (int64_t n = n0; n < n1; ++n) {
      __m512i acc[2][4], wsum = _mm512_setzero_si512();
      for (int u = 0; u < 2; ++u)
        for (int v = 0; v < 4; ++v) acc[u][v] = _mm512_setzero_si512();
      for (int64_t c = w.row_offsets[n]; c < w.row_offsets[n + 1]; ++c) {
        const int8_t* wc = w.values + c * kChunk;
        const uint8_t* rc = w.rel + c * kChunk;
        const uint8_t* xc = panel + int64_t(w.base[c]) * 4 * P;
        wsum = _mm512_dpbusd_epi32(wsum, ones, _mm512_castsi128_si512(
                                                   _mm_loadu_si128(reinterpret_cast<const __m128i*>(wc))));
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
          const __m512i x0 = _mm512_loadu_si512(xc + int64_t(rc[4 * q + 0]) * P);
          const __m512i x1 = _mm512_loadu_si512(xc + int64_t(rc[4 * q + 1]) * P);
          const __m512i x2 = _mm512_loadu_si512(xc + int64_t(rc[4 * q + 2]) * P);
          const __m512i x3 = _mm512_loadu_si512(xc + int64_t(rc[4 * q + 3]) * P);
          const __m512i lo01 = _mm512_unpacklo_epi8(x0, x1), hi01 = _mm512_unpackhi_epi8(x0, x1);
          const __m512i lo23 = _mm512_unpacklo_epi8(x2, x3), hi23 = _mm512_unpackhi_epi8(x2, x3);
          int32_t wd;
          std::memcpy(&wd, wc + 4 * q, 4);
          const __m512i b = _mm512_set1_epi32(wd);
          __m512i* a = acc[q & 1];
          a[0] = _mm512_dpbusd_epi32(a[0], _mm512_unpacklo_epi16(lo01, lo23), b);
          a[1] = _mm512_dpbusd_epi32(a[1], _mm512_unpackhi_epi16(lo01, lo23), b);
          a[2] = _mm512_dpbusd_epi32(a[2], _mm512_unpacklo_epi16(hi01, hi23), b);
          a[3] = _mm512_dpbusd_epi32(a[3], _mm512_unpackhi_epi16(hi01, hi23), b);
        }
      }
      const __m512i comp = _mm512_set1_epi32(-128 * _mm512_reduce_add_epi32(wsum));
      for (int v = 0; v < 4; ++v)
        _mm512_storeu_si512(out + (n - n0) * P + 16 * v,
                            _mm512_add_epi32(_mm512_add_epi32(acc[0][v], acc[1][v]), comp));
    }
    write_panel(w, pr, out, P, p, n0, n1, elem64_slot);
  }
}

// P = 16 (needs VBMI): the 4 entries' 16-byte token vectors fill one zmm and one vpermb
// interleaves them, so token t's dword is lane t.
SCALENN_TARGET_AVX512_VBMI void elem_panel16_rows_avx512(const SparseInt8Weight& w,
                                                         const SparseInt8Problem& pr, int64_t n0,
                                                         int64_t n1) {
  constexpr int64_t P = 16;
  const int64_t panel_bytes = packed_k(w.K) * P;
  const __m512i ones = _mm512_set1_epi8(1);
  alignas(64) uint8_t interleave_idx[64];
  for (int t = 0; t < 16; ++t)
    for (int j = 0; j < 4; ++j) interleave_idx[4 * t + j] = static_cast<uint8_t>(16 * j + t);
  const __m512i interleave = _mm512_load_si512(interleave_idx);
  int32_t* out = panel_scratch((n1 - n0) * P);
  for (int64_t p = 0; p * P < pr.M; ++p) {
    const uint8_t* panel = pr.a + p * panel_bytes;
    for (int64_t n = n0; n < n1; ++n) {
      __m512i acc[4], wsum = _mm512_setzero_si512();
      for (int q = 0; q < 4; ++q) acc[q] = _mm512_setzero_si512();
      for (int64_t c = w.row_offsets[n]; c < w.row_offsets[n + 1]; ++c) {
        const int8_t* wc = w.values + c * kChunk;
        const uint8_t* rc = w.rel + c * kChunk;
        const uint8_t* xc = panel + int64_t(w.base[c]) * 4 * P;
        wsum = _mm512_dpbusd_epi32(wsum, ones, _mm512_castsi128_si512(
                                                   _mm_loadu_si128(reinterpret_cast<const __m128i*>(wc))));
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
          __m512i x = _mm512_castsi128_si512(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(xc + int64_t(rc[4 * q]) * P)));
          for (int j = 1; j < 4; ++j)
            x = _mm512_inserti32x4(x, _mm_loadu_si128(reinterpret_cast<const __m128i*>(
                                          xc + int64_t(rc[4 * q + j]) * P)), j);
          int32_t wd;
          std::memcpy(&wd, wc + 4 * q, 4);
          acc[q] = _mm512_dpbusd_epi32(acc[q], _mm512_permutexvar_epi8(interleave, x),
                                       _mm512_set1_epi32(wd));
        }
      }
      const __m512i comp = _mm512_set1_epi32(-128 * _mm512_reduce_add_epi32(wsum));
      const __m512i sum = _mm512_add_epi32(_mm512_add_epi32(acc[0], acc[1]),
                                           _mm512_add_epi32(acc[2], acc[3]));
      _mm512_storeu_si512(out + (n - n0) * P, _mm512_add_epi32(sum, comp));
    }
    write_panel(w, pr, out, P, p, n0, n1, [](int64_t t) { return t; });
  }
}

// ============================== AVX2 ==============================
// s8 activations. elem: the gathered dword's low byte is q; sign-extend it and vpmulld with the
// sign-extended weight. quad: vpmaddubsw with the sign trick of int8_gemm_kernels.cpp (|q| u8 x
// w with q's sign; pairs stay below 2^15) and vpmaddwd with ones.
template <int MT, bool QUAD>
SCALENN_TARGET_AVX2 void gather_rows_avx2(const SparseInt8Weight& w, const SparseInt8Problem& pr,
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
        __m256i off, wd;
        if constexpr (QUAD) {
          off = _mm256_slli_epi32(_mm256_add_epi32(idx, _mm256_set1_epi32(b)), 2);
          wd = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.values + (c * kChunk + 8 * h) * 4));
        } else {
          off = _mm256_add_epi32(idx, _mm256_set1_epi32(4 * b));
          wd = _mm256_cvtepi8_epi32(
              _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.values + c * kChunk + 8 * h)));
        }
        for (int t = 0; t < MT; ++t) {
          const __m256i x = _mm256_i32gather_epi32(
              reinterpret_cast<const int*>(pr.a + (m0 + t) * Kp), off, 1);
          if constexpr (QUAD) {
            const __m256i prod = _mm256_maddubs_epi16(_mm256_abs_epi8(x), _mm256_sign_epi8(wd, x));
            acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(prod, ones16));
          } else {
            const __m256i q = _mm256_srai_epi32(_mm256_slli_epi32(x, 24), 24);
            acc[t] = _mm256_add_epi32(acc[t], _mm256_mullo_epi32(q, wd));
          }
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

// ============================== scalar ==============================
void rows_scalar(const SparseInt8Weight& w, const SparseInt8Problem& pr, int64_t n0, int64_t n1) {
  const int64_t Kp = packed_k(w.K);
  const bool quad = is_quad(w.format);
  const int8_t* a = reinterpret_cast<const int8_t*>(pr.a);
  for (int64_t m = 0; m < pr.M; ++m) {
    for (int64_t n = n0; n < n1; ++n) {
      int32_t acc = 0;
      for (int64_t c = w.row_offsets[n]; c < w.row_offsets[n + 1]; ++c) {
        for (int64_t e = c * kChunk; e < (c + 1) * kChunk; ++e) {
          if (quad) {
            const int8_t* x = a + m * Kp + 4 * (w.base[c] + w.rel[e]);
            for (int j = 0; j < 4; ++j) acc += int32_t(x[j]) * int32_t(w.values[4 * e + j]);
          } else {
            acc += int32_t(a[m * Kp + 4 * w.base[c] + w.rel[e]]) * int32_t(w.values[e]);
          }
        }
      }
      write_result(w, pr, m, n, acc);
    }
  }
}

template <bool QUAD>
void rows_isa(CpuIsa isa, const SparseInt8Weight& w, const SparseInt8Problem& pr, int64_t n0,
              int64_t n1) {
  if (isa == CpuIsa::avx512 && pr.P > 0) {
    if constexpr (QUAD) {
      switch (pr.P) {
        case 16: quad_panel_rows_avx512<1>(w, pr, n0, n1); break;
        case 32: quad_panel_rows_avx512<2>(w, pr, n0, n1); break;
        default: quad_panel_rows_avx512<4>(w, pr, n0, n1);
      }
    } else if (pr.P == 16) {
      elem_panel16_rows_avx512(w, pr, n0, n1);
    } else {
      elem_panel64_rows_avx512(w, pr, n0, n1);
    }
    return;
  }
  if (isa == CpuIsa::scalar) {
    rows_scalar(w, pr, n0, n1);
    return;
  }
  // Per-token kernels, up to 4 tokens at a time (they share each chunk's decode).
  for (int64_t m0 = 0; m0 < pr.M; m0 += 4) {
    auto run = [&]<int MT>() {
      if (isa == CpuIsa::avx2)
        gather_rows_avx2<MT, QUAD>(w, pr, m0, n0, n1);
      else if constexpr (QUAD)
        quad_window_rows_avx512<MT>(w, pr, m0, n0, n1);
      else if (vbmi_enabled())
        window_rows_avx512<MT>(w, pr, m0, n0, n1);
      else
        gather_rows_avx512<MT>(w, pr, m0, n0, n1);
    };
    switch (std::min<int64_t>(4, pr.M - m0)) {
      case 1: run.template operator()<1>(); break;
      case 2: run.template operator()<2>(); break;
      case 3: run.template operator()<3>(); break;
      default: run.template operator()<4>();
    }
  }
}

}  // namespace

int64_t sparse_int8_row_chunks(SparseInt8Format f, const int8_t* w, int64_t K, int64_t n) {
  return walk_row(f, w, K, n, 0, nullptr, nullptr, nullptr);
}

void sparse_int8_pack_row(SparseInt8Format f, const int8_t* w, int64_t K, int64_t n,
                          int64_t first, int8_t* values, uint8_t* rel, uint16_t* base) {
  walk_row(f, w, K, n, first, values, rel, base);
}

int64_t sparse_int8_panel_width(CpuIsa isa, SparseInt8Format f, int64_t M) {
  // Below 3 tokens a gather / window lookup per token beats a 16-token panel of padding.
  if (isa != CpuIsa::avx512 || M < 3) return 0;
  if (is_quad(f)) return M <= 16 ? 16 : (M <= 32 ? 32 : 64);
  return M <= 16 && vbmi_enabled() ? 16 : 64;
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
    rows_isa<true>(isa, w, pr, n_begin, n_end);
  else
    rows_isa<false>(isa, w, pr, n_begin, n_end);
}

}  // namespace scalenn::cpu
