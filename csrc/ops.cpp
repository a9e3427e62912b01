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
#include "cpu/weight_memory.h"

#ifndef SCALENN_VERSION
#define SCALENN_VERSION "0+unknown"
#endif

TORCH_LIBRARY(scalenn, m) {
  // Symmetric per-row int8 quantization: x [rows, K] float32/bfloat16/float16 ->
  // (q int8 [rows, K], scale float32 [rows]); see csrc/cpu/quantize_kernels.h for the contract.
  m.def("quantize_per_row(Tensor x) -> (Tensor, Tensor)");
  // q [rows, K] int8, scale [rows] float32 -> q * scale[:, None] as `dtype`.
  m.def("dequantize_per_row(Tensor q, Tensor scale, ScalarType dtype) -> Tensor");

  // ---- GPU tensor-core family (issue 6; CUDA kernels in csrc/cuda, CPU = Python reference) ----
  // y = act(x @ W^T (+ bias)) with a 2:4-sparse W [out_features, K] given as the mma.sp register
  // images of scalenn/_ops/sparse24_layout.py: values [ceil(N/16), S, 32, 8] fp16/bf16 (x in the
  // same dtype) or [ceil(N/16), S, 32, 16] int8 (x float, quantized per token; w_scale [N]
  // float32 required), meta int32 [ceil(N/16), S, 32]. activation: "none" | "relu" | "gelu".
  m.def("mma_sp24_linear(Tensor x, Tensor values, Tensor meta, Tensor? w_scale, Tensor? bias, "
        "SymInt out_features, str activation) -> Tensor");
  // (Gradient buckets: the "bucket" family below; CUDA kernels in csrc/cuda/bucket_*.)

  // ---- bucket: gradient buckets for scalenn.distributed (fused all-reduce) ----
  // Contracts in csrc/cpu/bucket_kernels.h; references in scalenn/_ops/bucket.py. All math in
  // float32, round-to-nearest-even on every cast, no FMA. Segment i of a bucket occupies flat
  // elements [o_i, o_i + n_i) with o_i = n_0 + ... + n_{i-1} (grads back to back, in list order).
  // bucket_pack: grads = contiguous float32/bfloat16/float16 tensors (any shapes, dtypes may
  //   differ); flat = 1-D contiguous float32/bfloat16/float16, numel >= sum(n_i). Writes
  //   flat[o_i:o_i+n_i] = (grads[i].flatten().float() * scale).to(flat.dtype); the rest of flat
  //   is left untouched.
  m.def("bucket_pack(Tensor[] grads, Tensor(a!) flat, float scale) -> ()");
  // bucket_unpack: the reverse: grads[i] = (flat[o_i:o_i+n_i].float() * scale).to(grads[i].dtype).
  m.def("bucket_unpack(Tensor flat, Tensor(a!)[] grads, float scale) -> ()");
  // bucket_quantize_int8 (error feedback): residual float32 [N*C], records uint8 [N, C+4].
  //   v = packed(grads) * scale + residual (v = residual past the grads); per chunk c of C values:
  //   s = max|v|/127, q = round_half_even(v * (127/max|v|)) (0 if max is 0), residual = v - q*s;
  //   a chunk holding NaN/Inf gets s = NaN, q = 0, residual = 0. Record c = C int8 q values then
  //   s as 4 little-endian bytes (the wire format of the int8 all-reduce). On the CPU residual
  //   may also be records uint8 [N, C+4]: the residual quantized per chunk, a quarter of the
  //   memory (csrc/cpu/bucket_kernels.h).
  m.def("bucket_quantize_int8(Tensor[] grads, Tensor(a!) residual, Tensor(b!) records, "
        "float scale) -> ()");
  // bucket_dequantize_sum: records uint8 [W, N, C+4] (W record arrays, e.g. one per rank) ->
  //   out float32 [N*C] = sum over w in order 0..W-1 of q_w * s_w (fp32, starting from +0).
  m.def("bucket_dequantize_sum(Tensor records, Tensor(a!) out) -> ()");
  // bucket_unpack_int8: records uint8 [W, N, C+4] -> grads[i] = flat[o_i:o_i+n_i] cast to
  //   grads[i].dtype, flat = bucket_dequantize_sum(records) (fused with bucket_unpack, scale 1;
  //   W = 1: plain dequantization).
  m.def("bucket_unpack_int8(Tensor records, Tensor(a!)[] grads) -> ()");
  // bucket_requantize_int8: records uint8 [W, N, C+4], residual float32 [N*C] (or records
  //   [N, C+4] on the CPU), out uint8 [N, C+4]: v = bucket_dequantize_sum(records) + residual,
  //   quantized into out as in bucket_quantize_int8 (the reduce-scatter step of the int8
  //   all-reduce, one pass).
  m.def("bucket_requantize_int8(Tensor records, Tensor(a!) residual, Tensor(b!) out) -> ()");
  // ---- shm: progress counters of the same-host transport (scalenn/distributed/shm.py) ----
  // counters: 1-D contiguous int64 in memory shared between processes.
  // shm_post: counters[index] = value (release store).
  m.def("shm_post(Tensor(a!) counters, int index, int value) -> ()");
  // shm_wait: until counters[first + i*stride] >= target for all i < count (acquire loads) or
  //   timeout_s passed; returns -1 when all arrived, else the first i that had not.
  m.def("shm_wait(Tensor counters, int first, int stride, int count, int target, "
        "float timeout_s) -> int");
  // ---- sparse (issue 4): sparse weight [out_features, in_features] x dense activations ----
  // Layouts ("csr", "bsr:RxC", "nm:N:M") and their tensors: csrc/cpu/sparse_kernels.h.
  // y [M, out_features] = x [M, in_features] @ W^T (+ bias); float32. The layout's indices are
  // validated against [out_features, in_features] when built or loaded (not per call).
  m.def("sparse_linear(Tensor x, Tensor values, Tensor indices, Tensor offsets, Tensor? bias, "
        "str layout, int out_features, int in_features) -> Tensor");
  // grad_x [M, in_features] = grad_y [M, out_features] @ W.
  m.def("sparse_linear_grad_input(Tensor grad_y, Tensor values, Tensor indices, Tensor offsets, "
        "str layout, int in_features) -> Tensor");
  // Gradient with respect to the stored values only (shape of values): sum_m grad_y[m,n] x[m,k].
  m.def("sparse_linear_grad_values(Tensor grad_y, Tensor x, Tensor values, Tensor indices, "
        "Tensor offsets, str layout, int in_features) -> Tensor");
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
  // int8_weight_only: act(x @ (w_int8 * w_scale[:, None])^T + bias) with x kept in floating
  // point (float32 accumulation); w_int8 [out_features, K] plain row-major int8.
  m.def("int8_weight_only_linear(Tensor x, Tensor w_int8, Tensor w_scale, Tensor? bias, "
        "str activation) -> Tensor");
  // As int8_linear with one calibrated activation scale: q = clamp(round(x / act_scale), +-127).
  m.def("int8_linear_static(Tensor x, Tensor w_packed, Tensor w_scale, Tensor? bias, "
        "SymInt out_features, float act_scale, str activation) -> Tensor");
  // int8 convolution (Int8Conv2d): x [N, C, H, W] float (any memory format); each output
  // pixel's patch in (i, j, c) order (channels innermost, zeros outside the image) quantized per
  // row as int8_linear does, times w_int8 packed in the same order ([out_channels, kh, kw, C]
  // flattened) -> rows [N * Ho * Wo, out_channels] (NHWC order), x.dtype.
  m.def("int8_conv2d_rows(Tensor x, Tensor w_packed, Tensor w_scale, Tensor? bias, "
        "SymInt out_channels, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation) -> Tensor");
  // ---- sparse int8 linear (SparseInt8Linear; issue 7) ----
  // Format ("elem16" | "quad") and tensors: csrc/cpu/sparse_int8_kernels.h. out_features is
  // row_offsets.numel() - 1, in_features is x.size(1); packed row p is output row row_order[p].
  // w_int8 [N, K] int8 in [-127, 127] -> (values int8, rel uint8, base int16, row_offsets int32,
  // row_order int32).
  m.def("sparse_int8_pack(Tensor w_int8, str format) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Exact int32 accumulators x_int8 [M, K] @ W^T (tests, references).
  m.def("sparse_int8_gemm_s32(Tensor x_int8, Tensor values, Tensor rel, Tensor base, "
        "Tensor row_offsets, Tensor row_order, str format) -> Tensor");
  // x [M, K] float32/bfloat16/float16 quantized per row (the quantize_per_row contract), int32
  // accumulation, y = row_scale[m] * w_scale[n] * acc + bias[n] in x.dtype.
  m.def("sparse_int8_linear(Tensor x, Tensor values, Tensor rel, Tensor base, "
        "Tensor row_offsets, Tensor row_order, Tensor w_scale, Tensor? bias, str format) -> Tensor");
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
  SCALENN_FEATURE("avx512vbmi")
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
  m.def("vbmi_enabled", &scalenn::vbmi_enabled,
        "Whether AVX-512 kernels may use AVX512_VBMI (detected; tests can switch it off)");
  m.def("set_vbmi_enabled", &scalenn::set_vbmi_enabled, py::arg("enabled"),
        "Allow or forbid AVX512_VBMI kernels (ValueError to allow it on a CPU without it)");
  m.def("set_cpu_isa", &scalenn::set_isa, py::arg("name"),
        "Select the CPU kernel ISA level (avx512, avx2, scalar); ValueError if unsupported");
  m.def("to_weight_memory", &scalenn::cpu::to_weight_memory, py::arg("tensor"),
        "A copy of a contiguous CPU tensor on transparent huge pages (Linux), for packed "
        "weights the kernels stream (cpu/weight_memory.h)");
}
