// The scalenn op registry: every schema in the `scalenn` namespace is defined here, once.
// Implementations register per device elsewhere (csrc/cpu/*_ops.cpp, csrc/cuda/*_cuda.cpp, and
// Triton kernels from Python); fake (meta) kernels and autograd live in scalenn/_ops/.
//
// This file is also the pybind11 module `scalenn._C`: build info, CPU features, ISA override.
#include <torch/extension.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "cpu/isa.h"

#ifndef SCALENN_VERSION
#define SCALENN_VERSION "0+unknown"
#endif

TORCH_LIBRARY(scalenn, m) {
  // Symmetric per-row int8 quantization: x [rows, K] float32/bfloat16/float16 ->
  // (q int8 [rows, K], scale float32 [rows]); see csrc/cpu/quantize_kernels.h for the contract.
  m.def("quantize_per_row(Tensor x) -> (Tensor, Tensor)");
  // q [rows, K] int8, scale [rows] float32 -> q * scale[:, None] as `dtype`.
  m.def("dequantize_per_row(Tensor q, Tensor scale, ScalarType dtype) -> Tensor");

  // ---- int8 linear (Int8Linear; issue 3) ----
  // w_int8 [N, K] int8 in [-127, 127] (symmetric per output channel) -> an opaque packed form
  // for this device (CPU: VNNI panels + per-channel compensation, see
  // csrc/cpu/int8_gemm_kernels.h; CUDA: w_int8 itself).
  m.def("int8_pack_weight(Tensor w_int8) -> Tensor");
  // Inverse of int8_pack_weight: packed -> w_int8 [out_features, in_features].
  m.def("int8_unpack_weight(Tensor w_packed, SymInt out_features, SymInt in_features) -> Tensor");
  // Exact int32 accumulators: x_int8 [M, K] @ w_int8^T -> int32 [M, N] (tests, references).
  m.def("int8_gemm_s32(Tensor x_int8, Tensor w_packed, SymInt out_features) -> Tensor");
  // x [M, K] float32/bfloat16/float16, quantized per row inside the kernel (the
  // quantize_per_row contract), int32 accumulation, epilogue
  // act(row_scale[m] * w_scale[n] * acc + bias[n]) in x.dtype; activation: none|relu|gelu.
  m.def("int8_linear(Tensor x, Tensor w_packed, Tensor w_scale, Tensor? bias, "
        "SymInt out_features, str activation) -> Tensor");
  // As int8_linear with one calibrated activation scale: q = clamp(round(x / act_scale), +-127).
  m.def("int8_linear_static(Tensor x, Tensor w_packed, Tensor w_scale, Tensor? bias, "
        "SymInt out_features, float act_scale, str activation) -> Tensor");
}

namespace {

std::vector<std::string> cpu_features() {
  std::vector<std::string> out;
  __builtin_cpu_init();
#define SCALENN_FEATURE(name) \
  if (__builtin_cpu_supports(name)) out.emplace_back(name);
  SCALENN_FEATURE("sse4.2")
  SCALENN_FEATURE("avx")
  SCALENN_FEATURE("f16c")
  SCALENN_FEATURE("fma")
  SCALENN_FEATURE("bmi2")
  SCALENN_FEATURE("avx2")
  SCALENN_FEATURE("avx512f")
  SCALENN_FEATURE("avx512bw")
  SCALENN_FEATURE("avx512vl")
  SCALENN_FEATURE("avx512dq")
  SCALENN_FEATURE("avx512vnni")
  SCALENN_FEATURE("avx512bf16")
  SCALENN_FEATURE("avxvnni")
#undef SCALENN_FEATURE
  return out;
}

py::dict build_info() {
  py::dict d;
  d["version"] = SCALENN_VERSION;
  d["torch_version"] = TORCH_VERSION;
#ifdef __VERSION__
  d["compiler"] = std::string("gcc ") + __VERSION__;
#endif
#ifdef SCALENN_WITH_CUDA
  d["cuda"] = true;
#else
  d["cuda"] = false;
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "scalenn native extension: op registrations plus build and CPU information";
  // Resolve the ISA now, so a bad SCALENN_CPU_ISA fails at import with a ValueError.
  scalenn::current_isa();
  m.def("build_info", &build_info, "How this extension was built");
  m.def("cpu_features", &cpu_features, "CPU features relevant to scalenn's kernels");
  m.def("detected_isa", [] { return std::string(scalenn::isa_name(scalenn::detected_isa())); },
        "Best ISA level this CPU supports: avx512, avx2 or scalar");
  m.def("current_isa", [] { return std::string(scalenn::isa_name(scalenn::current_isa())); },
        "ISA level the CPU kernels use now");
  m.def("set_cpu_isa", &scalenn::set_isa, py::arg("name"),
        "Select the CPU kernel ISA level (avx512, avx2, scalar); ValueError if unsupported");
}
