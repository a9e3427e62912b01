// scalenn::int8_weight_only_linear on the CPU: y = act(x @ (w_int8 * w_scale)^T + bias) with the
// activations kept in floating point (Int8Linear's int8_weight_only scheme, for layers whose
// activations quantize badly). The int8 weight is never dequantized as a whole (that cost 4x
// the weight's bytes in fresh float32 memory per call, ~20x slower than the fp32 layer):
//  - few rows (M <= kFewRows): each thread converts 16 int8 weights at a time to float32 in
//    registers and multiplies them into up to 8 float32 rows of x held in L1: the int8 weight
//    is streamed once, so the call is bound by reading 1 byte per weight (4x less than fp32);
//  - more rows: blocks of kBlockBytes of float32 weight are dequantized into a per-thread
//    buffer (cache-resident: L3) and multiplied by BLAS (at::mm), block by block; bigger
//    blocks mean fewer passes of BLAS over x (1 MB blocks were 13% slower than fp32 at
//    M=1024, 4 MB ones match it).
// AVX-512 has its own few-rows kernel; the AVX2 and scalar levels use the plain C++ loop.
// float32 accumulation throughout; results agree with the float64 reference to float32 rounding
// (not bit for bit across ISAs or paths: the summation order differs).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "../checks.h"
#include "float_kind.h"
#include "int8_gemm_kernels.h"
#include "int8_op_args.h"

namespace scalenn::cpu {
namespace {

constexpr int64_t kFewRows = 16;
constexpr int kRowsPerPass = 8;              // x rows sharing one conversion of the weights
constexpr int64_t kXChunkBytes = 32 * 1024;  // x rows x k-chunk kept in L1 while n varies
constexpr int64_t kBlockBytes = 4 * 1024 * 1024;  // float32 weight block per thread (many rows)

// out[r] += sum_{k < len} x[r * ldx + k] * w[k] for r < rows.
void dot_rows_scalar(const int8_t* w, const float* x, int64_t ldx, int64_t len, int64_t rows,
                     float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    float acc = 0.0f;
    const float* xr = x + r * ldx;
    for (int64_t k = 0; k < len; ++k) acc += xr[k] * static_cast<float>(w[k]);
    out[r] += acc;
  }
}

// U independent accumulators per row so that at least 4 FMA chains are in flight (FMA latency
// 4 cycles): one row alone with one chain ran at a quarter of the FMA rate, 1.8x slower than
// reading the weight.
template <int R>
SCALENN_TARGET_AVX512 void dot_rows_avx512_fixed(const int8_t* w, const float* x, int64_t ldx,
                                                 int64_t len, float* out) {
  constexpr int U = R >= 4 ? 1 : (R >= 2 ? 2 : 4);
  __m512 acc[U][R];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < R; ++r) acc[u][r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 * U <= len; k += 16 * U) {
    for (int u = 0; u < U; ++u) {
      const __m512 wf = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k + 16 * u))));
      for (int r = 0; r < R; ++r)
        acc[u][r] = _mm512_fmadd_ps(_mm512_loadu_ps(x + r * ldx + k + 16 * u), wf, acc[u][r]);
    }
  }
  for (; k < len; k += 16) {
    const int64_t rest = std::min<int64_t>(16, len - k);
    const __mmask16 m = static_cast<__mmask16>((1u << rest) - 1);
    const __m512 wf = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, w + k)));
    for (int r = 0; r < R; ++r)
      acc[0][r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + r * ldx + k), wf, acc[0][r]);
  }
  for (int r = 0; r < R; ++r) {
    __m512 sum = acc[0][r];
    for (int u = 1; u < U; ++u) sum = _mm512_add_ps(sum, acc[u][r]);
    out[r] += _mm512_reduce_add_ps(sum);
  }
}

SCALENN_TARGET_AVX512 void dot_rows_avx512(const int8_t* w, const float* x, int64_t ldx,
                                           int64_t len, int64_t rows, float* out) {
  for (int64_t r0 = 0; r0 < rows; r0 += kRowsPerPass) {
    const float* xr = x + r0 * ldx;
    switch (std::min<int64_t>(kRowsPerPass, rows - r0)) {
      case 1: dot_rows_avx512_fixed<1>(w, xr, ldx, len, out + r0); break;
      case 2: dot_rows_avx512_fixed<2>(w, xr, ldx, len, out + r0); break;
      case 3: dot_rows_avx512_fixed<3>(w, xr, ldx, len, out + r0); break;
      case 4: dot_rows_avx512_fixed<4>(w, xr, ldx, len, out + r0); break;
      case 5: dot_rows_avx512_fixed<5>(w, xr, ldx, len, out + r0); break;
      case 6: dot_rows_avx512_fixed<6>(w, xr, ldx, len, out + r0); break;
      case 7: dot_rows_avx512_fixed<7>(w, xr, ldx, len, out + r0); break;
      default: dot_rows_avx512_fixed<8>(w, xr, ldx, len, out + r0);
    }
  }
}

// y[m][n] = act(acc * scale[n] + bias[n]) stored in y's dtype.
struct Epilogue {
  const float* scale;
  const float* bias;  // may be null
  Activation act;
  FloatKind out_kind;
  void* y;
  int64_t N;
  // Row m, columns [n0, n0 + count) from acc (float32, count values).
  void store(int64_t m, int64_t n0, int64_t count, float* acc, bool scaled) const {
    for (int64_t j = 0; j < count; ++j) {
      float v = scaled ? acc[j] : acc[j] * scale[n0 + j];
      acc[j] = bias ? v + bias[n0 + j] : v;
    }
    activate_inplace(act, acc, count);
    for (int64_t j = 0; j < count; ++j) store_scalar(out_kind, y, m * N + n0 + j, acc[j]);
  }
};

