// CPU implementations of scalenn::quantize_per_row / dequantize_per_row (ATen side: checks,
// allocation, threading); the arithmetic lives in quantize_kernels.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../checks.h"
#include "float_kind.h"
#include "quantize_kernels.h"

namespace scalenn::cpu {
namespace {

// About 64 KiB of input per task, so tiny rows are batched and long rows split one per task.
int64_t row_grain(int64_t K) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)); }

std::tuple<at::Tensor, at::Tensor> quantize_per_row_cpu(const at::Tensor& x) {
  check_float_input(x, "quantize_per_row: x");
  check_dim(x, 2, "quantize_per_row: x");
  check_contiguous(x, "quantize_per_row: x");
  const int64_t rows = x.size(0), K = x.size(1);
  at::Tensor q = at::empty({rows, K}, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({rows}, x.options().dtype(at::kFloat));
  const CpuIsa isa = current_isa();
  const FloatKind kind = float_kind(x.scalar_type());
  const void* xp = x.data_ptr();
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = scale.data_ptr<float>();
  at::parallel_for(0, rows, row_grain(K), [&](int64_t begin, int64_t end) {
    quantize_rows(isa, kind, xp, K, qp, sp, begin, end);
  });
  return {q, scale};
}

at::Tensor dequantize_per_row_cpu(const at::Tensor& q, const at::Tensor& scale,
                                  at::ScalarType dtype) {
  check_dtype(q, at::kChar, "dequantize_per_row: q");
  check_dtype(scale, at::kFloat, "dequantize_per_row: scale");
  check_dim(q, 2, "dequantize_per_row: q");
  check_dim(scale, 1, "dequantize_per_row: scale");
  check_contiguous(q, "dequantize_per_row: q");
  check_contiguous(scale, "dequantize_per_row: scale");
  check_same_device(q, scale, "dequantize_per_row: q", "scale");
  TORCH_CHECK_VALUE(scale.size(0) == q.size(0), "dequantize_per_row: scale must have one entry "
                    "per row of q (", q.size(0), "), got ", scale.size(0));
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
                   "dequantize_per_row: dtype must be float32, bfloat16 or float16, got ", dtype_name(dtype));
  const int64_t rows = q.size(0), K = q.size(1);
  at::Tensor y = at::empty({rows, K}, q.options().dtype(dtype));
  const CpuIsa isa = current_isa();
  const FloatKind kind = float_kind(dtype);
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  void* yp = y.data_ptr();
  at::parallel_for(0, rows, row_grain(K), [&](int64_t begin, int64_t end) {
    dequantize_rows(isa, kind, qp, sp, K, yp, begin, end);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(scalenn, CPU, m) {
  m.impl("quantize_per_row", &quantize_per_row_cpu);
  m.impl("dequantize_per_row", &dequantize_per_row_cpu);
}

}  // namespace scalenn::cpu
