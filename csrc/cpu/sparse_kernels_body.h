// (Included inside namespace scalenn::cpu.)
// The sparse kernels, written once and compiled once per ISA level: sparse_kernels.cpp includes
// this file three times with SN_NS (namespace), SN_TARGET (function target attribute) and
// SN_LEVEL (2 = AVX-512, 1 = AVX2+FMA, 0 = scalar) defined. No include guard on purpose.
//
// Every helper carries SN_TARGET so it inlines into the kernels (GCC refuses to inline code
// using AVX-512 intrinsics into a function without the target, and lambdas do not inherit it,
// hence no lambdas here). Panel kernels accumulate each output element as the same ordered
// chain of FMAs on every level, so their results are bit-identical across ISAs.

namespace sparse_impl::SN_NS {

#if SN_LEVEL == 2
using vf = __m512;
constexpr int VW = 16;
SN_TARGET static inline vf vzero() { return _mm512_setzero_ps(); }
SN_TARGET static inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
SN_TARGET static inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
SN_TARGET static inline vf vset1(float a) { return _mm512_set1_ps(a); }
SN_TARGET static inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
SN_TARGET static inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
SN_TARGET static inline float vsum(vf v) { return _mm512_reduce_add_ps(v); }
#elif SN_LEVEL == 1
using vf = __m256;
constexpr int VW = 8;
SN_TARGET static inline vf vzero() { return _mm256_setzero_ps(); }
SN_TARGET static inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
SN_TARGET static inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
SN_TARGET static inline vf vset1(float a) { return _mm256_set1_ps(a); }
SN_TARGET static inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
SN_TARGET static inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
SN_TARGET static inline float vsum(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#else
using vf = float;
constexpr int VW = 1;
static inline vf vzero() { return 0.0f; }
static inline vf vload(const float* p) { return *p; }
static inline void vstore(float* p, vf v) { *p = v; }
static inline vf vset1(float a) { return a; }
static inline vf vfma(vf a, vf b, vf c) { return std::fma(a, b, c); }
static inline vf vadd(vf a, vf b) { return a + b; }
static inline float vsum(vf v) { return v; }
#endif

// Scalar FMA with the same rounding as the vector one (one rounding), for direct kernels.
SN_TARGET static inline float sfma(float a, float b, float c) {
#if SN_LEVEL >= 1
  return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
#else
  return std::fma(a, b, c);
#endif
}

// ---------------------------------------------------------------------------------------------
// Generic panel forward: acc[t] += value * panel[col][t]. Elements are dealt round-robin to
// kChains independent FMA chains (latency hiding when a row's accumulator is a single vector),
// combined as (c0 + c1) + (c2 + c3) at the end; every ISA uses the same chains, so the result
// is bit-identical across ISAs.
constexpr int kChains = 4;

template <int NV>
SN_TARGET static inline void store_chains(vf (&a)[kChains][NV], float* tmp) {
  for (int i = 0; i < NV; ++i)
    vstore(tmp + i * VW, vadd(vadd(a[0][i], a[1][i]), vadd(a[2][i], a[3][i])));
}

// Results of a panel for a range of output rows park in a per-thread [rows][P] scratch and are
// written to y token row by token row at the end (write_panel_out): storing each row's P
// results straight into y [M, N] is P stores N floats apart, a page each, per row.
SN_TARGET static inline float* panel_out_scratch(int64_t size) {
  thread_local std::vector<float> scratch;
  if (static_cast<int64_t>(scratch.size()) < size) scratch.resize(size);
  return scratch.data();
}

SN_TARGET static inline void write_panel_out(const float* out, int64_t P, int64_t m0,
                                             int64_t mvalid, const float* bias, float* y,
                                             int64_t N, int64_t n0, int64_t n1) {
  for (int64_t t = 0; t < mvalid; ++t) {
    float* yr = y + (m0 + t) * N;
    for (int64_t n = n0; n < n1; ++n) yr[n] = out[(n - n0) * P + t] + (bias ? bias[n] : 0.0f);
  }
}

// Elements ahead the row kernels prefetch (past a row's end: the next rows'). The hardware
// prefetchers left the value and index streams waiting on memory: 4096 x 4096, 90% CSR, M = 16,
// weights rotated from memory: 1.23 -> 0.79 ms on 1 thread, 0.63 -> 0.42-0.44 ms on 2 (256
// ahead: 0.89 / 0.47 ms, 1024: 0.81 / 0.45 ms). (8 FMA chains instead of 4 changed nothing,
// with or without the prefetch.)
constexpr int64_t kPrefetchElements = 512;

// a[chain] += value * panel[col] over row n's elements [jb, je), dealt round-robin to the chains
// (leftovers, fewer than kChains, on chain 0).
template <int NV, class D>
SN_TARGET static inline void accumulate_row(const D& d, const float* panel, int64_t P, int64_t n,
                                            int64_t jb, int64_t je, vf (&a)[kChains][NV]) {
  int64_t j = jb;
  for (; j + kChains <= je; j += kChains) {
    d.prefetch_element(j + kPrefetchElements);
#pragma GCC unroll 4
    for (int c = 0; c < kChains; ++c) {
      const vf w = vset1(d.value(n, j + c));
      const float* xr = panel + d.col(n, j + c) * P;
#pragma GCC unroll 4
      for (int i = 0; i < NV; ++i) a[c][i] = vfma(w, vload(xr + i * VW), a[c][i]);
    }
  }
  for (; j < je; ++j) {
    const vf w = vset1(d.value(n, j));
    const float* xr = panel + d.col(n, j) * P;
#pragma GCC unroll 4
    for (int i = 0; i < NV; ++i) a[0][i] = vfma(w, vload(xr + i * VW), a[0][i]);
  }
}

// The chains are indexed only by compile-time constants (unrolled loops), so they stay in
// registers: one runtime index (a leftover element's chain) put the whole array on the stack.
template <int NV, class D>
SN_TARGET static void fwd_panel_rows(const D& d, const float* panel, int64_t P, int64_t m0,
                                     int64_t mvalid, const float* bias, float* y, int64_t N,
                                     int64_t n0, int64_t n1) {
  float* out = panel_out_scratch((n1 - n0) * P);
  for (int64_t n = n0; n < n1; ++n) {
    vf a[kChains][NV];
#pragma GCC unroll 4
    for (int c = 0; c < kChains; ++c)
#pragma GCC unroll 4
      for (int i = 0; i < NV; ++i) a[c][i] = vzero();
    accumulate_row<NV>(d, panel, P, n, d.begin(n), d.end(n), a);
    store_chains<NV>(a, out + (n - n0) * P);
  }
  write_panel_out(out, P, m0, mvalid, bias, y, N, n0, n1);
}

// N:M panel forward cut into k-chunks of kNmChunkK columns. Unchunked, each output row streams
// its columns of the whole panel (K x P floats: 1 MiB at K = 4096, P = 64) from L2, one vector
// load per FMA, and L2 bandwidth bounds the kernel; a chunk of the panel (32 KiB at P = 64)
// stays in L1 while every row of a block of rows runs over it, and the rows' partial sums (P
// floats each) park in the output scratch between chunks. An element's column range per chunk is
// arithmetic for N:M (no search). The chunk is fixed in k, not in bytes, so every ISA sums in
// the same order: chains restart per chunk and fold into the running sum on chain 0.
// Rows are taken kNmRowBlock at a time, so their partial sums (64 KiB at P = 64) stay in L2
// across the chunks: for a whole thread's range (5504 rows of 4096 -> 11008) they spilled to L3
// and the layer ran slower than dense at M = 1024.
constexpr int64_t kNmChunkK = 128;
constexpr int64_t kNmRowBlock = 256;
// Up to 16 tokens the panel (K x 16 floats) sits in L2 and each element feeds one FMA: the
// per-chunk partial sums and prefetches cost more than they save (0.84x dense instead of 1.44x
// at M = 16 on one thread). Chosen by M, not by the ISA's panel width, so that every ISA sums
// in the same order.
constexpr int64_t kNmChunkMinM = 17;

template <int NV, class D>
SN_TARGET static void fwd_panel_nm_chunked(const D& d, const float* panel, int64_t P,
                                           int64_t m0, int64_t mvalid, const float* bias,
                                           float* y, int64_t N, int64_t K, int64_t n0,
                                           int64_t n1) {
  if (kNmChunkK % d.m != 0) {  // chunks must hold whole groups of m
    fwd_panel_rows<NV>(d, panel, P, m0, mvalid, bias, y, N, n0, n1);
    return;
  }
  float* out = panel_out_scratch((n1 - n0) * P);
  for (int64_t nb0 = n0; nb0 < n1; nb0 += kNmRowBlock) {
    const int64_t nb1 = std::min(n1, nb0 + kNmRowBlock);
    for (int64_t k0 = 0; k0 < K; k0 += kNmChunkK) {
      const int64_t k1 = std::min(K, k0 + kNmChunkK);
      for (int64_t n = nb0; n < nb1; ++n) {
        float* o = out + (n - n0) * P;
        if (n + 1 < nb1) d.prefetch_range(n + 1, k0, k1);
        vf a[kChains][NV];
#pragma GCC unroll 4
        for (int c = 0; c < kChains; ++c)
#pragma GCC unroll 4
          for (int i = 0; i < NV; ++i)
            a[c][i] = (c == 0 && k0 > 0) ? vload(o + i * VW) : vzero();
        accumulate_row<NV>(d, panel, P, n, d.begin_at(n, k0), d.begin_at(n, k1), a);
        store_chains<NV>(a, o);
      }
    }
  }
  write_panel_out(out, P, m0, mvalid, bias, y, N, n0, n1);
}

// Block panel forward: one output row r of a block row at a time; the block's C consecutive
// panel rows are read without any per-element index. Same chain discipline as above, with the
// chain chosen by the element's position in the block.
template <int NV>
SN_TARGET static void fwd_panel_bsr(const SparseWeight& w, const float* panel, int64_t P,
                                    int64_t m0, int64_t mvalid, const float* bias, float* y,
                                    int64_t g0, int64_t g1) {
  const int64_t R = w.R, C = w.C, N = w.N;
  const int32_t* bcol = static_cast<const int32_t*>(w.indices);
  float* out = panel_out_scratch((g1 - g0) * R * P);
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t r = 0; r < R; ++r) {
      vf a[kChains][NV];
#pragma GCC unroll 4
      for (int c = 0; c < kChains; ++c)
#pragma GCC unroll 4
        for (int i = 0; i < NV; ++i) a[c][i] = vzero();
      for (int64_t b = w.offsets[g]; b < w.offsets[g + 1]; ++b) {
        const float* v = w.values + (b * R + r) * C;
        const float* xb = panel + static_cast<int64_t>(bcol[b]) * C * P;
        int64_t c = 0;
        for (; c + kChains <= C; c += kChains) {
#pragma GCC unroll 4
          for (int u = 0; u < kChains; ++u) {
            const vf wv = vset1(v[c + u]);
#pragma GCC unroll 4
            for (int i = 0; i < NV; ++i)
              a[u][i] = vfma(wv, vload(xb + (c + u) * P + i * VW), a[u][i]);
          }
        }
        for (; c < C; ++c) {  // C not a multiple of kChains: the rest on chain 0
          const vf wv = vset1(v[c]);
#pragma GCC unroll 4
          for (int i = 0; i < NV; ++i) a[0][i] = vfma(wv, vload(xb + c * P + i * VW), a[0][i]);
        }
      }
      store_chains<NV>(a, out + ((g - g0) * R + r) * P);
    }
  }
  write_panel_out(out, P, m0, mvalid, bias, y, N, g0 * R, g1 * R);
}

