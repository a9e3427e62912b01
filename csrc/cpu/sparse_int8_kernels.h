// Sparse int8 weight x int8 activation kernels (SparseInt8Linear) on raw pointers, one per ISA
// level: AVX-512 VNNI (vpgatherdd / vpdpbusd), AVX2 (vpgatherdd / vpmulld / vpmaddubsw) and
// scalar. All three give bit-identical int32 accumulators.
//
// Format. A pruned int8 weight W [N, K] is stored as CHUNKS: runs of entries of one output row
// (padded with zero-weight entries) within a window of columns from a base:
//   "elem16" one kept weight per entry (unstructured pruning). Rows in GROUPS of 16 (rows
//            16g..16g+15; rows >= N of the last group are all padding). A group is a run of
//            STEPS of 64 entries, one zmm of rel and one of values: row r's chunk of the step
//            is entries 4r..4r+3 (dword lane r), all 16 chunks share one base. The packer takes
//            the lowest column any row of the group still has, rounds it down to 64 (aligned
//            windows), and gives each row up to 4 of its next kept weights below base +
//            kElemSpan. Rows advance independently, so a step is ~80% full at 90% sparsity.
//            values int8 [chunks * 4], rel uint8 [chunks * 4]: column = 4 * base[step] + rel
//            (or, as SparseInt8Linear keeps them, both [steps, 64] views of one [steps, 128]
//            array: a step's rel then its values, one stream for the kernel to read);
//            base uint16 [chunks / 16], one per step; row_offsets int32 [N + 1]: row_offsets[n] =
//            first chunk of the group holding row n (all rows of a group share it; a multiple
//            of 16), row_offsets[N] = chunks, so group g owns chunks [row_offsets[16g],
//            row_offsets[min(16g + 16, N)]), step by step. Rows here are PACKED rows, and
//            row_order int32 [N] maps packed row p to output row row_order[p]: the packer sorts
//            the rows by kept weights when that saves >= 5% of the steps (a group has as many
//            steps as its fullest row needs: a pruned CNN classifier with 0-644 kept per row
//            filled 51% of the slots in output order, 80% sorted). quad keeps output order.
//   "quad"   one group of 4 consecutive columns per entry (1x4 / 1x16 blocks, and any pattern
//            whose kept weights cluster in groups of 4), chunks of 16 entries: values int8
//            [chunks * 16 * 4], the 4 weights of the group; rel uint8 [chunks * 16]; first
//            column of entry e of chunk c = 4 * (base[c] + rel[e]); base uint16 [chunks]; row n
//            owns chunks [row_offsets[n], row_offsets[n + 1]). The packer starts a chunk when it
//            is full or the next group is further than 255 groups from its base (a multiple of
//            16).
// Bytes per kept weight at 90% unstructured (elem16): (1 value + 1 rel) / fill + base = ~2.5.
// Positions alone carry H(0.1) / 0.1 = 4.7 bits per kept weight, so no byte-valued format of
// random 90% masks gets below ~1.6 bytes; the steps trade some fill for a kernel that does 64
// products per lookup, and lanes that are rows (no reductions).
//
// vpdpbusd multiplies 4 u8 activations by 4 s8 weights and sums them into one int32 lane: a
// quad entry feeds it 4 weights at once, an elem16 row chunk its 4 entries.
//
// Activations are quantized per token exactly as for Int8Linear (int8_gemm_kernels.h): rows of
// stride Kp = round_up(K, 4), u8 (q + 128) for AVX-512 VNNI, s8 q for AVX2 and scalar. With u8
// activations the kernel also sums each row's weights (one vpdpbusd with ones per chunk) and
// subtracts 128 * sum, so no precomputed correction has to stay consistent with the values.
//
// AVX-512 kernels. "Window" kernels, per token (elem16: in passes of up to 8 tokens over blocks
// of groups): an elem16 step (quad chunk) spans at most
// kElemSpan columns (256 groups) from its cache-line aligned base, so the activations there are
// loaded (2 / 16 zmm from L1) and used as a lookup table (vpermt2b / vpermt2d) that picks the
// entries' activations, multiplied with the weights by one vpdpbusd: for elem16 64 entries of
// 16 rows per lookup, for every M; for quad 16 entries, M <= 2. Without AVX512_VBMI elem16
// uses vpgatherdd per token below 3 tokens. More tokens: "panel" kernels
// with tokens along the vector: activations transposed into panels of P tokens (elem16: bytes
// per column, P = 64; quad: dwords per group, P = 16/32/64): per elem16 row chunk one unpack
// interleave and one vpdpbusd per 16 tokens, per quad entry one broadcast weight dword and one
// vpdpbusd per 16 tokens. AVX2 and scalar use per-token gathers / loops for every batch size.
//
// Bounds. The op checks row_offsets (monotone, from 0 to the number of chunks), row_order
// (inside [0, N)) and, right before a thread runs a piece of rows, that piece's bases
// (4 * base < K); the activation buffers carry kSlackBytes of slack
// past their end, so a chunk's furthest entry (base + 255) is always inside the buffer even if
// rel holds garbage: wrong rel values give wrong numbers, never an out-of-bounds read.
#pragma once

