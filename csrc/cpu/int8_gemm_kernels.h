// Int8 GEMM for Int8Linear on raw pointers (no ATen beyond ATen/Parallel.h), one microkernel per
// ISA level: AVX-512 VNNI (vpdpbusd), AVX2 (vpmaddubsw/vpmaddwd with a sign trick) and scalar.
// All three produce bit-identical int32 accumulators.
//
// Packed weight layout (built once by pack_weight; the same bytes serve every ISA):
//   N16 = N rounded up to 16 (zero channels), Kp = K rounded up to 4 (zero k).
//   Panels of 64 output channels (the last one may hold 16, 32 or 48). Panel p starts at byte
//   p*64*Kp and holds, for each group of 4 k (s = 0..Kp/4-1), nb blocks of 16 channels x 4 k:
//     byte (p*64*Kp) + s*nb*64 + j*64 + c*4 + t  =  w[p*64 + j*16 + c][4*s + t]
//   so the microkernel streams one panel front to back (one hardware-prefetch stream), and one
//   64-byte load is one zmm operand of vpdpbusd.
//   After the N16*Kp weight bytes: int32 comp[N16] = -128 * sum_k w[n][k], the correction for
//   the VNNI path, which feeds u8 activations (q + 128) because vpdpbusd is u8 x s8.
//
// Activations are quantized per row (see quantize_kernels.h for the exact contract) into a
// buffer of stride Kp: u8 (q + 128) for VNNI, s8 q for AVX2/scalar; padding k contributes 0
// because the padded weights are 0.
//
// Exactness: the true sum_k q*w fits int32 for K <= kMaxK. VNNI's intermediate sums may wrap,
// but int32 addition is modular, so adding comp gives the exact result.
#pragma once

#include <cstdint>

#include "float_convert.h"
#include "isa.h"

namespace scalenn::cpu {

constexpr int64_t kPanel = 64;            // output channels per packed panel
constexpr int64_t kMaxK = 131072;         // 131072 * 127 * 127 < 2^31
enum class Activation : int { none = 0, relu = 1, gelu = 2 };

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
inline int64_t packed_k(int64_t K) { return round_up(K, 4); }
inline int64_t packed_n(int64_t N) { return round_up(N, 16); }
inline int64_t packed_bytes(int64_t N, int64_t K) { return packed_n(N) * (packed_k(K) + 4); }
inline int64_t num_panels(int64_t N) { return (packed_n(N) + kPanel - 1) / kPanel; }
// Row-block height: one block of quantized activations (MC x Kp bytes) is reused against every
// weight panel, so it should stay in L2 (1 MiB) next to the weight stream and the accumulator
// scratch; the bigger the block, the fewer times the weights are read. A multiple of `mr`.
inline int64_t row_block(int64_t Kp, int64_t mr) {
  int64_t mc = (640 * 1024) / (Kp > 1 ? Kp : 1);
  return mc / mr * mr > mr ? mc / mr * mr : mr;
}

// w [N, K] int8 row-major -> packed (packed_bytes(N, K) bytes). Channels [n_begin, n_end) of
// the padded range [0, N16), so the op can pack in parallel over panels.
void pack_weight(const int8_t* w, int64_t N, int64_t K, int8_t* packed, int64_t n_begin,
                 int64_t n_end);
// Inverse of pack_weight for rows [n_begin, n_end) of w [N, K].
void unpack_weight(const int8_t* packed, int64_t N, int64_t K, int8_t* w, int64_t n_begin,
                   int64_t n_end);

// Whether activations for `isa` are stored as u8 (q + 128) rather than s8 q.
inline bool activations_unsigned(CpuIsa isa) { return isa == CpuIsa::avx512; }

// Quantize rows [row_begin, row_end) of x [rows, K] (`kind`) into a [rows, Kp] activation buffer
// for `isa`, writing each row's scale. static_scale <= 0: dynamic per-row symmetric
// (scale = amax/127, q = round_half_even(x * (127/amax))); static_scale > 0: a fixed scale,
// q = clamp(round_half_even(x * (1/static_scale)), -127, 127). A row holding NaN/Inf gets scale
// NaN and q = 0 in both modes (its output row becomes NaN).
void quantize_activations(CpuIsa isa, FloatKind kind, const void* x, int64_t K, float static_scale,
                          uint8_t* a, float* row_scale, int64_t row_begin, int64_t row_end);
// y[i] = act(y[i]) for i in [0, n), the activations of the int8 GEMM epilogue (relu keeps NaN,
// gelu is the erf form to ~1e-7); scalar, for epilogues outside the GEMM.
void activate_inplace(Activation act, float* y, int64_t n);
// Copy already-quantized int8 rows into the activation buffer (the exact int32 test op).
void copy_int8_activations(CpuIsa isa, const int8_t* q, int64_t K, uint8_t* a, int64_t row_begin,
                           int64_t row_end);

struct GemmProblem {
  int64_t M = 0, N = 0, K = 0;
  const uint8_t* a = nullptr;        // [M, Kp] from quantize_activations / copy_int8_activations
  const int8_t* packed = nullptr;    // pack_weight output
  // Exactly one of the two outputs:
  int32_t* out_s32 = nullptr;        // [M, N] exact accumulators
  void* out = nullptr;               // [M, N] `out_kind`: row_scale*w_scale*acc + bias, activated
  FloatKind out_kind = FloatKind::f32;
  const float* row_scale = nullptr;  // [M]
  const float* w_scale = nullptr;    // [N]
  const float* bias = nullptr;       // [N] or null
  Activation act = Activation::none;
};

// Rows [m_begin, m_end) x panels [p_begin, p_end) of the product, single-threaded; the op
// splits the (rows, panels) rectangle across threads.
void gemm_tile(CpuIsa isa, const GemmProblem& g, int64_t m_begin, int64_t m_end, int64_t p_begin,
               int64_t p_end);

// Exact GELU (0.5 x (1 + erf(x / sqrt 2))) as the kernels compute it (erf to ~1e-7), exposed for
// the reference tests.
float gelu_scalar(float x);

}  // namespace scalenn::cpu