// Row-wise panel forward: chunked for N:M from kNmChunkMinM tokens, plain otherwise.
template <int NV, class D>
SN_TARGET static void fwd_panel_rows_any(const D& d, const float* panel, int64_t P, int64_t M,
                                         int64_t m0, int64_t mvalid, const float* bias,
                                         float* y, int64_t N, int64_t K, int64_t n0, int64_t n1) {
  if constexpr (D::kChunkable) {
    if (M >= kNmChunkMinM) {
      fwd_panel_nm_chunked<NV>(d, panel, P, m0, mvalid, bias, y, N, K, n0, n1);
      return;
    }
  }
  fwd_panel_rows<NV>(d, panel, P, m0, mvalid, bias, y, N, n0, n1);
}

template <class D>
SN_TARGET static void fwd_panels_dispatch(const D& d, const SparseWeight& w, const float* panels,
                                          int64_t M, int64_t P, const float* bias, float* y,
                                          int64_t g0, int64_t g1) {
  const int64_t K = w.K;
  for (int64_t m0 = 0, p = 0; m0 < M; m0 += P, ++p) {
    const int64_t mvalid = std::min<int64_t>(P, M - m0);
    const int nv = static_cast<int>((mvalid + VW - 1) / VW);
    const float* panel = panels + p * K * P;
    switch (nv) {
#define SN_CASE(NVC)                                                                         \
  case NVC:                                                                                  \
    if (w.kind == SparseLayoutKind::bsr)                                                     \
      fwd_panel_bsr<NVC>(w, panel, P, m0, mvalid, bias, y, g0, g1);                          \
    else                                                                                     \
      fwd_panel_rows_any<NVC>(d, panel, P, M, m0, mvalid, bias, y, w.N, K, g0, g1);          \
    break;
      SN_CASE(1) SN_CASE(2) SN_CASE(3) SN_CASE(4)
#undef SN_CASE
      default: break;  // unreachable: P <= 4 vectors
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Direct forward (small M). Generic element loop, then the vector special cases.
template <class D>
SN_TARGET static void fwd_direct_generic(const D& d, const float* x, int64_t M, int64_t K,
                                         const float* bias, float* y, int64_t N, int64_t n0,
                                         int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const float b = bias ? bias[n] : 0.0f;
    for (int64_t m = 0; m < M; ++m) {
      const float* xr = x + m * K;
      float s0 = 0.0f, s1 = 0.0f;
      int64_t j = d.begin(n);
      const int64_t je = d.end(n);
      for (; j + 1 < je; j += 2) {
        s0 = sfma(d.value(n, j), xr[d.col(n, j)], s0);
        s1 = sfma(d.value(n, j + 1), xr[d.col(n, j + 1)], s1);
      }
      if (j < je) s0 = sfma(d.value(n, j), xr[d.col(n, j)], s0);
      y[m * N + n] = (s0 + s1) + b;
    }
  }
}

#if SN_LEVEL == 2
// x[cols] for 16 ascending columns of one row. When they lie within 256 floats of a 64-byte
// aligned base (and that window is inside the row), the window (16 aligned loads from L1) is a
// lookup table: 8 two-source permutes cover 32 floats each and a tree of blends on bits 5-7 of
// the offset picks the right one. On Zen 5 that is about twice as fast as the 16-lane
// vpgatherdps, which stays the fallback for wider spans. Forced inline: GCC called it (zmm
// arguments through the stack, twice per 32 elements) and batch 1 ran ~10% slower.
SN_TARGET __attribute__((always_inline)) static inline __m512 pick_x(const float* xr, int64_t K,
                                                                      __m512i cols) {
  const int32_t first = _mm_cvtsi128_si32(_mm512_castsi512_si128(cols));
  const int32_t last = _mm_extract_epi32(_mm512_extracti32x4_epi32(cols, 3), 3);
  const int32_t base = first & ~15;
  if (last - base >= 256 || base + 256 > K) return _mm512_i32gather_ps(cols, xr, 4);
  const __m512i rel = _mm512_sub_epi32(cols, _mm512_set1_epi32(base));
  const float* win = xr + base;
  __m512 r[8];
#pragma GCC unroll 8
  for (int q = 0; q < 8; ++q)
    r[q] = _mm512_permutex2var_ps(_mm512_loadu_ps(win + 32 * q), rel, _mm512_loadu_ps(win + 32 * q + 16));
  const __mmask16 b5 = _mm512_test_epi32_mask(rel, _mm512_set1_epi32(32));
  const __mmask16 b6 = _mm512_test_epi32_mask(rel, _mm512_set1_epi32(64));
  const __mmask16 b7 = _mm512_test_epi32_mask(rel, _mm512_set1_epi32(128));
  const __m512 lo = _mm512_mask_blend_ps(b6, _mm512_mask_blend_ps(b5, r[0], r[1]),
                                         _mm512_mask_blend_ps(b5, r[2], r[3]));
  const __m512 hi = _mm512_mask_blend_ps(b6, _mm512_mask_blend_ps(b5, r[4], r[5]),
                                         _mm512_mask_blend_ps(b5, r[6], r[7]));
  return _mm512_mask_blend_ps(b7, lo, hi);
}

// CSR row . x with 16-lane lookups (pick_x); indices uint16 (widened) or int32.
template <bool IDX16>
SN_TARGET static void fwd_direct_csr(const SparseWeight& w, const float* x, int64_t M,
                                     const float* bias, float* y, int64_t n0, int64_t n1) {
  const int64_t K = w.K, N = w.N;
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t jb = w.offsets[n], je = w.offsets[n + 1];
    const float b = bias ? bias[n] : 0.0f;
    for (int64_t m = 0; m < M; ++m) {
      const float* xr = x + m * K;
      vf a0 = vzero(), a1 = vzero();
      int64_t j = jb;
      for (; j + 32 <= je; j += 32) {
        __m512i i0, i1;
        if constexpr (IDX16) {
          const uint16_t* c = static_cast<const uint16_t*>(w.indices) + j;
          i0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c)));
          i1 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + 16)));
        } else {
          const int32_t* c = static_cast<const int32_t*>(w.indices) + j;
          i0 = _mm512_loadu_si512(c);
          i1 = _mm512_loadu_si512(c + 16);
        }
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w.values + j), pick_x(xr, K, i0), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w.values + j + 16), pick_x(xr, K, i1), a1);
      }
      for (; j < je; j += 16) {
        const int64_t left = std::min<int64_t>(16, je - j);
        const __mmask16 mk = static_cast<__mmask16>((1u << left) - 1u);
        __m512i i0;
        if constexpr (IDX16)
          i0 = _mm512_cvtepu16_epi32(
              _mm256_maskz_loadu_epi16(mk, static_cast<const uint16_t*>(w.indices) + j));
        else
          i0 = _mm512_maskz_loadu_epi32(mk, static_cast<const int32_t*>(w.indices) + j);
        const vf xv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, i0, xr, 4);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, w.values + j), xv, a0);
      }
      y[m * N + n] = vsum(vadd(a0, a1)) + b;
    }
  }
}