#include <cstdint>

#include "isa.h"

namespace scalenn::cpu {

enum class SparseInt8Format : int { elem16 = 0, quad = 1 };

constexpr int64_t kEntriesPerChunk = 16;  // quad
constexpr int64_t kMaxRel = 255;
constexpr int64_t kElemRows = 16;   // elem16: rows per group = chunks per step
constexpr int64_t kElemSlots = 4;   // elem16: entries per chunk (a row's share of a step)
constexpr int64_t kElemStep = kElemRows * kElemSlots;
constexpr int64_t kElemSpan = 128;  // elem16: columns a step spans (one 128-byte vpermt2b table)

struct SparseInt8Weight {
  SparseInt8Format format;
  int64_t N = 0, K = 0;
  const int8_t* values = nullptr;
  const uint8_t* rel = nullptr;
  const uint16_t* base = nullptr;
  const int32_t* row_offsets = nullptr;
  const int32_t* row_order = nullptr;  // packed row p -> output row row_order[p] (in [0, N))
  // elem16: bytes from one step's 64 rel (values) to the next step's: kElemStep when rel and
  // values are arrays of their own, 2 * kElemStep when they are interleaved step by step.
  int64_t step_bytes = kElemStep;

  int64_t entry_bytes() const { return format == SparseInt8Format::quad ? 4 : 1; }
  int64_t chunk_entries() const { return format == SparseInt8Format::quad ? kEntriesPerChunk : kElemSlots; }
  // Output rows per packing block (a quad row or an elem16 group) = chunks per base entry.
  int64_t block_rows() const { return format == SparseInt8Format::quad ? 1 : kElemRows; }
  int64_t chunks_per_base() const { return block_rows(); }
  // elem16: offset in rel and values of chunk c's 4 entries (row c % 16 of step c / 16).
  int64_t elem16_chunk(int64_t c) const {
    return c / kElemRows * step_bytes + c % kElemRows * kElemSlots;
  }
};

// Bytes past the end of an activation buffer (row-major or panel) the kernels may touch.
constexpr int64_t kSlackBytes = 4 * (kMaxRel + 1) + 64;

// ---- packing (w_int8 row-major [N, K]; entries = its nonzeros / nonzero groups) ----
// Rows per packing block: 1 (quad) or kElemRows (elem16). Block b = packed rows [b * R, b * R +
// R); packed row p is row order[p] of w.
int64_t sparse_int8_block_rows(SparseInt8Format f);
// Chunks block b needs.
int64_t sparse_int8_block_chunks(SparseInt8Format f, const int8_t* w, const int32_t* order,
                                 int64_t N, int64_t K, int64_t b);
// Writes block b's chunks starting at chunk `first` (a multiple of 16 for elem16); base entries
// start at first / chunks-per-base.
void sparse_int8_pack_block(SparseInt8Format f, const int8_t* w, const int32_t* order, int64_t N,
                            int64_t K, int64_t b, int64_t first, int8_t* values, uint8_t* rel,
                            uint16_t* base);

// The largest of n chunk bases (the op's bounds check runs it on every call, so it is vectorized).
uint16_t max_u16(CpuIsa isa, const uint16_t* v, int64_t n);

// ---- compute ----
// Panel width (tokens per panel) the AVX-512 panel kernels use for M tokens; 0 = per-token
// kernels (gather / window lookup; also the answer on AVX2 and scalar).
int64_t sparse_int8_panel_width(CpuIsa isa, SparseInt8Format f, int64_t M);

// Transpose quantized activations a [M, Kp] (from quantize_activations) into panels of P
// tokens, Kp * P bytes each: quad "dword panels" panel[g][t] = dword g of token p*P + t; elem16
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

// Packed rows [n_begin, n_end) for every token, single-threaded; for elem16 n_begin is a multiple
// of 16 and n_end a multiple of 16 or N.
void sparse_int8_rows(CpuIsa isa, const SparseInt8Weight& w, const SparseInt8Problem& pr,
                      int64_t n_begin, int64_t n_end);

}  // namespace scalenn::cpu
