// Sparse kernels: element decoders shared by all levels, the per-ISA bodies (included three
// times from sparse_kernels_body.h), panel packing and the runtime dispatch.
#include "sparse_kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace scalenn::cpu {

int64_t SparseWeight::work_before(int64_t g) const {
  switch (kind) {
    case SparseLayoutKind::csr: return offsets[g];
    case SparseLayoutKind::bsr: return static_cast<int64_t>(offsets[g]) * R * C;
    case SparseLayoutKind::nm: return g * (K / m) * nkeep;
  }
  return 0;
}

namespace sparse_impl {

// Element decoders: the stored values of row n are j in [begin(n), end(n)); value(n, j) is
// W[n, col(n, j)] and lives at values[vidx(n, j)]. Plain code, inlined into every level.
template <class Idx>
struct CsrDecoder {
  static constexpr bool kChunkable = false;  // a row's elements per k-range need a search
  const float* v;
  const Idx* c;
  const int32_t* off;
  explicit CsrDecoder(const SparseWeight& w)
      : v(w.values), c(static_cast<const Idx*>(w.indices)), off(w.offsets) {}
  int64_t begin(int64_t n) const { return off[n]; }
  int64_t end(int64_t n) const { return off[n + 1]; }
  int64_t vidx(int64_t, int64_t j) const { return j; }
  float value(int64_t, int64_t j) const { return v[j]; }
  int64_t col(int64_t, int64_t j) const { return static_cast<int64_t>(c[j]); }
  // The lines of element j (value and index), for the row panel kernels' prefetch ahead.
  void prefetch_element(int64_t j) const {
    _mm_prefetch(reinterpret_cast<const char*>(v + j), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + j), _MM_HINT_T0);
  }
};

// NK: kept values per group known at compile time (2), or 0 for a runtime count.
template <int NK>
struct NmDecoder {
  static constexpr bool kChunkable = true;  // begin_at(): a k-range's elements by arithmetic
  const float* v;
  const uint8_t* pos;
  int64_t L, nkeep, m;
  explicit NmDecoder(const SparseWeight& w)
      : v(w.values), pos(static_cast<const uint8_t*>(w.indices)), L(w.K / w.m * w.nkeep),
        nkeep(NK ? NK : w.nkeep), m(w.m) {}
  int64_t begin(int64_t n) const { return n * L; }
  int64_t end(int64_t n) const { return (n + 1) * L; }
  int64_t vidx(int64_t, int64_t j) const { return j; }
  float value(int64_t, int64_t j) const { return v[j]; }
  int64_t col(int64_t n, int64_t j) const {
    const int64_t rel = j - n * L;
    return (NK ? rel / NK : rel / nkeep) * m + pos[j];
  }
  void prefetch_element(int64_t j) const {
    _mm_prefetch(reinterpret_cast<const char*>(v + j), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(pos + j), _MM_HINT_T0);
  }
  // First element of row n at or after column k (k a multiple of m).
  int64_t begin_at(int64_t n, int64_t k) const { return n * L + k / m * nkeep; }
  // Requests the values and positions of row n's columns [k0, k1): the chunked panel kernel
  // visits rows L elements apart, a jump the hardware prefetcher does not follow.
  void prefetch_range(int64_t n, int64_t k0, int64_t k1) const {
    const int64_t j0 = begin_at(n, k0), j1 = begin_at(n, k1);
    for (int64_t j = j0; j < j1; j += 16) _mm_prefetch(reinterpret_cast<const char*>(v + j), _MM_HINT_T0);
    for (int64_t j = j0; j < j1; j += 64) _mm_prefetch(reinterpret_cast<const char*>(pos + j), _MM_HINT_T0);
  }
};

// Row n = g * R + r of block row g; j counts (block, column-in-block) pairs of the block row.
struct BsrDecoder {
  static constexpr bool kChunkable = false;
  const float* v;
  const int32_t* bcol;
  const int32_t* off;
  int64_t R, C;
  explicit BsrDecoder(const SparseWeight& w)
      : v(w.values), bcol(static_cast<const int32_t*>(w.indices)), off(w.offsets), R(w.R),
        C(w.C) {}
  int64_t begin(int64_t n) const { return static_cast<int64_t>(off[n / R]) * C; }
  int64_t end(int64_t n) const { return static_cast<int64_t>(off[n / R + 1]) * C; }
  int64_t vidx(int64_t n, int64_t j) const { return ((j / C) * R + n % R) * C + j % C; }
  float value(int64_t n, int64_t j) const { return v[vidx(n, j)]; }
  int64_t col(int64_t, int64_t j) const { return static_cast<int64_t>(bcol[j / C]) * C + j % C; }
  void prefetch_element(int64_t) const {}  // block rows run fwd_panel_bsr, not the row kernels
};

}  // namespace sparse_impl