// 2:4 row . x without gathers: 32 kept values cover 64 consecutive x; each half of them picks
// from 32 x with one two-source permute (index = 4 * group + position).
SN_TARGET static void fwd_direct_nm24(const SparseWeight& w, const float* x, int64_t M,
                                      const float* bias, float* y, int64_t n0, int64_t n1) {
  const int64_t K = w.K, N = w.N, L = K / 2;  // kept values per row
  const uint8_t* pos = static_cast<const uint8_t*>(w.indices);
  // lane l holds group l/2 of its 8-group half: base index 4 * (l / 2)
  const __m512i base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
  for (int64_t n = n0; n < n1; ++n) {
    const float* v = w.values + n * L;
    const uint8_t* ps = pos + n * L;
    const float b = bias ? bias[n] : 0.0f;
    for (int64_t m = 0; m < M; ++m) {
      const float* xr = x + m * K;
      vf a0 = vzero(), a1 = vzero();
      int64_t j = 0;  // kept-value index; x index = 2 * j
      for (; j + 32 <= L; j += 32) {
        const float* xs = xr + 2 * j;
        const __m512i p0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ps + j)));
        const __m512i p1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ps + j + 16)));
        const vf xa = _mm512_permutex2var_ps(_mm512_loadu_ps(xs), _mm512_add_epi32(base, p0),
                                             _mm512_loadu_ps(xs + 16));
        const vf xb = _mm512_permutex2var_ps(_mm512_loadu_ps(xs + 32), _mm512_add_epi32(base, p1),
                                             _mm512_loadu_ps(xs + 48));
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(v + j), xa, a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(v + j + 16), xb, a1);
      }
      float s = vsum(vadd(a0, a1));
      for (; j < L; ++j) s = sfma(v[j], xr[(j >> 1) * 4 + ps[j]], s);
      y[m * N + n] = s + b;
    }
  }
}

