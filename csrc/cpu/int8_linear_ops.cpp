// CPU implementations of the int8 linear ops (ATen side: checks, allocation, threading); the
// arithmetic lives in int8_gemm_kernels.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <string>

#include "../checks.h"
#include "float_kind.h"
#include "int8_gemm_kernels.h"

namespace scalenn::cpu {
namespace {

Activation parse_activation(const std::string& name, const char* op) {
  if (name == "none") return Activation::none;
  if (name == "relu") return Activation::relu;
  if (name == "gelu") return Activation::gelu;
  TORCH_CHECK_VALUE(false, op, ": activation must be 'none', 'relu' or 'gelu', got '", name, "'");
}

void check_packed(const at::Tensor& w_packed, int64_t N, int64_t K, const char* op) {
  TORCH_CHECK_TYPE(w_packed.scalar_type() == at::kChar, op, ": w_packed must be torch.int8, got ",
                   dtype_name(w_packed.scalar_type()));
  TORCH_CHECK_VALUE(N >= 0, op, ": out_features must be >= 0, got ", N);
  TORCH_CHECK_VALUE(K <= kMaxK, op, ": in_features must be <= ", kMaxK,
                    " (int32 accumulators), got ", K);
  TORCH_CHECK_VALUE(w_packed.dim() == 1 && w_packed.numel() == packed_bytes(N, K), op,
                    ": w_packed must be the 1-D output of int8_pack_weight for a [", N, ", ", K,
                    "] weight (", packed_bytes(N, K), " bytes), got shape ", w_packed.sizes());
  TORCH_CHECK_VALUE(w_packed.is_contiguous(), op, ": w_packed must be contiguous");
}

// Threads split the (rows x panels) rectangle along one side: panels while all rows fit one
// row block (a small batch is bound by weight bytes, so every core streams its own share of the
// weights, read once), rows otherwise (each core computes a band of rows against every panel;
// the cores walk the panels in the same order, so one core's read is the other's L3 hit).
// The side is cut into about 4 chunks per thread, handed out dynamically (an atomic counter):
// on a machine shared with other processes a descheduled thread's work is picked up by the
// others instead of the whole call waiting for it.
void run_gemm(CpuIsa isa, const GemmProblem& g) {
  const int64_t panels = num_panels(g.N);
  if (g.M == 0 || panels == 0) return;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const bool split_panels =
      g.M < threads * 6 || (g.M <= row_block(packed_k(g.K), 6) && panels >= threads);
  int64_t chunk;  // panels or rows (a multiple of 6, the VNNI tile height) per chunk
  if (split_panels) {
    chunk = std::max<int64_t>(1, panels / (4 * threads));
  } else {
    chunk = round_up(std::max<int64_t>(6, g.M / (4 * threads)), 6);
  }
  const int64_t extent = split_panels ? panels : g.M;
  const int64_t chunks = (extent + chunk - 1) / chunk;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, chunks), 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
      const int64_t lo = c * chunk, hi = std::min(extent, lo + chunk);
      if (split_panels)
        gemm_tile(isa, g, 0, g.M, lo, hi);
      else
        gemm_tile(isa, g, lo, hi, 0, panels);
    }
  });
}

int64_t row_grain(int64_t K) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)); }

at::Tensor int8_pack_weight_cpu(const at::Tensor& w) {
  check_dtype(w, at::kChar, "int8_pack_weight: w_int8");
  check_dim(w, 2, "int8_pack_weight: w_int8");
  const at::Tensor wc = w.contiguous();
  const int64_t N = wc.size(0), K = wc.size(1);
  TORCH_CHECK_VALUE(K <= kMaxK, "int8_pack_weight: in_features must be <= ", kMaxK, ", got ", K);
  if (wc.numel() > 0) {
    const int64_t lowest = wc.min().item<int8_t>();
    TORCH_CHECK_VALUE(lowest >= -127, "int8_pack_weight: weights must be symmetric int8 in "
                      "[-127, 127] (as quantize_per_row produces), got a value ", lowest);
  }
  at::Tensor packed = at::empty({packed_bytes(N, K)}, wc.options());
  const int8_t* src = wc.data_ptr<int8_t>();
  int8_t* dst = packed.data_ptr<int8_t>();
  const int64_t N16 = packed_n(N);
  at::parallel_for(0, N16, 16, [&](int64_t begin, int64_t end) {
    pack_weight(src, N, K, dst, begin, end);
  });
  return packed;
}

at::Tensor int8_unpack_weight_cpu(const at::Tensor& w_packed, int64_t N, int64_t K) {
  TORCH_CHECK_VALUE(K >= 0, "int8_unpack_weight: in_features must be >= 0, got ", K);
  check_packed(w_packed, N, K, "int8_unpack_weight");
  at::Tensor w = at::empty({N, K}, w_packed.options());
  const int8_t* src = w_packed.data_ptr<int8_t>();
  int8_t* dst = w.data_ptr<int8_t>();
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    unpack_weight(src, N, K, dst, begin, end);
  });
  return w;
}

