// Input validation shared by every op binding. TORCH_CHECK_TYPE surfaces in Python as TypeError,
// TORCH_CHECK_VALUE as ValueError; messages say what was expected and what came.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace scalenn {

// torch's Python spelling of a dtype (float32, not Float), for messages users compare with code.
inline std::string dtype_name(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kBool: return "torch.bool";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return std::string("torch.") + c10::toString(st);
  }
}

inline void check_float_input(const at::Tensor& t, const char* name) {
  auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, name,
                   " must be float32, bfloat16 or float16, got ", dtype_name(st));
}

inline void check_dtype(const at::Tensor& t, at::ScalarType expected, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == expected, name, " must be ", dtype_name(expected),
                   ", got ", dtype_name(t.scalar_type()));
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == dim, name, " must be ", dim, "-D, got shape ", t.sizes());
}

inline void check_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_contiguous(), name,
                    " must be contiguous (call .contiguous() first), got strides ", t.strides());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* na,
                              const char* nb) {
  TORCH_CHECK_VALUE(a.device() == b.device(), na, " and ", nb,
                    " must be on the same device, got ", a.device(), " and ", b.device());
}

}  // namespace scalenn
