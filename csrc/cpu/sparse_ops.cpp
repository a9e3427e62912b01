// CPU implementations of scalenn::sparse_linear, sparse_linear_grad_input and
// sparse_linear_grad_values (ATen side: layout parsing, checks, allocation, threading); the
// arithmetic lives in sparse_kernels.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#include "../checks.h"
#include "sparse_kernels.h"

namespace scalenn::cpu {
namespace {

int64_t parse_positive(const std::string& s, const std::string& layout) {
  TORCH_CHECK_VALUE(!s.empty() && s.size() < 10 &&
                        std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }),
                    "sparse_linear: bad layout '", layout, "' (expected 'csr', 'bsr:RxC' or 'nm:N:M')");
  const int64_t v = std::stoll(s);
  TORCH_CHECK_VALUE(v >= 1, "sparse_linear: layout '", layout, "' needs positive sizes");
  return v;
}

// "csr" | "bsr:RxC" | "nm:N:M" -> the kind and its sizes (validated against the tensors later).
SparseWeight parse_layout(const std::string& layout) {
  SparseWeight w{};
  if (layout == "csr") {
    w.kind = SparseLayoutKind::csr;
  } else if (layout.rfind("bsr:", 0) == 0) {
    const auto x = layout.find('x', 4);
    TORCH_CHECK_VALUE(x != std::string::npos, "sparse_linear: bad layout '", layout,
                      "' (expected 'bsr:RxC', e.g. 'bsr:4x4')");
    w.kind = SparseLayoutKind::bsr;
    w.R = parse_positive(layout.substr(4, x - 4), layout);
    w.C = parse_positive(layout.substr(x + 1), layout);
  } else if (layout.rfind("nm:", 0) == 0) {
    const auto c = layout.find(':', 3);
    TORCH_CHECK_VALUE(c != std::string::npos, "sparse_linear: bad layout '", layout,
                      "' (expected 'nm:N:M', e.g. 'nm:2:4')");
    w.kind = SparseLayoutKind::nm;
    w.nkeep = parse_positive(layout.substr(3, c - 3), layout);
    w.m = parse_positive(layout.substr(c + 1), layout);
    TORCH_CHECK_VALUE(w.nkeep <= w.m && w.m <= 256, "sparse_linear: layout '", layout,
                      "' needs N <= M <= 256");
  } else {
    TORCH_CHECK_VALUE(false, "sparse_linear: unknown layout '", layout,
                      "' (expected 'csr', 'bsr:RxC' or 'nm:N:M')");
  }
  return w;
}

void check_offsets(const at::Tensor& offsets, int64_t groups, int64_t stored, const char* what) {
  check_dtype(offsets, at::kInt, "sparse_linear: offsets");
  check_dim(offsets, 1, "sparse_linear: offsets");
  check_contiguous(offsets, "sparse_linear: offsets");
  TORCH_CHECK_VALUE(offsets.size(0) == groups + 1, "sparse_linear: offsets must have ", groups + 1,
                    " entries (one per ", what, " plus one), got ", offsets.size(0));
  const int32_t* o = offsets.data_ptr<int32_t>();
  TORCH_CHECK_VALUE(o[0] == 0 && o[groups] == stored, "sparse_linear: offsets must start at 0 and "
                    "end at ", stored, ", got ", o[0], " and ", o[groups]);
}