// Blocks with R * C == 16 and C in {4, 8, 16}: the whole block is one vector; x[k0 : k0 + C]
// is broadcast to the R row slots, and each row's C lanes are summed at the end of the row.
SN_TARGET static void fwd_direct_bsr16(const SparseWeight& w, const float* x, int64_t M,
                                       const float* bias, float* y, int64_t g0, int64_t g1) {
  const int64_t R = w.R, C = w.C, K = w.K, N = w.N;
  const int32_t* bcol = static_cast<const int32_t*>(w.indices);
  alignas(64) float tmp[16];
  for (int64_t g = g0; g < g1; ++g) {
    for (int64_t m = 0; m < M; ++m) {
      const float* xr = x + m * K;
      vf a0 = vzero(), a1 = vzero();
      int64_t b = w.offsets[g];
      const int64_t be = w.offsets[g + 1];
      for (; b < be; ++b) {
        const float* xs = xr + static_cast<int64_t>(bcol[b]) * C;
        vf xv;
        if (C == 16) xv = _mm512_loadu_ps(xs);
        else if (C == 8) xv = _mm512_broadcast_f32x8(_mm256_loadu_ps(xs));
        else xv = _mm512_broadcast_f32x4(_mm_loadu_ps(xs));
        if (b & 1) a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w.values + b * 16), xv, a1);
        else a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w.values + b * 16), xv, a0);
      }
      _mm512_store_ps(tmp, vadd(a0, a1));
      for (int64_t r = 0; r < R; ++r) {
        float s = 0.0f;
        for (int64_t c = 0; c < C; ++c) s += tmp[r * C + c];
        const int64_t n = g * R + r;
        y[m * N + n] = s + (bias ? bias[n] : 0.0f);
      }
    }
  }
}
#endif

