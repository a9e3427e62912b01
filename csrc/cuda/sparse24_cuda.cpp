// CUDA bindings of scalenn::mma_sp24_linear and scalenn::wgmma_sp24_linear (built with
// SCALENN_CUDA): validate the packed register images against x and out_features, quantize x per
// token for int8 weights, then run the mma.sp kernel (any GPU from sm_80) or the Hopper wgmma.sp
// kernel (sm_90a code) with the fused epilogue. Both read the same images.
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "binding_utils.h"
#include "quantize_kernels.h"
#include "sparse24_kernels.h"

namespace scalenn::cuda {
namespace {

enum class Sparse24Kernel { kMmaSp, kWgmmaSp };

// Both ops: the same checks and epilogue arguments, the kernel fixed by the template argument.
template <Sparse24Kernel kWhich>
at::Tensor sp24_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                            const std::optional<at::Tensor>& w_scale,
                            const std::optional<at::Tensor>& bias, c10::SymInt out_features_sym,
                            c10::string_view activation) {
  constexpr bool wgmma = kWhich == Sparse24Kernel::kWgmmaSp;
  const char* op = wgmma ? "wgmma_sp24_linear" : "mma_sp24_linear";
  const std::string prefix = std::string(op) + ": ";
  check_float_input(x, (prefix + "x").c_str());
  check_cuda(x, (prefix + "x").c_str());
  check_same_device(x, values, (prefix + "x").c_str(), "values");
  check_same_device(x, meta, (prefix + "x").c_str(), "meta");
  check_dtype(meta, at::kInt, (prefix + "meta").c_str());
  check_contiguous(values, (prefix + "values").c_str());
  check_contiguous(meta, (prefix + "meta").c_str());
  const bool is_int8 = values.scalar_type() == at::kChar;
  TORCH_CHECK_TYPE(is_int8 || values.scalar_type() == x.scalar_type(),
                   op, ": values must be int8 or x's dtype (",
                   dtype_name(x.scalar_type()), "), got ", dtype_name(values.scalar_type()));
  TORCH_CHECK_TYPE(is_int8 || x.scalar_type() != at::kFloat,
                   op, ": float32 x needs int8 values (there is no fp32 sparse MMA)");
  const int64_t N = out_features_sym.guard_int(__FILE__, __LINE__);
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least 1 dimension");
  const int64_t K = x.size(-1);
  const int64_t kstep = is_int8 ? 64 : 32;
  const int64_t per_lane = is_int8 ? 16 : 8;
  const int64_t tiles = (N + 15) / 16, steps = (K + kstep - 1) / kstep;
  TORCH_CHECK_VALUE(values.dim() == 4 && values.size(0) == tiles && values.size(1) == steps &&
                        values.size(2) == 32 && values.size(3) == per_lane,
                    op, ": values must be [", tiles, ", ", steps, ", 32, ", per_lane,
                    "] for out_features=", N, " and K=", K, ", got ", values.sizes());
  TORCH_CHECK_VALUE(meta.dim() == 3 && meta.size(0) == tiles && meta.size(1) == steps &&
                        meta.size(2) == 32,
                    op, ": meta must be [", tiles, ", ", steps, ", 32], got ",
                    meta.sizes());
  TORCH_CHECK_VALUE((K * (is_int8 ? 1 : 2)) % 16 == 0, op, ": on CUDA K must be a "
                    "multiple of ", is_int8 ? 16 : 8, " (16-byte activation rows), got K=", K);
  const int act = activation_code(std::string_view(activation.data(), activation.size()), op);
  at::Tensor ws, bias_f;
  if (is_int8) {
    TORCH_CHECK_VALUE(w_scale.has_value() && w_scale->defined(),
                      op, ": int8 values need w_scale");
    check_dtype(*w_scale, at::kFloat, (prefix + "w_scale").c_str());
    TORCH_CHECK_VALUE(w_scale->dim() == 1 && w_scale->size(0) == N,
                      op, ": w_scale must be [", N, "], got ", w_scale->sizes());
    check_same_device(x, *w_scale, (prefix + "x").c_str(), "w_scale");
    ws = w_scale->contiguous();
  }
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == N, op, ": bias must be [",
                      N, "], got ", bias->sizes());
    check_same_device(x, *bias, (prefix + "x").c_str(), "bias");
    bias_f = bias->to(at::kFloat).contiguous();
  }
  c10::cuda::CUDAGuard guard(x.device());
  TORCH_CHECK(!wgmma || sparse24_wgmma_built(), op, ": no sm_90a code for this GPU: "
              "it needs a Hopper GPU (compute capability 9.0) and scalenn built with "
              "TORCH_CUDA_ARCH_LIST containing 9.0a (mma_sp24_linear runs everywhere)");
  at::Tensor x2 = x.reshape({-1, K}).contiguous();
  // cp.async moves 16-byte chunks: the rows must start 16-byte aligned (a view may not).
  if (reinterpret_cast<uintptr_t>(x2.data_ptr()) % 16 != 0) x2 = x2.clone();
  const int64_t M = x2.size(0);
  TORCH_CHECK_VALUE(M <= INT32_MAX, op, ": at most 2^31-1 rows on CUDA");
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
  const auto launch = wgmma ? launch_sparse24_wgmma_linear : launch_sparse24_linear;
  C10_CUDA_CHECK(launch(
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

// The Hopper kernel is its own op, with mma_sp24_linear's schema and contract, until it has been
// measured on a GPU (it was written without one); then mma_sp24_linear can dispatch to it.
TORCH_LIBRARY_FRAGMENT(scalenn, m) {
  m.def("wgmma_sp24_linear(Tensor x, Tensor values, Tensor meta, Tensor? w_scale, Tensor? bias, "
        "SymInt out_features, str activation) -> Tensor");
}

TORCH_LIBRARY_IMPL(scalenn, CUDA, m) {
  m.impl("mma_sp24_linear", &sp24_linear_cuda<Sparse24Kernel::kMmaSp>);
  m.impl("wgmma_sp24_linear", &sp24_linear_cuda<Sparse24Kernel::kWgmmaSp>);
}

}  // namespace scalenn::cuda