// Checks values/indices/offsets against the layout and the weight shape [N, K]; fills w.
SparseWeight describe(const std::string& layout, const at::Tensor& values,
                      const at::Tensor& indices, const at::Tensor& offsets, int64_t N, int64_t K) {
  SparseWeight w = parse_layout(layout);
  w.N = N;
  w.K = K;
  TORCH_CHECK_VALUE(N >= 0 && K >= 0, "sparse_linear: negative weight shape [", N, ", ", K, "]");
  check_dtype(values, at::kFloat, "sparse_linear: values");
  check_contiguous(values, "sparse_linear: values");
  check_contiguous(indices, "sparse_linear: indices");
  check_same_device(values, indices, "sparse_linear: values", "indices");
  switch (w.kind) {
    case SparseLayoutKind::csr: {
      check_dim(values, 1, "sparse_linear: csr values");
      check_dim(indices, 1, "sparse_linear: csr indices");
      const auto st = indices.scalar_type();
      TORCH_CHECK_TYPE(st == at::kShort || st == at::kInt, "sparse_linear: csr indices must be "
                       "torch.int16 (read as uint16) or torch.int32, got ", dtype_name(st));
      w.idx16 = st == at::kShort;
      TORCH_CHECK_VALUE(!w.idx16 || K <= 65536, "sparse_linear: 16-bit csr indices need "
                        "in_features <= 65536, got ", K);
      TORCH_CHECK_VALUE(indices.size(0) == values.size(0), "sparse_linear: csr indices and values "
                        "must have the same length, got ", indices.size(0), " and ", values.size(0));
      check_offsets(offsets, N, values.size(0), "row");
      w.offsets = offsets.data_ptr<int32_t>();
      break;
    }
    case SparseLayoutKind::bsr: {
      TORCH_CHECK_VALUE(N % w.R == 0 && K % w.C == 0, "sparse_linear: ", w.R, "x", w.C,
                        " blocks must divide the weight [", N, ", ", K, "]");
      check_dim(values, 3, "sparse_linear: bsr values");
      TORCH_CHECK_VALUE(values.size(1) == w.R && values.size(2) == w.C, "sparse_linear: bsr "
                        "values must be [nblocks, ", w.R, ", ", w.C, "], got ", values.sizes());
      check_dtype(indices, at::kInt, "sparse_linear: bsr indices");
      check_dim(indices, 1, "sparse_linear: bsr indices");
      TORCH_CHECK_VALUE(indices.size(0) == values.size(0), "sparse_linear: bsr indices must have "
                        "one entry per block (", values.size(0), "), got ", indices.size(0));
      check_offsets(offsets, N / w.R, values.size(0), "block row");
      w.offsets = offsets.data_ptr<int32_t>();
      break;
    }
    case SparseLayoutKind::nm: {
      TORCH_CHECK_VALUE(K % w.m == 0, "sparse_linear: N:M with M = ", w.m,
                        " needs in_features divisible by M, got ", K);
      const int64_t L = K / w.m * w.nkeep;
      check_dim(values, 2, "sparse_linear: nm values");
      TORCH_CHECK_VALUE(values.size(0) == N && values.size(1) == L, "sparse_linear: nm values must "
                        "be [", N, ", ", L, "], got ", values.sizes());
      check_dtype(indices, at::kByte, "sparse_linear: nm indices");
      TORCH_CHECK_VALUE(indices.sizes() == values.sizes(), "sparse_linear: nm indices must have "
                        "the shape of values ", values.sizes(), ", got ", indices.sizes());
      break;
    }
  }
  w.values = values.data_ptr<float>();
  w.indices = indices.data_ptr();
  return w;
}

void check_activation(const at::Tensor& t, const char* name, int64_t cols, const char* what) {
  check_dtype(t, at::kFloat, name);
  check_dim(t, 2, name);
  check_contiguous(t, name);
  TORCH_CHECK_VALUE(t.size(1) == cols, name, " must have ", cols, " columns (", what, "), got ",
                    t.size(1));
}

// Row-group boundaries with about equal stored values each: at least 4 parts per thread, and
// parts small enough (~32K values, ~200 KB) that a part's weights stay in L2 across panels.
std::vector<int64_t> balanced_parts(const SparseWeight& w) {
  const int64_t G = w.groups();
  std::vector<int64_t> bounds{0};
  if (G == 0) return bounds;
  const int64_t total = w.work_before(G);
  // A multiple of the thread count: parallel_for hands each thread an equal count of parts.
  const int64_t threads = std::max(1, at::get_num_threads());
  const int64_t want = std::max<int64_t>(4 * threads, total / 32768);
  const int64_t parts = std::clamp<int64_t>((want + threads - 1) / threads * threads, 1, G);
  for (int64_t i = 1; i < parts; ++i) {
    const int64_t target = total * i / parts;
    int64_t lo = bounds.back(), hi = G;  // first g with work_before(g) >= target
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (w.work_before(mid) < target) lo = mid + 1; else hi = mid;
    }
    if (lo > bounds.back() && lo < G) bounds.push_back(lo);
  }
  bounds.push_back(G);
  return bounds;
}