#if SN_LEVEL == 1
template <bool IDX16>
SN_TARGET static void fwd_direct_csr(const SparseWeight& w, const float* x, int64_t M,
                                     const float* bias, float* y, int64_t n0, int64_t n1) {
  const int64_t K = w.K, N = w.N;
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t jb = w.offsets[n], je = w.offsets[n + 1];
    const float b = bias ? bias[n] : 0.0f;
    for (int64_t m = 0; m < M; ++m) {
      const float* xr = x + m * K;
      vf a0 = vzero(), a1 = vzero();
      int64_t j = jb;
      for (; j + 16 <= je; j += 16) {
        __m256i i0, i1;
        if constexpr (IDX16) {
          const uint16_t* c = static_cast<const uint16_t*>(w.indices) + j;
          i0 = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c)));
          i1 = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + 8)));
        } else {
          const int32_t* c = static_cast<const int32_t*>(w.indices) + j;
          i0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c));
          i1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + 8));
        }
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w.values + j), _mm256_i32gather_ps(xr, i0, 4), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w.values + j + 8), _mm256_i32gather_ps(xr, i1, 4), a1);
      }
      float s = vsum(vadd(a0, a1));
      for (; j < je; ++j) {
        const int64_t k = IDX16 ? static_cast<const uint16_t*>(w.indices)[j]
                                : static_cast<const int32_t*>(w.indices)[j];
        s = sfma(w.values[j], xr[k], s);
      }
      y[m * N + n] = s + b;
    }
  }
}
#endif

