// CUDA bindings of scalenn::quantize_per_row / dequantize_per_row (built with SCALENN_CUDA).
#include <torch/library.h>

#include <tuple>

#include "binding_utils.h"
#include "quantize_kernels.h"

namespace scalenn::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> quantize_per_row_cuda(const at::Tensor& x) {
  check_float_input(x, "quantize_per_row: x");
  check_dim(x, 2, "quantize_per_row: x");
  check_contiguous(x, "quantize_per_row: x");
  TORCH_CHECK_VALUE(x.size(0) <= INT32_MAX, "quantize_per_row: at most 2^31-1 rows on CUDA");
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor q = at::empty_like(x, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  C10_CUDA_CHECK(launch_quantize_per_row(float_kind_of(x.scalar_type()), x.data_ptr(), x.size(0),
                                         x.size(1), q.data_ptr<int8_t>(), scale.data_ptr<float>(),
                                         current_stream()));
  return {q, scale};
}

at::Tensor dequantize_per_row_cuda(const at::Tensor& q, const at::Tensor& scale,
                                   at::ScalarType dtype) {
  check_dtype(q, at::kChar, "dequantize_per_row: q");
  check_dtype(scale, at::kFloat, "dequantize_per_row: scale");
  check_dim(q, 2, "dequantize_per_row: q");
  check_dim(scale, 1, "dequantize_per_row: scale");
  check_contiguous(q, "dequantize_per_row: q");
  check_contiguous(scale, "dequantize_per_row: scale");
  check_same_device(q, scale, "dequantize_per_row: q", "scale");
  TORCH_CHECK_VALUE(scale.size(0) == q.size(0),
                    "dequantize_per_row: scale must have one entry per row of q");
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
                   "dequantize_per_row: dtype must be float32, bfloat16 or float16, got ", dtype_name(dtype));
  c10::cuda::CUDAGuard guard(q.device());
  at::Tensor y = at::empty(q.sizes(), q.options().dtype(dtype));
  C10_CUDA_CHECK(launch_dequantize_per_row(float_kind_of(dtype), q.data_ptr<int8_t>(),
                                           scale.data_ptr<float>(), q.size(0), q.size(1),
                                           y.data_ptr(), current_stream()));
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(scalenn, CUDA, m) {
  m.impl("quantize_per_row", &quantize_per_row_cuda);
  m.impl("dequantize_per_row", &dequantize_per_row_cuda);
}

}  // namespace scalenn::cuda