// Runs fn(i) for parts i in [0, n): each thread a contiguous run of parts, so that its weights
// stream from one place. (Handing parts out one at a time from a shared counter was 7% slower:
// 4096 x 4096, 90% CSR, M = 16, 2 threads, weights from memory.)
template <class F>
void for_each_part(int64_t n, const F& fn) {
  at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) fn(i);
  });
}

// x [M, K] row-major -> panels [ceil(M/P)][K][P], transposed and zero-padded, in parallel over k.
at::Tensor pack_panels(CpuIsa isa, const at::Tensor& x, int64_t P) {
  const int64_t M = x.size(0), K = x.size(1);
  const int64_t num = (M + P - 1) / P;
  at::Tensor panels = at::empty({num * K * P}, x.options());
  const float* xp = x.data_ptr<float>();
  float* pp = panels.data_ptr<float>();
  at::parallel_for(0, K, 256, [&](int64_t k0, int64_t k1) {
    sparse_pack_panels(isa, xp, M, K, K, P, pp, k0, k1);
  });
  return panels;
}

const float* optional_bias(const std::optional<at::Tensor>& bias, int64_t N) {
  if (!bias.has_value() || !bias->defined()) return nullptr;
  check_dtype(*bias, at::kFloat, "sparse_linear: bias");
  check_dim(*bias, 1, "sparse_linear: bias");
  check_contiguous(*bias, "sparse_linear: bias");
  TORCH_CHECK_VALUE(bias->size(0) == N, "sparse_linear: bias must have out_features = ", N,
                    " entries, got ", bias->size(0));
  return bias->data_ptr<float>();
}

at::Tensor sparse_linear_cpu(const at::Tensor& x, const at::Tensor& values,
                             const at::Tensor& indices, const at::Tensor& offsets,
                             const std::optional<at::Tensor>& bias, std::string_view layout,
                             int64_t out_features, int64_t in_features) {
  TORCH_CHECK_VALUE(x.dim() == 2, "sparse_linear: x must be 2-D [batch, in_features], got shape ",
                    x.sizes());
  const int64_t M = x.size(0), K = in_features, N = out_features;
  const SparseWeight w = describe(std::string(layout), values, indices, offsets, N, K);
  check_activation(x, "sparse_linear: x", K, "in_features");
  check_same_device(x, values, "sparse_linear: x", "values");
  const float* b = optional_bias(bias, N);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const CpuIsa isa = current_isa();
  const auto parts = balanced_parts(w);
  const int64_t nparts = static_cast<int64_t>(parts.size()) - 1;
  float* yp = y.data_ptr<float>();
  if (M <= kDirectMaxM) {
    const float* xp = x.data_ptr<float>();
    for_each_part(nparts, [&](int64_t i) {
      sparse_forward_direct(isa, w, xp, M, b, yp, parts[i], parts[i + 1]);
    });
    return y;
  }
  const int64_t P = sparse_panel_width(isa, M);
  const at::Tensor panels = pack_panels(isa, x, P);
  const float* pp = panels.data_ptr<float>();
  for_each_part(nparts, [&](int64_t i) {
    sparse_forward_panels(isa, w, pp, M, P, b, yp, parts[i], parts[i + 1]);
  });
  return y;
}

