// Small helpers shared by the CUDA op bindings (*_cuda.cpp; compiled only in CUDA builds).
// Uses c10/cuda headers only (not ATen/cuda/CUDAContext.h, which drags in cuSPARSE/cuBLAS).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <string_view>

#include "../checks.h"

namespace scalenn::cuda {

// dtype kind codes of the launchers: 0 float32, 1 bfloat16, 2 float16.
inline int float_kind_of(at::ScalarType st) {
  return st == at::kBFloat16 ? 1 : (st == at::kHalf ? 2 : 0);
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// "none" | "relu" | "gelu" -> 0 | 1 | 2 (ValueError otherwise).
inline int activation_code(std::string_view name, const char* op) {
  if (name == "none") return 0;
  if (name == "relu") return 1;
  if (name == "gelu") return 2;
  TORCH_CHECK_VALUE(false, op, ": activation must be 'none', 'relu' or 'gelu', got '",
                    std::string(name), "'");
  return 0;
}

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), name, " must be a CUDA tensor, got device ", t.device());
}

}  // namespace scalenn::cuda
