// CUDA bindings of scalenn::int8_pack_weight / scalenn::int8_linear (built with SCALENN_CUDA).
// Activations are quantized per token by the quantize_per_row kernel, then the int8 tensor-core
// GEMM applies row_scale * w_scale + bias and the activation in its epilogue.
#include <torch/library.h>

#include <optional>
#include <string_view>

#include "binding_utils.h"
#include "int8_gemm_kernels.h"
#include "quantize_kernels.h"

namespace scalenn::cuda {
namespace {

at::Tensor int8_pack_weight_cuda(const at::Tensor& w_int8) {
  check_dtype(w_int8, at::kChar, "int8_pack_weight: w_int8");
  check_dim(w_int8, 2, "int8_pack_weight: w_int8");
  // The CUDA kernel reads the plain [N, K] row-major weight: packing is a contiguous copy.
  return w_int8.clone(at::MemoryFormat::Contiguous);
}

at::Tensor int8_linear_cuda(const at::Tensor& x, const at::Tensor& w_packed,
                            const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                            c10::SymInt out_features_sym, c10::string_view activation) {
  const char* op = "int8_linear";
  check_float_input(x, "int8_linear: x");
  check_dtype(w_packed, at::kChar, "int8_linear: w_packed");
  check_dtype(w_scale, at::kFloat, "int8_linear: w_scale");
  check_dim(w_packed, 2, "int8_linear: w_packed");
  check_cuda(x, "int8_linear: x");
  check_same_device(x, w_packed, "int8_linear: x", "w_packed");
  check_same_device(x, w_scale, "int8_linear: x", "w_scale");
  const int64_t N = out_features_sym.guard_int(__FILE__, __LINE__);
  TORCH_CHECK_VALUE(x.dim() >= 1, "int8_linear: x must have at least 1 dimension");
  const int64_t K = x.size(-1);
  TORCH_CHECK_VALUE(w_packed.size(0) == N && w_packed.size(1) == K,
                    "int8_linear: expected w_packed [", N, ", ", K, "] (out_features, x's K), got ",
                    w_packed.sizes());
  TORCH_CHECK_VALUE(w_scale.dim() == 1 && w_scale.size(0) == N, "int8_linear: w_scale must be [",
                    N, "], got ", w_scale.sizes());
  const int act = activation_code(std::string_view(activation.data(), activation.size()), op);
  at::Tensor bias_f;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == N, "int8_linear: bias must be [", N,
                      "], got ", bias->sizes());
    check_same_device(x, *bias, "int8_linear: x", "bias");
    bias_f = bias->to(at::kFloat).contiguous();
  }
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor x2 = x.reshape({-1, K}).contiguous();
  const int64_t M = x2.size(0);
  TORCH_CHECK_VALUE(M <= INT32_MAX, "int8_linear: at most 2^31-1 rows on CUDA");
  at::Tensor q = at::empty({M, K}, x.options().dtype(at::kChar));
  at::Tensor row_scale = at::empty({M}, x.options().dtype(at::kFloat));
  at::Tensor y = at::empty({M, N}, x.options());
  const cudaStream_t stream = current_stream();
  if (M > 0) {
    C10_CUDA_CHECK(launch_quantize_per_row(float_kind_of(x.scalar_type()), x2.data_ptr(), M, K,
                                           q.data_ptr<int8_t>(), row_scale.data_ptr<float>(),
                                           stream));
  }
  const at::Tensor w = w_packed.contiguous();
  const at::Tensor ws = w_scale.contiguous();
  C10_CUDA_CHECK(launch_int8_gemm(q.data_ptr<int8_t>(), row_scale.data_ptr<float>(),
                                  w.data_ptr<int8_t>(), ws.data_ptr<float>(),
                                  bias_f.defined() ? bias_f.data_ptr<float>() : nullptr,
                                  y.data_ptr(), float_kind_of(x.scalar_type()), M, N, K, act,
                                  stream));
  auto out_shape = x.sizes().vec();
  out_shape.back() = N;
  return y.view(out_shape);
}

}  // namespace

// The compiled kernel is its own op: scalenn::int8_linear on CUDA tensors is served from Python
// (scalenn/_ops/gpu_backends.py), which picks this kernel or the Triton one per call.
TORCH_LIBRARY_FRAGMENT(scalenn, m) {
  m.def("int8_linear_mma(Tensor x, Tensor w_packed, Tensor w_scale, Tensor? bias, "
        "SymInt out_features, str activation) -> Tensor");
}

TORCH_LIBRARY_IMPL(scalenn, CUDA, m) {
  m.impl("int8_pack_weight", &int8_pack_weight_cuda);
  m.impl("int8_linear_mma", &int8_linear_cuda);
}

}  // namespace scalenn::cuda