at::Tensor sparse_linear_grad_input_cpu(const at::Tensor& grad_y, const at::Tensor& values,
                                        const at::Tensor& indices, const at::Tensor& offsets,
                                        std::string_view layout, int64_t in_features) {
  TORCH_CHECK_VALUE(grad_y.dim() == 2, "sparse_linear_grad_input: grad_y must be 2-D, got shape ",
                    grad_y.sizes());
  const int64_t M = grad_y.size(0), N = grad_y.size(1), K = in_features;
  const SparseWeight w = describe(std::string(layout), values, indices, offsets, N, K);
  check_activation(grad_y, "sparse_linear_grad_input: grad_y", N, "out_features");
  at::Tensor gx = at::empty({M, K}, grad_y.options());
  if (M == 0 || K == 0) return gx;
  const CpuIsa isa = current_isa();
  float* gxp = gx.data_ptr<float>();
  if (M <= kDirectMaxM) {
    const float* gyp = grad_y.data_ptr<float>();
    at::parallel_for(0, M, 1, [&](int64_t m0, int64_t m1) {
      sparse_grad_input_direct(isa, w, gyp, gxp, m0, m1);
    });
    return gx;
  }
  // Panels are the unit of parallelism here: narrow enough to give every thread one.
  const int64_t vw = sparse_vector_width(isa);
  const int64_t threads = std::max(1, at::get_num_threads());
  const int64_t P = vw * std::clamp<int64_t>((M + vw * threads - 1) / (vw * threads), 1, 4);
  const at::Tensor panels = pack_panels(isa, grad_y, P);
  const float* pp = panels.data_ptr<float>();
  const int64_t num = (M + P - 1) / P;
  at::parallel_for(0, num, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> scratch(static_cast<size_t>(K * P));
    for (int64_t p = p0; p < p1; ++p)
      sparse_grad_input_panel(isa, w, pp, M, P, p, scratch.data(), gxp);
  });
  return gx;
}

at::Tensor sparse_linear_grad_values_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                         const at::Tensor& values, const at::Tensor& indices,
                                         const at::Tensor& offsets, std::string_view layout,
                                         int64_t in_features) {
  TORCH_CHECK_VALUE(grad_y.dim() == 2 && x.dim() == 2, "sparse_linear_grad_values: grad_y and x "
                    "must be 2-D, got shapes ", grad_y.sizes(), " and ", x.sizes());
  const int64_t M = x.size(0), N = grad_y.size(1), K = in_features;
  const SparseWeight w = describe(std::string(layout), values, indices, offsets, N, K);
  check_activation(x, "sparse_linear_grad_values: x", K, "in_features");
  check_activation(grad_y, "sparse_linear_grad_values: grad_y", N, "out_features");
  TORCH_CHECK_VALUE(grad_y.size(0) == M, "sparse_linear_grad_values: grad_y must have the batch "
                    "size of x (", M, "), got ", grad_y.size(0));
  at::Tensor gv = at::zeros_like(values);
  if (values.numel() == 0 || M == 0) return gv;
  const CpuIsa isa = current_isa();
  const auto parts = balanced_parts(w);
  const int64_t nparts = static_cast<int64_t>(parts.size()) - 1;
  float* gvp = gv.data_ptr<float>();
  if (M <= kDirectMaxM) {
    const float* xp = x.data_ptr<float>();
    const float* gyp = grad_y.data_ptr<float>();
    for_each_part(nparts, [&](int64_t i) {
      sparse_grad_values_direct(isa, w, xp, gyp, M, gvp, parts[i], parts[i + 1]);
    });
    return gv;
  }
  const int64_t vw = sparse_vector_width(isa);
  const int64_t Mp = (M + vw - 1) / vw * vw;
  const at::Tensor xT = pack_panels(isa, x, Mp);      // one panel: [K][Mp]
  const at::Tensor gyT = pack_panels(isa, grad_y, Mp);  // [N][Mp]
  const float* xtp = xT.data_ptr<float>();
  const float* gtp = gyT.data_ptr<float>();
  for_each_part(nparts, [&](int64_t i) {
    sparse_grad_values_panel(isa, w, xtp, gtp, Mp, gvp, parts[i], parts[i + 1]);
  });
  return gv;
}

}  // namespace

TORCH_LIBRARY_IMPL(scalenn, CPU, m) {
  m.impl("sparse_linear", &sparse_linear_cpu);
  m.impl("sparse_linear_grad_input", &sparse_linear_grad_input_cpu);
  m.impl("sparse_linear_grad_values", &sparse_linear_grad_values_cpu);
}

}  // namespace scalenn::cpu
