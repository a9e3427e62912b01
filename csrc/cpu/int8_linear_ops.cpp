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
#include <tuple>
#include <vector>

#include "../checks.h"
#include "float_kind.h"
#include "int8_gemm_kernels.h"
#include "int8_op_args.h"

namespace scalenn::cpu {
namespace {

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

// The shared tail of the int8 linear and conv ops: weight/scale/bias checks, one scratch for
// the quantized activations (rows [M, Kp]) and their scales, `quantize_rows(isa, kind, a, rs,
// begin, end)` filling rows [begin, end) in parallel, then the GEMM. Checks build no strings
// unless they fail (this runs per call, for small layers too).
template <class QuantizeRows>
at::Tensor quantized_gemm(const at::Tensor& x, int64_t M, int64_t K, const at::Tensor& w_packed,
                          const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                          int64_t N, Activation act, const char* op,
                          QuantizeRows quantize_rows) {
  TORCH_CHECK_VALUE(x.device() == w_packed.device() && x.device() == w_scale.device(), op,
                    ": x, w_packed and w_scale must be on one device, got ", x.device(), ", ",
                    w_packed.device(), " and ", w_scale.device());
  check_packed(w_packed, N, K, op);
  const at::Tensor b = check_scale_and_bias(x, w_scale, bias, N, op);
  const at::Tensor ws = w_scale.contiguous();
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  const CpuIsa isa = current_isa();
  const FloatKind kind = float_kind(x.scalar_type());
  // One scratch allocation: row scales (M floats, 64-byte aligned size) then activations.
  const int64_t scale_bytes = round_up(M * 4, 64);
  at::Tensor scratch = at::empty({scale_bytes + M * packed_k(K)}, x.options().dtype(at::kByte));
  float* rs = reinterpret_cast<float*>(scratch.data_ptr<uint8_t>());
  uint8_t* ap = scratch.data_ptr<uint8_t>() + scale_bytes;
  at::parallel_for(0, M, row_grain(K), [&](int64_t begin, int64_t end) {
    quantize_rows(isa, kind, ap, rs, begin, end);
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

at::Tensor linear_impl(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& w_scale,
                       const std::optional<at::Tensor>& bias, int64_t N, float static_scale,
                       const std::string& activation, const char* op) {
  check_float_input(x, op == std::string("int8_linear") ? "int8_linear: x" : "int8_linear_static: x");
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D, got shape ", x.sizes());
  const Activation act = parse_activation(activation, op);
  const at::Tensor xc = x.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1);
  const void* xp = xc.data_ptr();
  return quantized_gemm(xc, M, K, w_packed, w_scale, bias, N, act, op,
                        [&](CpuIsa isa, FloatKind kind, uint8_t* a, float* rs, int64_t begin,
                            int64_t end) {
                          quantize_activations(isa, kind, xp, K, static_scale, a, rs, begin, end);
                        });
}

// Int8Conv2d: each output pixel's patch is gathered into a per-thread float block and quantized
// straight into the activation buffer, so the float im2col matrix (4x the bytes, and slow to
// build through torch) never exists. The patch order is (i, j, c): channels innermost, read
// from a channels-last copy of x, so each kernel tap is one contiguous run of C values (the
// (c, i, j) order of F.unfold needed C*kh*kw scattered loads per pixel: 2x slower than the
// fp32 oneDNN convolution for 32 channels). The weight must be packed in the same (o, i, j, c)
// order (Int8Conv2d does that). Returns rows [N * Ho * Wo, out_channels]: NHWC order.
at::Tensor int8_conv2d_rows_cpu(const at::Tensor& x, const at::Tensor& w_packed,
                                const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                                int64_t N, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = "int8_conv2d_rows";
  check_float_input(x, "int8_conv2d_rows: x");
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D [N, C, H, W], got shape ", x.sizes());
  for (auto [name, v, lo] : {std::tuple{"kernel_size", kernel_size, 1}, {"stride", stride, 1},
                             {"padding", padding, 0}, {"dilation", dilation, 1}}) {
    TORCH_CHECK_VALUE(v.size() == 2 && v[0] >= lo && v[1] >= lo, op, ": ", name,
                      " must be two ints >= ", lo, ", got ", v);
  }
  const at::Tensor xc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t B = xc.size(0), C = xc.size(1), H = xc.size(2), W = xc.size(3);
  const int64_t kh = kernel_size[0], kw = kernel_size[1], sh = stride[0], sw = stride[1];
  const int64_t ph = padding[0], pw = padding[1], dh = dilation[0], dw = dilation[1];
  const int64_t span_h = H + 2 * ph - dh * (kh - 1) - 1, span_w = W + 2 * pw - dw * (kw - 1) - 1;
  TORCH_CHECK_VALUE(span_h >= 0 && span_w >= 0, op, ": the (dilated) kernel ", kernel_size,
                    " does not fit the padded input ", x.sizes());
  const int64_t Ho = span_h / sh + 1, Wo = span_w / sw + 1, K = C * kh * kw;
  const void* xp = xc.data_ptr();
  const FloatKind x_kind = float_kind(xc.scalar_type());
  // Rows per quantize call: one call per row cost more than the gather for small K (9 for a
  // 1-channel 3x3 conv); a block of ~32 KiB of floats stays in L1.
  const int64_t block_rows = std::max<int64_t>(1, 8192 / std::max<int64_t>(K, 1));
  return quantized_gemm(
      xc, B * Ho * Wo, K, w_packed, w_scale, bias, N, Activation::none, op,
      [&](CpuIsa isa, FloatKind, uint8_t* a, float* rs, int64_t begin, int64_t end) {
        thread_local std::vector<float> block;
        block.resize(block_rows * K);
        const int64_t Kp = packed_k(K);
        // (n, oh, ow) of row `begin`, then stepped per row: three 64-bit divisions per row cost
        // about as much as the gather of a 1-channel 3x3 patch.
        int64_t n = begin / (Ho * Wo), oh = (begin / Wo) % Ho, ow = begin % Wo;
        for (int64_t r0 = begin; r0 < end; r0 += block_rows) {
          const int64_t nb = std::min(block_rows, end - r0);
          for (int64_t b = 0; b < nb; ++b) {
            float* dst = block.data() + b * K;
            const int64_t h0 = oh * sh - ph, w0 = ow * sw - pw;
            const bool inside = h0 >= 0 && h0 + (kh - 1) * dh < H && w0 >= 0 &&
                                w0 + (kw - 1) * dw < W;
            if (inside && dw == 1 && x_kind == FloatKind::f32) {
              // the common case: each kernel row is one contiguous run of kw * C floats
              const float* src = static_cast<const float*>(xp) + ((n * H + h0) * W + w0) * C;
              for (int64_t i = 0; i < kh; ++i, dst += kw * C)
                std::copy_n(src + i * dh * W * C, kw * C, dst);
            } else {
              for (int64_t i = 0; i < kh; ++i) {
                const int64_t h = h0 + i * dh;
                for (int64_t j = 0; j < kw; ++j, dst += C) {
                  const int64_t w = w0 + j * dw;
                  if (h < 0 || h >= H || w < 0 || w >= W) {
                    std::fill(dst, dst + C, 0.0f);
                    continue;
                  }
                  const int64_t at = ((n * H + h) * W + w) * C;
                  for (int64_t c = 0; c < C; ++c) dst[c] = load_scalar(x_kind, xp, at + c);
                }
              }
            }
            if (++ow == Wo) {
              ow = 0;
              if (++oh == Ho) {
                oh = 0;
                ++n;
              }
            }
          }
          quantize_activations(isa, FloatKind::f32, block.data(), K, 0.0f, a + r0 * Kp, rs + r0,
                               0, nb);
        }
      });
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
  m.impl("int8_conv2d_rows", &int8_conv2d_rows_cpu);
}

}  // namespace scalenn::cpu