at::Tensor int8_gemm_s32_cpu(const at::Tensor& x, const at::Tensor& w_packed, int64_t N) {
  check_dtype(x, at::kChar, "int8_gemm_s32: x_int8");
  check_dim(x, 2, "int8_gemm_s32: x_int8");
  check_same_device(x, w_packed, "int8_gemm_s32: x_int8", "w_packed");
  const at::Tensor xc = x.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1);
  check_packed(w_packed, N, K, "int8_gemm_s32");
  at::Tensor out = at::empty({M, N}, xc.options().dtype(at::kInt));
  const CpuIsa isa = current_isa();
  at::Tensor a = at::empty({M * packed_k(K)}, xc.options().dtype(at::kByte));
  uint8_t* ap = a.data_ptr<uint8_t>();
  const int8_t* xp = xc.data_ptr<int8_t>();
  at::parallel_for(0, M, row_grain(K), [&](int64_t begin, int64_t end) {
    copy_int8_activations(isa, xp, K, ap, begin, end);
  });
  GemmProblem g;
  g.M = M; g.N = N; g.K = K;
  g.a = ap;
  g.packed = w_packed.data_ptr<int8_t>();
  g.out_s32 = out.data_ptr<int32_t>();
  run_gemm(isa, g);
  return out;
}

// Checks build no strings unless they fail (this runs per call, for small layers too).
at::Tensor linear_impl(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& w_scale,
                       const std::optional<at::Tensor>& bias, int64_t N, float static_scale,
                       const std::string& activation, const char* op) {
  const auto st = x.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, op,
                   ": x must be float32, bfloat16 or float16, got ", dtype_name(st));
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D, got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.device() == w_packed.device() && x.device() == w_scale.device(), op,
                    ": x, w_packed and w_scale must be on one device, got ", x.device(), ", ",
                    w_packed.device(), " and ", w_scale.device());
  const Activation act = parse_activation(activation, op);
  const at::Tensor xc = x.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1);
  check_packed(w_packed, N, K, op);
  TORCH_CHECK_TYPE(w_scale.scalar_type() == at::kFloat, op, ": w_scale must be torch.float32, got ",
                   dtype_name(w_scale.scalar_type()));
  TORCH_CHECK_VALUE(w_scale.dim() == 1 && w_scale.size(0) == N, op,
                    ": w_scale must have shape [out_features] = [", N, "], got ", w_scale.sizes());
  at::Tensor ws = w_scale.contiguous();
  at::Tensor b;
  if (bias.has_value()) {
    TORCH_CHECK_TYPE(bias->scalar_type() == at::kFloat, op, ": bias must be torch.float32, got ",
                     dtype_name(bias->scalar_type()));
    TORCH_CHECK_VALUE(bias->device() == x.device(), op, ": x and bias must be on one device, got ",
                      x.device(), " and ", bias->device());
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == N, op,
                      ": bias must have shape [out_features] = [", N, "], got ", bias->sizes());
    b = bias->contiguous();
  }
  at::Tensor out = at::empty({M, N}, xc.options());
  if (M == 0 || N == 0) return out;
  const CpuIsa isa = current_isa();
  const FloatKind kind = float_kind(xc.scalar_type());
  // One scratch allocation: row scales (M floats, 64-byte aligned size) then activations.
  const int64_t scale_bytes = round_up(M * 4, 64);
  at::Tensor scratch = at::empty({scale_bytes + M * packed_k(K)}, xc.options().dtype(at::kByte));
  float* rs = reinterpret_cast<float*>(scratch.data_ptr<uint8_t>());
  uint8_t* ap = scratch.data_ptr<uint8_t>() + scale_bytes;
  const void* xp = xc.data_ptr();
  at::parallel_for(0, M, row_grain(K), [&](int64_t begin, int64_t end) {
    quantize_activations(isa, kind, xp, K, static_scale, ap, rs, begin, end);
  });
  GemmProblem g;
  g.M = M; g.N = N; g.K = K;
  g.a = ap;
  g.packed = w_packed.data_ptr<int8_t>();
  g.out = out.data_ptr();
  g.out_kind = kind;
  g.row_scale = rs;
  g.w_scale = ws.data_ptr<float>();
  g.bias = b.defined() ? b.data_ptr<float>() : nullptr;
  g.act = act;
  run_gemm(isa, g);
  return out;
}

at::Tensor int8_linear_cpu(const at::Tensor& x, const at::Tensor& w_packed,
                           const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                           int64_t N, c10::string_view activation) {
  return linear_impl(x, w_packed, w_scale, bias, N, 0.0f, std::string(activation), "int8_linear");
}

at::Tensor int8_linear_static_cpu(const at::Tensor& x, const at::Tensor& w_packed,
                                  const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                                  int64_t N, double act_scale, c10::string_view activation) {
  TORCH_CHECK_VALUE(std::isfinite(act_scale) && act_scale > 0.0 &&
                        static_cast<float>(act_scale) > 0.0f,
                    "int8_linear_static: act_scale must be a finite positive float32, got ",
                    act_scale);
  return linear_impl(x, w_packed, w_scale, bias, N, static_cast<float>(act_scale),
                     std::string(activation), "int8_linear_static");
}

}  // namespace

TORCH_LIBRARY_IMPL(scalenn, CPU, m) {
  m.impl("int8_pack_weight", &int8_pack_weight_cpu);
  m.impl("int8_unpack_weight", &int8_unpack_weight_cpu);
  m.impl("int8_gemm_s32", &int8_gemm_s32_cpu);
  m.impl("int8_linear", &int8_linear_cpu);
  m.impl("int8_linear_static", &int8_linear_static_cpu);
}

}  // namespace scalenn::cpu