void few_rows(const int8_t* w, const float* x, int64_t M, int64_t N, int64_t K,
              const Epilogue& ep) {
  const bool avx512 = current_isa() == CpuIsa::avx512;
  // K is cut into chunks whose M x rows stay in L1 while every output channel of the thread
  // streams its weights past them (unchunked, 8 rows of K = 4096 floats came from L2 once per
  // channel: more bytes than the int8 weight itself).
  const int64_t kc = std::max<int64_t>(16, kXChunkBytes / (4 * M) / 16 * 16);
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)),
                   [&](int64_t n0, int64_t n1) {
    std::vector<float> acc(static_cast<size_t>(M * (n1 - n0)), 0.0f);  // [n][m]
    std::vector<float> xc(static_cast<size_t>(M * kc));
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
      const int64_t len = std::min(kc, K - k0);
      // The chunk's rows copied next to each other: in place they sit K floats apart, and for
      // K a multiple of 1024 all rows map to the same L1 sets (12 ways for 16 rows).
      for (int64_t m = 0; m < M; ++m) std::copy_n(x + m * K + k0, len, xc.data() + m * len);
      for (int64_t n = n0; n < n1; ++n) {
        float* out = acc.data() + (n - n0) * M;
        // The next channel's slice of this chunk lies K bytes further: a jump the hardware
        // prefetcher does not follow, so request its lines now.
        if (len < K && n + 1 < n1)  // (one chunk: the rows are read in order anyway)
          for (int64_t b = 0; b < len; b += 64)
            _mm_prefetch(reinterpret_cast<const char*>(w + (n + 1) * K + k0 + b), _MM_HINT_T0);
        if (avx512)
          dot_rows_avx512(w + n * K + k0, xc.data(), len, len, M, out);
        else
          dot_rows_scalar(w + n * K + k0, xc.data(), len, len, M, out);
      }
    }
    std::vector<float> row(static_cast<size_t>(n1 - n0));
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = n0; n < n1; ++n) row[n - n0] = acc[(n - n0) * M + m];
      ep.store(m, n0, n1 - n0, row.data(), false);
    }
  });
}

void many_rows(const int8_t* w, const float* w_scale, const at::Tensor& x32, int64_t N,
               const Epilogue& ep) {
  const int64_t M = x32.size(0), K = x32.size(1);
  const int64_t block = std::max<int64_t>(1, kBlockBytes / (4 * std::max<int64_t>(K, 1)));
  const int64_t nblocks = (N + block - 1) / block;
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    at::Tensor wf = at::empty({block, K}, x32.options());
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * block, nc = std::min(block, N - n0);
      float* dst = wf.data_ptr<float>();
      for (int64_t j = 0; j < nc; ++j) {  // dequantize (scale folded in): vectorized by gcc
        const int8_t* src = w + (n0 + j) * K;
        const float s = w_scale[n0 + j];
        for (int64_t k = 0; k < K; ++k) dst[j * K + k] = static_cast<float>(src[k]) * s;
      }
      // BLAS on the block (single-threaded inside this parallel region), then the epilogue
      // writes the block's columns of y.
      at::Tensor part = at::mm(x32, wf.narrow(0, 0, nc).t());
      float* p = part.data_ptr<float>();
      for (int64_t m = 0; m < M; ++m) ep.store(m, n0, nc, p + m * nc, true);
    }
  });
}

at::Tensor int8_weight_only_linear_cpu(const at::Tensor& x, const at::Tensor& w_int8,
                                       const at::Tensor& w_scale,
                                       const std::optional<at::Tensor>& bias,
                                       c10::string_view activation) {
  const char* op = "int8_weight_only_linear";
  check_float_input(x, "int8_weight_only_linear: x");
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D [M, K], got shape ", x.sizes());
  TORCH_CHECK_TYPE(w_int8.scalar_type() == at::kChar, op, ": w_int8 must be torch.int8, got ",
                   dtype_name(w_int8.scalar_type()));
  TORCH_CHECK_VALUE(w_int8.dim() == 2 && w_int8.size(1) == x.size(1), op,
                    ": w_int8 must be [out_features, K] with K = x.shape[1] = ", x.size(1),
                    ", got shape ", w_int8.sizes());
  const int64_t M = x.size(0), K = x.size(1), N = w_int8.size(0);
  TORCH_CHECK_VALUE(w_int8.device() == x.device(), op, ": x and w_int8 must be on one device, got ",
                    x.device(), " and ", w_int8.device());
  const at::Tensor b = check_scale_and_bias(x, w_scale, bias, N, op);
  const Activation act = parse_activation(std::string(activation), op);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const at::Tensor x32 = x.to(at::kFloat).contiguous();
  const at::Tensor w = w_int8.contiguous(), ws = w_scale.contiguous();
  Epilogue ep{ws.data_ptr<float>(), b.defined() ? b.data_ptr<float>() : nullptr, act,
              float_kind(x.scalar_type()), y.data_ptr(), N};
  if (K == 0) {  // empty dot products: y = act(bias)
    for (int64_t m = 0; m < M; ++m) {
      std::vector<float> zeros(static_cast<size_t>(N), 0.0f);
      ep.store(m, 0, N, zeros.data(), true);
    }
    return y;
  }
  if (M <= kFewRows)
    few_rows(w.data_ptr<int8_t>(), x32.data_ptr<float>(), M, N, K, ep);
  else
    many_rows(w.data_ptr<int8_t>(), ws.data_ptr<float>(), x32, N, ep);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(scalenn, CPU, m) {
  m.impl("int8_weight_only_linear", &int8_weight_only_linear_cpu);
}

}  // namespace scalenn::cpu
