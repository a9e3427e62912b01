// Sparse int8 weight x int8 activation kernels (SparseInt8Linear) on raw pointers, one per ISA
// level: AVX-512 VNNI (vpgatherdd / vpdpbusd), AVX2 (vpgatherdd / vpmulld / vpmaddubsw) and
// scalar. All three give bit-identical int32 accumulators.
//
// Format. A pruned int8 weight W [N, K] is stored as a list of ENTRIES per output row, packed in
// CHUNKS of 16 entries (a row is padded to whole chunks with zero-weight entries):
//   "elem"  one kept weight per entry (unstructured pruning): values int8 [chunks * 16];
//           column of entry e of chunk c = 4 * base[c] + rel[e]; the packer starts elem chunks
//           on a multiple of 64 columns, so the window kernel's 4 x 64-byte loads of the
//           activations at 4 * base are cache-line aligned (single-thread M=1: 0.20 -> 0.15 ms
//           at 4096 x 4096, 90%).
//   "quad"  one group of 4 consecutive columns per entry (1x4 / 1x16 blocks, 2:4, and any
//           pattern whose kept weights cluster in groups of 4): values int8 [chunks * 16 * 4],
//           the 4 weights of the group; first column of entry e = 4 * (base[c] + rel[e]).
//   rel     uint8 [chunks * 16]: the entry's position relative to its chunk's base, so a chunk
//           spans at most 256 columns (elem) or 256 groups (quad); the packer starts a new chunk
//           when the next entry is further away.
//   base    uint16 [chunks] (stored as int16), in units of 4 columns.
//   row_offsets int32 [N + 1]: row n owns chunks [row_offsets[n], row_offsets[n + 1]).
// Bytes per kept weight at 90% unstructured: 1 (value) + 1 (rel) + 1/8 (base) + the padding.
//
// Why entries are groups of 4 columns: vpdpbusd multiplies 4 u8 activations by 4 s8 weights and
// sums them into one int32 lane. A quad entry feeds it 4 weights at once; an elem entry feeds
// it a weight in one byte position and zeros in the other three (its dword is the weight
// zero-extended, shifted to the byte of its column), so one instruction serves both formats.
//
// Activations are quantized per token exactly as for Int8Linear (int8_gemm_kernels.h): rows of
// stride Kp = round_up(K, 4), u8 (q + 128) for AVX-512 VNNI, s8 q for AVX2 and scalar. With u8
// activations the kernel also sums each row's weights (one vpdpbusd with ones per chunk) and
// subtracts 128 * sum, so no precomputed correction has to stay consistent with the values.
//
// AVX-512 kernels. Few tokens (M <= 2): "window" kernels, per token and chunk: a chunk spans at
// most 256 columns (elem) / groups (quad) from its cache-line aligned base, so the activations
// there are loaded (4 / 16 zmm from L1) and used as a lookup table (vpermt2b / vpermt2d), the
// picked activations multiplied with the chunk's weights by one vpdpbusd; without AVX512_VBMI
// elem falls back to a vpgatherdd. More tokens: "panel" kernels with tokens along the vector:
// activations transposed into panels of P = 16/32/64 tokens (bytes per column for elem, dwords
// per group for quad); per 4 elem entries one vpermb/unpack interleave and one vpdpbusd per 16
// tokens, per quad entry one broadcast weight dword and one vpdpbusd per 16 tokens. AVX2 and
// scalar use per-token gathers / loops for every batch size.
//
// Bounds. The op checks row_offsets (monotone, inside the chunk arrays) and every base
// (4 * base < K) before a kernel runs, and the activation buffers carry kSlackBytes of slack
// past their end, so a chunk's furthest entry (base + 255) is always inside the buffer even if
// rel holds garbage: wrong rel values give wrong numbers, never an out-of-bounds read.
#pragma once

#include <cstdint>

#include "isa.h"

namespace scalenn::cpu {

enum class SparseInt8Format : int { elem = 0, quad = 1 };

constexpr int64_t kEntriesPerChunk = 16;
constexpr int64_t kMaxRel = 255;

struct SparseInt8Weight {
  SparseInt8Format format;
  int64_t N = 0, K = 0;
  const int8_t* values = nullptr;
  const uint8_t* rel = nullptr;
  const uint16_t* base = nullptr;
  const int32_t* row_offsets = nullptr;

  int64_t entry_bytes() const { return format == SparseInt8Format::quad ? 4 : 1; }
};

// Bytes past the end of an activation buffer (row-major or panel) the kernels may touch.
constexpr int64_t kSlackBytes = 4 * (kMaxRel + 1) + 64;

// ---- packing (w_int8 row-major [N, K], entries = its nonzeros / nonzero groups) ----
// Chunks row n needs.
int64_t sparse_int8_row_chunks(SparseInt8Format f, const int8_t* w, int64_t K, int64_t n);
// Writes row n's chunks starting at chunk `first`.
void sparse_int8_pack_row(SparseInt8Format f, const int8_t* w, int64_t K, int64_t n,
                          int64_t first, int8_t* values, uint8_t* rel, uint16_t* base);

// ---- compute ----
// Panel width (tokens per panel) the AVX-512 panel kernels use for M tokens; 0 = per-token
// kernels (gather / window lookup; also the answer on AVX2 and scalar).
int64_t sparse_int8_panel_width(CpuIsa isa, SparseInt8Format f, int64_t M);

// Transpose quantized activations a [M, Kp] (from quantize_activations) into panels of P
// tokens, Kp * P bytes each: quad "dword panels" panel[g][t] = dword g of token p*P + t; elem
// "byte panels" panel[k][t] = byte k of token p*P + t. Tokens >= M are 0x80 (q = 0).
// Fills panels [p_begin, p_end). Callers add (kMaxRel + 1) * 4 * P bytes of slack.
void sparse_int8_transpose_panels(SparseInt8Format f, const uint8_t* a, int64_t M, int64_t K,
                                  int64_t P, uint8_t* panels, int64_t p_begin, int64_t p_end);

struct SparseInt8Problem {
  int64_t M = 0;
  const uint8_t* a = nullptr;       // [M, Kp] (gather) or panels (panel kernel, P > 0)
  int64_t P = 0;                    // panel width, 0 = gather kernel
  int32_t* out_s32 = nullptr;       // [M, N] exact accumulators, or
  float* out = nullptr;             // [M, N] fma(acc, row_scale[m] * w_scale[n], bias[n])
  const float* row_scale = nullptr;
  const float* w_scale = nullptr;
  const float* bias = nullptr;
};

// Output rows [n_begin, n_end) for every token, single-threaded.
void sparse_int8_rows(CpuIsa isa, const SparseInt8Weight& w, const SparseInt8Problem& pr,
                      int64_t n_begin, int64_t n_end);

}  // namespace scalenn::cpu
