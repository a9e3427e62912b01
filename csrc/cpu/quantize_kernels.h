// Symmetric per-row int8 quantization kernels on raw pointers (no ATen), one per ISA level.
//
// Contract for row r of a row-major [rows, K] matrix x:
//   amax = max |x[r, :]|   (0 for K == 0)
//   finite amax: scale = amax / 127, q = round_half_even(x * (127 / amax)) (q = 0 if amax == 0)
//   NaN or Inf anywhere in the row: scale = NaN and q = 0, so dequantizing gives a NaN row
//   (the poison stays in its row, as in an fp32 matmul; other rows are untouched).
#pragma once

#include <cstdint>

#include "float_convert.h"
#include "isa.h"

namespace scalenn::cpu {

// Rows [row_begin, row_end); x has row stride K.
void quantize_rows(CpuIsa isa, FloatKind kind, const void* x, int64_t K, int8_t* q,
                   float* scale, int64_t row_begin, int64_t row_end);

// y[r, k] = q[r, k] * scale[r], written as `kind`.
void dequantize_rows(CpuIsa isa, FloatKind kind, const int8_t* q, const float* scale, int64_t K,
                     void* y, int64_t row_begin, int64_t row_end);

}  // namespace scalenn::cpu
