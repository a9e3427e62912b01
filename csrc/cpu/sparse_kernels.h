// Sparse weight x dense activation kernels on raw pointers (no ATen), one per ISA level.
//
// The weight W [N, K] (out_features x in_features) is held in one of three canonical,
// device-neutral layouts (the module's persistent state; see scalenn/compress/sparse_format.py):
//   csr   values f32 [nnz], col uint16 (stored as int16, K <= 65536) or int32 [nnz],
//         offsets int32 [N + 1]; columns ascending within a row.
//   bsr   blocks of R x C: values f32 [nblocks, R, C], block column int32 [nblocks]
//         (in units of C), offsets int32 [N / R + 1] over block rows.
//   nm    N:M along K (nkeep of every m): values f32 [N, K / m * nkeep], positions uint8
//         [N, K / m * nkeep] (0..m-1, ascending in a group); no offsets.
// Indices are validated once when a layout is built or loaded (Python), not per call.
//
// Activations are float32. The batch ("token") dimension is the vector dimension: x is packed
// transposed into panels [K][P] (P = a few vector widths) so that for each kept w[n, k] the
// kernel does acc[m:m+P] += w * xT[k, m:m+P] with FMA. Small batches (M <= kDirectMaxM) use
// "direct" kernels over row-major x instead: a sparse matrix-vector product per batch row, with
// gathers (csr), permutes (2:4) or contiguous loads (bsr).
//
// Work is split by "row groups": rows for csr and nm, block rows (R rows) for bsr.
#pragma once

#include <cstdint>

#include "isa.h"

namespace scalenn::cpu {

enum class SparseLayoutKind : int { csr = 0, bsr = 1, nm = 2 };

struct SparseWeight {
  SparseLayoutKind kind;
  int64_t N, K;             // out_features, in_features
  const float* values;
  const void* indices;      // csr: uint16/int32 columns; bsr: int32 block columns; nm: uint8
  bool idx16;               // csr only: indices are uint16
  const int32_t* offsets;   // csr: [N+1]; bsr: [N/R+1]; nm: nullptr
  int64_t R = 1, C = 1;     // bsr block shape
  int64_t nkeep = 1, m = 1; // nm pattern

  int64_t groups() const { return kind == SparseLayoutKind::bsr ? N / R : N; }
  int64_t rows_per_group() const { return kind == SparseLayoutKind::bsr ? R : 1; }
  // Number of stored values in row groups [0, g): the work measure used to balance threads.
  int64_t work_before(int64_t g) const;
};

// Batches up to this size use the direct (row-major x) kernels.
constexpr int64_t kDirectMaxM = 4;

// float lanes per vector at `isa` (16, 8, 1); panels are a multiple of it.
int64_t sparse_vector_width(CpuIsa isa);
// Panel width for a batch of M at `isa`: up to 4 vectors, no wider than M needs.
int64_t sparse_panel_width(CpuIsa isa, int64_t M);

// panels[p][k][t] = x[p*P + t, k] (zero for p*P + t >= M); x is row-major [M, ld], k < K.
// Packs the columns [k_begin, k_end) of every panel (the unit threads split). At AVX-512, with P
// a multiple of 16, by register transposes; else element by element.
void sparse_pack_panels(CpuIsa isa, const float* x, int64_t M, int64_t K, int64_t ld, int64_t P,
                        float* panels, int64_t k_begin, int64_t k_end);

// y[m, n] = sum_k W[n, k] x[m, k] (+ bias[n]) for the rows of groups [g_begin, g_end).
// Panel form: x packed by sparse_pack_panels with width P (= sparse_panel_width(isa, M)).
void sparse_forward_panels(CpuIsa isa, const SparseWeight& w, const float* panels, int64_t M,
                           int64_t P, const float* bias, float* y, int64_t g_begin,
                           int64_t g_end);
// Direct form: x row-major [M, K].
void sparse_forward_direct(CpuIsa isa, const SparseWeight& w, const float* x, int64_t M,
                           const float* bias, float* y, int64_t g_begin, int64_t g_end);

// grad_x[m, k] = sum_n grad_y[m, n] W[n, k] for the batch rows of ONE panel `p` of grad_y
// (grad_y packed as panels over N with width P). scratch: K * P floats. Row order n ascending,
// element order ascending: the same order as the direct form, so both give identical results.
void sparse_grad_input_panel(CpuIsa isa, const SparseWeight& w, const float* gy_panels,
                             int64_t M, int64_t P, int64_t p, float* scratch, float* gx);
// Direct form for batch rows [m_begin, m_end): grad_y row-major [M, N], grad_x [M, K].
void sparse_grad_input_direct(CpuIsa isa, const SparseWeight& w, const float* gy, float* gx,
                              int64_t m_begin, int64_t m_end);

// grad_values[v] = sum_m grad_y[m, n] x[m, k] for each stored value v = W[n, k] of groups
// [g_begin, g_end), written in the values layout. xT [K][Mp], gyT [N][Mp] (zero-padded).
void sparse_grad_values_panel(CpuIsa isa, const SparseWeight& w, const float* xT,
                              const float* gyT, int64_t Mp, float* gv, int64_t g_begin,
                              int64_t g_end);
// Direct form: x [M, K], grad_y [M, N] row-major.
void sparse_grad_values_direct(CpuIsa isa, const SparseWeight& w, const float* x,
                               const float* gy, int64_t M, float* gv, int64_t g_begin,
                               int64_t g_end);

}  // namespace scalenn::cpu
