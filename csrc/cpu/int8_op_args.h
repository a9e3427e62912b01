// Argument checks shared by the CPU int8 linear ops (int8_linear_ops.cpp,
// int8_weight_only_ops.cpp): the activation name and the per-channel scale / bias tensors.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "../checks.h"
#include "int8_gemm_kernels.h"

namespace scalenn::cpu {

inline Activation parse_activation(const std::string& name, const char* op) {
  if (name == "none") return Activation::none;
  if (name == "relu") return Activation::relu;
  if (name == "gelu") return Activation::gelu;
  TORCH_CHECK_VALUE(false, op, ": activation must be 'none', 'relu' or 'gelu', got '", name, "'");
}

// w_scale float32 [N]; bias (optional) float32 [N]; both on x's device. Returns the contiguous
// bias, undefined when absent. Builds no strings unless a check fails (runs per call).
inline at::Tensor check_scale_and_bias(const at::Tensor& x, const at::Tensor& w_scale,
                                       const std::optional<at::Tensor>& bias, int64_t N,
                                       const char* op) {
  TORCH_CHECK_VALUE(x.device() == w_scale.device(), op,
                    ": x and w_scale must be on one device, got ", x.device(), " and ",
                    w_scale.device());
  TORCH_CHECK_TYPE(w_scale.scalar_type() == at::kFloat, op, ": w_scale must be torch.float32, got ",
                   dtype_name(w_scale.scalar_type()));
  TORCH_CHECK_VALUE(w_scale.dim() == 1 && w_scale.size(0) == N, op,
                    ": w_scale must have shape [out_features] = [", N, "], got ", w_scale.sizes());
  if (!bias.has_value()) return at::Tensor();
  TORCH_CHECK_TYPE(bias->scalar_type() == at::kFloat, op, ": bias must be torch.float32, got ",
                   dtype_name(bias->scalar_type()));
  TORCH_CHECK_VALUE(bias->device() == x.device(), op, ": x and bias must be on one device, got ",
                    x.device(), " and ", bias->device());
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == N, op,
                    ": bias must have shape [out_features] = [", N, "], got ", bias->sizes());
  return bias->contiguous();
}

}  // namespace scalenn::cpu