#define SN_NS avx512
#define SN_TARGET SCALENN_TARGET_AVX512
#define SN_LEVEL 2
#include "sparse_kernels_body.h"
#undef SN_NS
#undef SN_TARGET
#undef SN_LEVEL

#define SN_NS avx2
#define SN_TARGET SCALENN_TARGET_AVX2
#define SN_LEVEL 1
#include "sparse_kernels_body.h"
#undef SN_NS
#undef SN_TARGET
#undef SN_LEVEL

#define SN_NS scalar
#define SN_TARGET
#define SN_LEVEL 0
#include "sparse_kernels_body.h"
#undef SN_NS
#undef SN_TARGET
#undef SN_LEVEL

int64_t sparse_vector_width(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::avx512: return 16;
    case CpuIsa::avx2: return 8;
    default: return 1;
  }
}

int64_t sparse_panel_width(CpuIsa isa, int64_t M) {
  const int64_t vw = sparse_vector_width(isa);
  // 4 chains x NV accumulators must fit the register file: 32 zmm allow NV = 4, 16 ymm NV = 2.
  const int64_t max_nv = isa == CpuIsa::avx2 ? 2 : 4;
  const int64_t nv = std::clamp<int64_t>((M + vw - 1) / vw, 1, max_nv);
  return nv * vw;
}

void sparse_pack_panels(CpuIsa isa, const float* x, int64_t M, int64_t K, int64_t ld, int64_t P,
                        float* panels, int64_t k_begin, int64_t k_end) {
  if (isa == CpuIsa::avx512 && P % 16 == 0) {
    sparse_impl::avx512::pack_panels(x, M, K, ld, P, panels, k_begin, k_end);
    return;
  }
  const int64_t num_panels = (M + P - 1) / P;
  for (int64_t p = 0; p < num_panels; ++p) {
    const int64_t m0 = p * P, mvalid = std::min<int64_t>(P, M - m0);
    float* dst = panels + p * K * P;
    // Walk k in short strips so the mvalid source rows stay in cache while transposing.
    constexpr int64_t kStrip = 64;
    for (int64_t k0 = k_begin; k0 < k_end; k0 += kStrip) {
      const int64_t k1 = std::min(k_end, k0 + kStrip);
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t t = mvalid; t < P; ++t) dst[k * P + t] = 0.0f;
      for (int64_t t = 0; t < mvalid; ++t) {
        const float* src = x + (m0 + t) * ld;
        for (int64_t k = k0; k < k1; ++k) dst[k * P + t] = src[k];
      }
    }
  }
}

#define SN_DISPATCH(isa, fn, ...)                                          \
  do {                                                                     \
    switch (isa) {                                                         \
      case CpuIsa::avx512: sparse_impl::avx512::fn(__VA_ARGS__); break;    \
      case CpuIsa::avx2: sparse_impl::avx2::fn(__VA_ARGS__); break;        \
      default: sparse_impl::scalar::fn(__VA_ARGS__); break;                \
    }                                                                      \
  } while (0)

void sparse_forward_panels(CpuIsa isa, const SparseWeight& w, const float* panels, int64_t M,
                           int64_t P, const float* bias, float* y, int64_t g_begin,
                           int64_t g_end) {
  SN_DISPATCH(isa, forward_panels, w, panels, M, P, bias, y, g_begin, g_end);
}

void sparse_forward_direct(CpuIsa isa, const SparseWeight& w, const float* x, int64_t M,
                           const float* bias, float* y, int64_t g_begin, int64_t g_end) {
  SN_DISPATCH(isa, forward_direct, w, x, M, bias, y, g_begin, g_end);
}

void sparse_grad_input_panel(CpuIsa isa, const SparseWeight& w, const float* gy_panels,
                             int64_t M, int64_t P, int64_t p, float* scratch, float* gx) {
  SN_DISPATCH(isa, grad_input_panel, w, gy_panels, M, P, p, scratch, gx);
}

void sparse_grad_input_direct(CpuIsa isa, const SparseWeight& w, const float* gy, float* gx,
                              int64_t m_begin, int64_t m_end) {
  SN_DISPATCH(isa, grad_input_direct, w, gy, gx, m_begin, m_end);
}

void sparse_grad_values_panel(CpuIsa isa, const SparseWeight& w, const float* xT,
                              const float* gyT, int64_t Mp, float* gv, int64_t g_begin,
                              int64_t g_end) {
  SN_DISPATCH(isa, grad_values_panel, w, xT, gyT, Mp, gv, g_begin, g_end);
}

void sparse_grad_values_direct(CpuIsa isa, const SparseWeight& w, const float* x,
                               const float* gy, int64_t M, float* gv, int64_t g_begin,
                               int64_t g_end) {
  SN_DISPATCH(isa, grad_values_direct, w, x, gy, M, gv, g_begin, g_end);
}

#undef SN_DISPATCH

}  // namespace scalenn::cpu