template <class D>
SN_TARGET static void fwd_direct_dispatch(const D& d, const SparseWeight& w, const float* x,
                                          int64_t M, const float* bias, float* y, int64_t g0,
                                          int64_t g1) {
#if SN_LEVEL >= 1
  if (w.kind == SparseLayoutKind::csr) {
    if (w.idx16) fwd_direct_csr<true>(w, x, M, bias, y, g0, g1);
    else fwd_direct_csr<false>(w, x, M, bias, y, g0, g1);
    return;
  }
#endif
#if SN_LEVEL == 2
  if (w.kind == SparseLayoutKind::nm && w.nkeep == 2 && w.m == 4) {
    fwd_direct_nm24(w, x, M, bias, y, g0, g1);
    return;
  }
  if (w.kind == SparseLayoutKind::bsr && w.R * w.C == 16 && (w.C == 4 || w.C == 8 || w.C == 16)) {
    fwd_direct_bsr16(w, x, M, bias, y, g0, g1);
    return;
  }
#endif
  // Generic: for bsr the decoder walks row n = g * R + r.
  fwd_direct_generic(d, x, M, w.K, bias, y, w.N, g0 * w.rows_per_group(),
                     g1 * w.rows_per_group());
}

// ---------------------------------------------------------------------------------------------
// grad_input, panel form: scratch[k][t] += value * gy_panel[n][t] over all rows n.
template <int NV, class D>
SN_TARGET static void grad_input_panel_nv(const D& d, int64_t N, const float* gp, int64_t P,
                                          float* scratch) {
  for (int64_t n = 0; n < N; ++n) {
    vf g[NV];
    for (int i = 0; i < NV; ++i) g[i] = vload(gp + n * P + i * VW);
    const int64_t je = d.end(n);
    for (int64_t j = d.begin(n); j < je; ++j) {
      const vf wv = vset1(d.value(n, j));
      float* dst = scratch + d.col(n, j) * P;
      for (int i = 0; i < NV; ++i) vstore(dst + i * VW, vfma(wv, g[i], vload(dst + i * VW)));
    }
  }
}

