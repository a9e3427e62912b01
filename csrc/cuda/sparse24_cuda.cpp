// CUDA binding of scalenn::mma_sp24_linear (built with SCALENN_CUDA): validates the packed
// register images against x and out_features, quantizes x per token for int8 weights, then runs
// the mma.sp kernel with the fused epilogue.
#include <torch/library.h>

#include <optional>
#include <string_view>

#include "binding_utils.h"
#include "quantize_kernels.h"
#include "sparse24_kernels.h"

namespace scalenn::cuda {
namespace {

at::Tensor mma_sp24_linear_cuda(const at::Tensor& x, const at::Tensor& values,
                                const at::Tensor& meta, const std::optional<at::Tensor>& w_scale,
                                const std::optional<at::Tensor>& bias,
                                c10::SymInt out_features_sym, c10::string_view activation) {
  const char* op = "mma_sp24_linear";
  check_float_input(x, "mma_sp24_linear: x");
  check_cuda(x, "mma_sp24_linear: x");
  check_same_device(x, values, "mma_sp24_linear: x", "values");
  check_same_device(x, meta, "mma_sp24_linear: x", "meta");
  check_dtype(meta, at::kInt, "mma_sp24_linear: meta");
  check_contiguous(values, "mma_sp24_linear: values");
  check_contiguous(meta, "mma_sp24_linear: meta");
  const bool is_int8 = values.scalar_type() == at::kChar;
  TORCH_CHECK_TYPE(is_int8 || values.scalar_type() == x.scalar_type(),
                   "mma_sp24_linear: values must be int8 or x's dtype (",
                   dtype_name(x.scalar_type()), "), got ", dtype_name(values.scalar_type()));
  TORCH_CHECK_TYPE(is_int8 || x.scalar_type() != at::kFloat,
                   "mma_sp24_linear: float32 x needs int8 values (there is no fp32 sparse MMA)");
  const int64_t N = out_features_sym.guard_int(__FILE__, __LINE__);
  TORCH_CHECK_VALUE(x.dim() >= 1, "mma_sp24_linear: x must have at least 1 dimension");
  const int64_t K = x.size(-1);
  const int64_t kstep = is_int8 ? 64 : 32;
  const int64_t per_lane = is_int8 ? 16 : 8;
  const int64_t tiles = (N + 15) / 16, steps = (K + kstep - 1) / kstep;
  TORCH_CHECK_VALUE(values.dim() == 4 && values.size(0) == tiles && values.size(1) == steps &&
                        values.size(2) == 32 && values.size(3) == per_lane,
                    "mma_sp24_linear: values must be [", tiles, ", ", steps, ", 32, ", per_lane,
                    "] for out_features=", N, " and K=", K, ", got ", values.sizes());
  TORCH_CHECK_VALUE(meta.dim() == 3 && meta.size(0) == tiles && meta.size(1) == steps &&
                        meta.size(2) == 32,
                    "mma_sp24_linear: meta must be [", tiles, ", ", steps, ", 32], got ",
                    meta.sizes());
  TORCH_CHECK_VALUE((K * (is_int8 ? 1 : 2)) % 16 == 0, "mma_sp24_linear: on CUDA K must be a "
                    "multiple of ", is_int8 ? 16 : 8, " (16-byte activation rows), got K=", K);
  const int act = activation_code(std::string_view(activation.data(), activation.size()), op);
  at::Tensor ws, bias_f;
  if (is_int8) {
    TORCH_CHECK_VALUE(w_scale.has_value() && w_scale->defined(),
                      "mma_sp24_linear: int8 values need w_scale");
    check_dtype(*w_scale, at::kFloat, "mma_sp24_linear: w_scale");
    TORCH_CHECK_VALUE(w_scale->dim() == 1 && w_scale->size(0) == N,
                      "mma_sp24_linear: w_scale must be [", N, "], got ", w_scale->sizes());
    check_same_device(x, *w_scale, "mma_sp24_linear: x", "w_scale");
    ws = w_scale->contiguous();
  }
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == N, "mma_sp24_linear: bias must be [",
                      N, "], got ", bias->sizes());
    check_same_device(x, *bias, "mma_sp24_linear: x", "bias");
    bias_f = bias->to(at::kFloat).contiguous();
  }
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor x2 = x.reshape({-1, K}).contiguous();
  const int64_t M = x2.size(0);
  TORCH_CHECK_VALUE(M <= INT32_MAX, "mma_sp24_linear: at most 2^31-1 rows on CUDA");
  at::Tensor y = at::empty({M, N}, x.options());
  const cudaStream_t stream = current_stream();
  at::Tensor operand = x2, row_scale;
  if (is_int8 && M > 0) {
    operand = at::empty({M, K}, x.options().dtype(at::kChar));
    row_scale = at::empty({M}, x.options().dtype(at::kFloat));
    C10_CUDA_CHECK(launch_quantize_per_row(float_kind_of(x.scalar_type()), x2.data_ptr(), M, K,
                                           operand.data_ptr<int8_t>(),
                                           row_scale.data_ptr<float>(), stream));
  }
  const int kind = is_int8 ? 2 : (x.scalar_type() == at::kBFloat16 ? 1 : 0);
  C10_CUDA_CHECK(launch_sparse24_linear(
      kind, values.data_ptr(), reinterpret_cast<const uint32_t*>(meta.data_ptr<int32_t>()),
      operand.data_ptr(), row_scale.defined() ? row_scale.data_ptr<float>() : nullptr,
      ws.defined() ? ws.data_ptr<float>() : nullptr,
      bias_f.defined() ? bias_f.data_ptr<float>() : nullptr, y.data_ptr(),
      float_kind_of(x.scalar_type()), M, N, K, steps, act, stream));
  auto out_shape = x.sizes().vec();
  out_shape.back() = N;
  return y.view(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(scalenn, CUDA, m) { m.impl("mma_sp24_linear", &mma_sp24_linear_cuda); }

}  // namespace scalenn::cuda