template <class D>
SN_TARGET static void grad_input_panel_dispatch(const D& d, const SparseWeight& w,
                                                const float* gy_panels, int64_t M, int64_t P,
                                                int64_t p, float* scratch, float* gx) {
  const int64_t N = w.N, K = w.K, m0 = p * P, mvalid = std::min<int64_t>(P, M - m0);
  const int nv = static_cast<int>((mvalid + VW - 1) / VW);
  std::fill(scratch, scratch + K * P, 0.0f);
  const float* gp = gy_panels + p * N * P;
  switch (nv) {
    case 1: grad_input_panel_nv<1>(d, N, gp, P, scratch); break;
    case 2: grad_input_panel_nv<2>(d, N, gp, P, scratch); break;
    case 3: grad_input_panel_nv<3>(d, N, gp, P, scratch); break;
    default: grad_input_panel_nv<4>(d, N, gp, P, scratch); break;
  }
  for (int64_t t = 0; t < mvalid; ++t) {
    float* row = gx + (m0 + t) * K;
    for (int64_t k = 0; k < K; ++k) row[k] = scratch[k * P + t];
  }
}

template <class D>
SN_TARGET static void grad_input_direct_impl(const D& d, const SparseWeight& w, const float* gy,
                                             float* gx, int64_t m0, int64_t m1) {
  const int64_t N = w.N, K = w.K;
  for (int64_t m = m0; m < m1; ++m) {
    float* row = gx + m * K;
    std::fill(row, row + K, 0.0f);
    for (int64_t n = 0; n < N; ++n) {
      const float g = gy[m * N + n];
      const int64_t je = d.end(n);
      for (int64_t j = d.begin(n); j < je; ++j) {
        float& dst = row[d.col(n, j)];
        dst = sfma(d.value(n, j), g, dst);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// grad_values: one dot product over the batch per stored value.
template <class D>
SN_TARGET static void grad_values_panel_impl(const D& d, const SparseWeight& w, const float* xT,
                                             const float* gyT, int64_t Mp, float* gv, int64_t n0,
                                             int64_t n1) {
  (void)w;
  for (int64_t n = n0; n < n1; ++n) {
    const float* g = gyT + n * Mp;
    const int64_t je = d.end(n);
    for (int64_t j = d.begin(n); j < je; ++j) {
      const float* xr = xT + d.col(n, j) * Mp;
      vf a0 = vzero(), a1 = vzero();
      int64_t t = 0;
      for (; t + 2 * VW <= Mp; t += 2 * VW) {
        a0 = vfma(vload(g + t), vload(xr + t), a0);
        a1 = vfma(vload(g + t + VW), vload(xr + t + VW), a1);
      }
      for (; t < Mp; t += VW) a0 = vfma(vload(g + t), vload(xr + t), a0);
      gv[d.vidx(n, j)] = vsum(vadd(a0, a1));
    }
  }
}

template <class D>
SN_TARGET static void grad_values_direct_impl(const D& d, const SparseWeight& w, const float* x,
                                              const float* gy, int64_t M, float* gv, int64_t n0,
                                              int64_t n1) {
  const int64_t N = w.N, K = w.K;
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t je = d.end(n);
    for (int64_t j = d.begin(n); j < je; ++j) {
      const int64_t k = d.col(n, j);
      float s = 0.0f;
      for (int64_t m = 0; m < M; ++m) s = sfma(gy[m * N + n], x[m * K + k], s);
      gv[d.vidx(n, j)] = s;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Entry points for this level: pick the decoder, then the kernel.
#define SN_WITH_DECODER(w, CALL)                                                \
  do {                                                                          \
    switch ((w).kind) {                                                         \
      case SparseLayoutKind::csr:                                               \
        if ((w).idx16) { const CsrDecoder<uint16_t> d(w); CALL; }                 \
        else { const CsrDecoder<int32_t> d(w); CALL; }                            \
        break;                                                                  \
      case SparseLayoutKind::nm:                                                \
        if ((w).nkeep == 2) { const NmDecoder<2> d(w); CALL; }                   \
        else { const NmDecoder<0> d(w); CALL; }                                  \
        break;                                                                  \
      case SparseLayoutKind::bsr: { const BsrDecoder d(w); CALL; } break;         \
    }                                                                           \
  } while (0)

#if SN_LEVEL == 2
// Transposes the 16 x 16 block rows[t][c] into cols[c][t] in registers (unpack, in-lane
// shuffle, then two 128-bit lane shuffles).
SN_TARGET static inline void transpose16(__m512 (&r)[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4i + j], 128-bit lane L: column 4L + j of rows 4i .. 4i + 3
  for (int i = 0; i < 4; ++i) {
    u[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);
    const __m512 v1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD);
    const __m512 w0 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
    const __m512 w1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
    r[j] = _mm512_shuffle_f32x4(v0, w0, 0x88);
    r[4 + j] = _mm512_shuffle_f32x4(v1, w1, 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(v0, w0, 0xDD);
    r[12 + j] = _mm512_shuffle_f32x4(v1, w1, 0xDD);
  }
}

// sparse_pack_panels with 16 x 16 register transposes: 16 token rows (zeros past M) by 16
// columns at a time, masked at the k-range's end. Against the element loop (A/B in one run,
// 4096 x 4096, 90% CSR, 2 threads, weights from memory): M = 16 430 -> 419 us, M = 128
// 3159 -> 3061 us.
SN_TARGET void pack_panels(const float* x, int64_t M, int64_t K, int64_t ld, int64_t P,
                           float* panels, int64_t k_begin, int64_t k_end) {
  const int64_t num_panels = (M + P - 1) / P;
  for (int64_t p = 0; p < num_panels; ++p) {
    float* dst = panels + p * K * P;
    for (int64_t t0 = 0; t0 < P; t0 += 16) {
      const int64_t m0 = p * P + t0, rows = std::clamp<int64_t>(M - m0, 0, 16);
      for (int64_t k0 = k_begin; k0 < k_end; k0 += 16) {
        const int64_t kk = std::min<int64_t>(16, k_end - k0);
        const __mmask16 mk = static_cast<__mmask16>((1u << kk) - 1u);
        __m512 r[16];
        for (int64_t t = 0; t < 16; ++t)
          r[t] = t < rows ? _mm512_maskz_loadu_ps(mk, x + (m0 + t) * ld + k0) : _mm512_setzero_ps();
        transpose16(r);
        for (int64_t c = 0; c < kk; ++c) _mm512_storeu_ps(dst + (k0 + c) * P + t0, r[c]);
      }
    }
  }
}
#endif

SN_TARGET void forward_panels(const SparseWeight& w, const float* panels, int64_t M, int64_t P,
                              const float* bias, float* y, int64_t g0, int64_t g1) {
  SN_WITH_DECODER(w, fwd_panels_dispatch(d, w, panels, M, P, bias, y, g0, g1));
}

SN_TARGET void forward_direct(const SparseWeight& w, const float* x, int64_t M,
                              const float* bias, float* y, int64_t g0, int64_t g1) {
  SN_WITH_DECODER(w, fwd_direct_dispatch(d, w, x, M, bias, y, g0, g1));
}

SN_TARGET void grad_input_panel(const SparseWeight& w, const float* gy_panels, int64_t M,
                                int64_t P, int64_t p, float* scratch, float* gx) {
  SN_WITH_DECODER(w, grad_input_panel_dispatch(d, w, gy_panels, M, P, p, scratch, gx));
}

SN_TARGET void grad_input_direct(const SparseWeight& w, const float* gy, float* gx, int64_t m0,
                                 int64_t m1) {
  SN_WITH_DECODER(w, grad_input_direct_impl(d, w, gy, gx, m0, m1));
}

SN_TARGET void grad_values_panel(const SparseWeight& w, const float* xT, const float* gyT,
                                 int64_t Mp, float* gv, int64_t g0, int64_t g1) {
  const int64_t r = w.rows_per_group();
  SN_WITH_DECODER(w, grad_values_panel_impl(d, w, xT, gyT, Mp, gv, g0 * r, g1 * r));
}

SN_TARGET void grad_values_direct(const SparseWeight& w, const float* x, const float* gy,
                                  int64_t M, float* gv, int64_t g0, int64_t g1) {
  const int64_t r = w.rows_per_group();
  SN_WITH_DECODER(w, grad_values_direct_impl(d, w, x, gy, M, gv, g0 * r, g1 * r));
}

#undef SN_WITH_DECODER

}  // namespace sparse_impl::SN_NS
