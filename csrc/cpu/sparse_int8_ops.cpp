// CPU implementations of the sparse int8 ops (SparseInt8Linear; ATen side: checks, allocation,
// threading); the arithmetic lives in sparse_int8_kernels.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "float_kind.h"
#include "int8_gemm_kernels.h"
#include "sparse_int8_kernels.h"

namespace scalenn::cpu {
namespace {

SparseInt8Format parse_format(c10::string_view format, const char* op) {
  if (format == "elem16") return SparseInt8Format::elem16;
  if (format == "quad") return SparseInt8Format::quad;
  TORCH_CHECK_VALUE(false, op, ": format must be 'elem16' or 'quad', got '", std::string(format),
                    "'");
}

void check_1d(const at::Tensor& t, at::ScalarType st, const std::string& name) {
  check_dtype(t, st, name.c_str());
  check_dim(t, 1, name.c_str());
  check_contiguous(t, name.c_str());
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be on the CPU, got ", t.device());
}

// elem16 as SparseInt8Linear keeps it: values and rel [steps, 64], rows of 64 contiguous bytes
// the same stride (>= 64) apart (views of one interleaved array). Returns that stride.
int64_t check_step_views(const at::Tensor& values, const at::Tensor& rel, SparseInt8Format f,
                         int64_t steps, const char* op) {
  const std::string o(op);
  check_dtype(values, at::kChar, (o + ": values").c_str());
  check_dtype(rel, at::kByte, (o + ": rel").c_str());
  TORCH_CHECK_VALUE(f == SparseInt8Format::elem16 && values.dim() == 2 && rel.dim() == 2, op,
                    ": 2-D values and rel are the elem16 step layout [steps, ", kElemStep,
                    "] (both 2-D); other formats take 1-D arrays, got values ", values.sizes(),
                    " and rel ", rel.sizes());
  TORCH_CHECK_VALUE(values.device().is_cpu() && rel.device().is_cpu(), op,
                    ": values and rel must be on the CPU");
  const bool shape_ok = values.size(0) == steps && rel.size(0) == steps &&
                        values.size(1) == kElemStep && rel.size(1) == kElemStep;
  TORCH_CHECK_VALUE(shape_ok, op, ": for ", steps, " bases values and rel must be [", steps, ", ",
                    kElemStep, "], got ", values.sizes(), " and ", rel.sizes());
  // (With fewer than 2 rows the row stride is never used.)
  const bool strides_ok = steps == 0 || ((values.stride(1) == 1 && rel.stride(1) == 1) &&
                                         (steps == 1 || (values.stride(0) == rel.stride(0) &&
                                                         values.stride(0) >= kElemStep)));
  TORCH_CHECK_VALUE(strides_ok, op, ": 2-D values and rel need contiguous rows the same stride "
                    "(>= ", kElemStep, ") apart, got strides ", values.strides(), " and ",
                    rel.strides());
  return steps <= 1 ? kElemStep : values.stride(0);
}

// What the loops rely on to stay in bounds, in O(N): array sizes and monotone row_offsets inside
// [0, chunks]. The bases (4 * base < Kp; rel <= 255 past it is absorbed by the buffers' slack,
// see sparse_int8_kernels.h) are checked by run_rows, each piece's before its kernel runs.
SparseInt8Weight check_weight(const at::Tensor& values, const at::Tensor& rel,
                              const at::Tensor& base, const at::Tensor& row_offsets,
                              const at::Tensor& row_order, c10::string_view format, int64_t K,
                              const char* op) {
  const std::string o(op);
  const bool steps_2d = values.dim() == 2 || rel.dim() == 2;
  if (!steps_2d) {
    check_1d(values, at::kChar, o + ": values");
    check_1d(rel, at::kByte, o + ": rel");
  }
  check_1d(base, at::kShort, o + ": base");
  check_1d(row_offsets, at::kInt, o + ": row_offsets");
  check_1d(row_order, at::kInt, o + ": row_order");
  SparseInt8Weight w{};
  w.format = parse_format(format, op);
  TORCH_CHECK_VALUE(row_offsets.numel() >= 1, op, ": row_offsets must have out_features + 1 >= 1 "
                    "entries");
  TORCH_CHECK_VALUE(K <= kMaxK, op, ": in_features must be <= ", kMaxK, ", got ", K);
  w.N = row_offsets.numel() - 1;
  w.K = K;
  const int64_t chunks = base.numel() * w.chunks_per_base();
  const int64_t entries = chunks * w.chunk_entries();
  if (steps_2d) {
    w.step_bytes = check_step_views(values, rel, w.format, base.numel(), op);
  } else {
    TORCH_CHECK_VALUE(rel.numel() == entries && values.numel() == entries * w.entry_bytes(), op,
                      ": for ", base.numel(), " bases of the '", std::string(format),
                      "' format rel must have ", entries, " entries and values ",
                      entries * w.entry_bytes(), ", got ", rel.numel(), " and ", values.numel());
  }
  const int32_t* ro = row_offsets.data_ptr<int32_t>();
  bool ok = ro[0] == 0 && ro[w.N] == chunks;
  for (int64_t n = 0; n < w.N; ++n) ok &= ro[n] <= ro[n + 1];  // branch-free: vectorizes
  TORCH_CHECK_VALUE(ok, op, ": row_offsets must start at 0, never decrease and end at the number "
                    "of chunks (", chunks, ")");
  // Every packed row writes output row row_order[p]: inside [0, N) (a permutation, which
  // fmt.check verifies on load; duplicates would give wrong rows, never a write outside y).
  TORCH_CHECK_VALUE(row_order.numel() == w.N, op, ": row_order must have out_features = ", w.N,
                    " entries, got ", row_order.numel());
  const int32_t* order = row_order.data_ptr<int32_t>();
  bool inside = true;
  for (int64_t p = 0; p < w.N; ++p) inside &= order[p] >= 0 && order[p] < w.N;  // vectorizes
  TORCH_CHECK_VALUE(inside, op, ": row_order entries must lie in [0, out_features = ", w.N, ")");
  const uint16_t* b = reinterpret_cast<const uint16_t*>(base.data_ptr<int16_t>());
  w.values = values.data_ptr<int8_t>();
  w.rel = rel.data_ptr<uint8_t>();
  w.base = b;
  w.row_offsets = ro;
  w.row_order = order;
  return w;
}

// Output rows are cut into about 4 pieces per thread with equal work (chunks, plus one per row
// for its epilogue), handed out dynamically as in the dense int8 GEMM (int8_linear_ops.cpp).
// Each piece's bases are checked (an AVX max) right before its kernel reads them: checked up
// front, serially, the scan of a cold base array cost ~3% of a batch-1 call at 4096 x 4096, 90%.
// A piece with a bad base is skipped and the op raises once the threads are done.
void run_rows(CpuIsa isa, const SparseInt8Weight& w, const SparseInt8Problem& pr,
              int64_t base_count, const char* op) {
  if (pr.M == 0 || w.N == 0) return;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t R = w.block_rows();  // pieces start on a whole elem16 group
  const int64_t pieces = std::min<int64_t>((w.N + R - 1) / R, 4 * threads);
  const int64_t total = w.row_offsets[w.N] + w.N;
  std::vector<int64_t> start(pieces + 1, w.N);
  for (int64_t i = 0, n = 0; i < pieces; ++i) {
    const int64_t target = total * i / pieces;
    while (n < w.N && w.row_offsets[n] + n < target) n += R;
    start[i] = std::min(n, w.N);
  }
  const int64_t limit = packed_k(w.K), per_base = w.chunks_per_base();
  std::atomic<bool> bad_base{false};
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, pieces), 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1); i < pieces; i = next.fetch_add(1)) {
      if (start[i] >= start[i + 1]) continue;
      const int64_t b0 = w.row_offsets[start[i]] / per_base;
      const int64_t b1 = w.row_offsets[start[i + 1]] / per_base;
      if (b1 > b0 && 4 * int64_t(max_u16(isa, w.base + b0, b1 - b0)) >= limit) {
        bad_base = true;
        continue;
      }
      sparse_int8_rows(isa, w, pr, start[i], start[i + 1]);
    }
  });
  if (bad_base) {
    const int64_t c = std::find_if(w.base, w.base + base_count,
                                   [&](uint16_t v) { return 4 * int64_t(v) >= limit; }) - w.base;
    TORCH_CHECK_VALUE(false, op, ": base ", c, " starts at column ", 4 * int64_t(w.base[c]),
                      ", outside in_features = ", w.K);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sparse_int8_pack_cpu(
    const at::Tensor& w_int8, c10::string_view format) {
  check_dtype(w_int8, at::kChar, "sparse_int8_pack: w_int8");
  check_dim(w_int8, 2, "sparse_int8_pack: w_int8");
  const SparseInt8Format f = parse_format(format, "sparse_int8_pack");
  const at::Tensor wc = w_int8.contiguous();
  const int64_t N = wc.size(0), K = wc.size(1);
  TORCH_CHECK_VALUE(K <= kMaxK, "sparse_int8_pack: in_features must be <= ", kMaxK, ", got ", K);
  if (wc.numel() > 0) {
    const int64_t lowest = wc.min().item<int8_t>();
    TORCH_CHECK_VALUE(lowest >= -127, "sparse_int8_pack: weights must be symmetric int8 in "
                      "[-127, 127] (as quantize_per_row produces), got a value ", lowest);
  }
  const int8_t* src = wc.data_ptr<int8_t>();
  // Chunks per block (rows for quad, groups of 16 rows for elem16) for a packed row order,
  // counted in parallel; first[i] = first chunk of block i once summed.
  const int64_t R = sparse_int8_block_rows(f), blocks = (N + R - 1) / R;
  auto count_chunks = [&](const int32_t* order, std::vector<int64_t>& first) {
    first.assign(blocks + 1, 0);
    at::parallel_for(0, blocks, 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        first[i + 1] = sparse_int8_block_chunks(f, src, order, N, K, i);
    });
    for (int64_t i = 0; i < blocks; ++i) first[i + 1] += first[i];
  };
  // Packed row order: output order, or for elem16 the rows sorted by kept weights (most first)
  // when that saves at least 5% of the steps: a group has as many steps as its fullest row
  // needs, so rows of very different density (a pruned CNN classifier: 0-644 kept per row)
  // filled 51% of the slots in output order and 80% sorted, while similar rows gain little and
  // sorted rows cost a scatter of the results (6-10% at M = 16-128).
  at::Tensor row_order = at::arange(N, wc.options().dtype(at::kInt));
  int32_t* order = row_order.data_ptr<int32_t>();
  std::vector<int64_t> first;
  count_chunks(order, first);
  if (f == SparseInt8Format::elem16 && N > 0) {
    std::vector<int64_t> kept(N);
    at::parallel_for(0, N, 16, [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n)
        kept[n] = std::count_if(src + n * K, src + (n + 1) * K, [](int8_t v) { return v != 0; });
    });
    std::vector<int32_t> sorted(order, order + N);
    std::stable_sort(sorted.begin(), sorted.end(),
                     [&](int32_t a, int32_t b) { return kept[a] > kept[b]; });
    std::vector<int64_t> sorted_first;
    count_chunks(sorted.data(), sorted_first);
    if (sorted_first[blocks] < first[blocks] * 95 / 100) {
      std::copy(sorted.begin(), sorted.end(), order);
      first.swap(sorted_first);
    }
  }
  TORCH_CHECK_VALUE(first[blocks] * kEntriesPerChunk * 4 < (int64_t(1) << 31),
                    "sparse_int8_pack: too many entries for int32 offsets");
  const int64_t chunks = first[blocks];
  at::Tensor row_offsets = at::empty({N + 1}, wc.options().dtype(at::kInt));
  int32_t* ro = row_offsets.data_ptr<int32_t>();
  for (int64_t n = 0; n < N; ++n) ro[n] = static_cast<int32_t>(first[n / R]);
  ro[N] = static_cast<int32_t>(chunks);
  const bool quad = f == SparseInt8Format::quad;
  const int64_t entries = chunks * (quad ? kEntriesPerChunk : kElemSlots);
  at::Tensor values = at::empty({entries * (quad ? 4 : 1)}, wc.options());
  at::Tensor rel = at::empty({entries}, wc.options().dtype(at::kByte));
  at::Tensor base = at::empty({chunks / R}, wc.options().dtype(at::kShort));
  int8_t* vp = values.data_ptr<int8_t>();
  uint8_t* rp = rel.data_ptr<uint8_t>();
  uint16_t* bp = reinterpret_cast<uint16_t*>(base.data_ptr<int16_t>());
  at::parallel_for(0, blocks, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) sparse_int8_pack_block(f, src, order, N, K, i, first[i], vp, rp, bp);
  });
  return {values, rel, base, row_offsets, row_order};
}

// Quantized activations for the kernel `isa` and M pick: a [M, Kp] buffer (gather kernels) or
// token panels (AVX-512 panel kernel), each with the slack the bounds argument needs.
struct Activations {
  at::Tensor buffer;
  const uint8_t* data;
  int64_t P;
};

Activations layout_activations(CpuIsa isa, SparseInt8Format f, const at::Tensor& rows,
                               int64_t M, int64_t K) {
  const int64_t P = sparse_int8_panel_width(isa, f, M);
  if (P == 0) return {rows, rows.data_ptr<uint8_t>(), 0};
  const int64_t panels = (M + P - 1) / P;
  at::Tensor buf = at::empty({panels * packed_k(K) * P + (kMaxRel + 1) * 4 * P + 64}, rows.options());
  const uint8_t* src = rows.data_ptr<uint8_t>();
  uint8_t* dst = buf.data_ptr<uint8_t>();
  at::parallel_for(0, panels, 1, [&](int64_t b, int64_t e) {
    sparse_int8_transpose_panels(f, src, M, K, P, dst, b, e);
  });
  return {buf, dst, P};
}

at::Tensor sparse_int8_gemm_s32_cpu(const at::Tensor& x, const at::Tensor& values,
                                    const at::Tensor& rel, const at::Tensor& base,
                                    const at::Tensor& row_offsets, const at::Tensor& row_order,
                                    c10::string_view format) {
  const char* op = "sparse_int8_gemm_s32";
  check_dtype(x, at::kChar, "sparse_int8_gemm_s32: x_int8");
  check_dim(x, 2, "sparse_int8_gemm_s32: x_int8");
  const at::Tensor xc = x.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1);
  const SparseInt8Weight w = check_weight(values, rel, base, row_offsets, row_order, format, K, op);
  at::Tensor out = at::empty({M, w.N}, xc.options().dtype(at::kInt));
  if (M == 0 || w.N == 0) return out;
  const CpuIsa isa = current_isa();
  const int64_t Kp = packed_k(K);
  at::Tensor a = at::empty({M * Kp + kSlackBytes}, xc.options().dtype(at::kByte));
  uint8_t* ap = a.data_ptr<uint8_t>();
  const int8_t* xp = xc.data_ptr<int8_t>();
  at::parallel_for(0, M, 64, [&](int64_t b, int64_t e) { copy_int8_activations(isa, xp, K, ap, b, e); });
  Activations act = layout_activations(isa, w.format, a, M, K);
  SparseInt8Problem pr;
  pr.M = M;
  pr.a = act.data;
  pr.P = act.P;
  pr.out_s32 = out.data_ptr<int32_t>();
  run_rows(isa, w, pr, base.numel(), op);
  return out;
}

at::Tensor sparse_int8_linear_cpu(const at::Tensor& x, const at::Tensor& values,
                                  const at::Tensor& rel, const at::Tensor& base,
                                  const at::Tensor& row_offsets, const at::Tensor& row_order,
                                  const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                                  c10::string_view format) {
  const char* op = "sparse_int8_linear";
  check_float_input(x, "sparse_int8_linear: x");
  check_dim(x, 2, "sparse_int8_linear: x");
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": x must be on the CPU, got ", x.device());
  const at::Tensor xc = x.contiguous();
  const int64_t M = xc.size(0), K = xc.size(1);
  const SparseInt8Weight w = check_weight(values, rel, base, row_offsets, row_order, format, K, op);
  check_1d(w_scale, at::kFloat, "sparse_int8_linear: w_scale");
  TORCH_CHECK_VALUE(w_scale.numel() == w.N, op, ": w_scale must have out_features = ", w.N,
                    " entries, got ", w_scale.numel());
  if (bias.has_value()) {
    check_1d(*bias, at::kFloat, "sparse_int8_linear: bias");
    TORCH_CHECK_VALUE(bias->numel() == w.N, op, ": bias must have out_features = ", w.N,
                      " entries, got ", bias->numel());
  }
  at::Tensor out = at::empty({M, w.N}, xc.options().dtype(at::kFloat));
  if (M == 0 || w.N == 0) return out.to(x.scalar_type());
  const CpuIsa isa = current_isa();
  const int64_t Kp = packed_k(K);
  const int64_t scale_bytes = round_up(M * 4, 64);
  at::Tensor scratch = at::empty({scale_bytes + M * Kp + kSlackBytes}, xc.options().dtype(at::kByte));
  float* rs = reinterpret_cast<float*>(scratch.data_ptr<uint8_t>());
  uint8_t* ap = scratch.data_ptr<uint8_t>() + scale_bytes;
  const FloatKind kind = float_kind(xc.scalar_type());
  const void* xp = xc.data_ptr();
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)),
                   [&](int64_t b, int64_t e) {
                     quantize_activations(isa, kind, xp, K, 0.0f, ap, rs, b, e);
                   });
  Activations act = layout_activations(isa, w.format, scratch.narrow(0, scale_bytes, M * Kp + kSlackBytes), M, K);
  SparseInt8Problem pr;
  pr.M = M;
  pr.a = act.data;
  pr.P = act.P;
  pr.out = out.data_ptr<float>();
  pr.row_scale = rs;
  pr.w_scale = w_scale.data_ptr<float>();
  pr.bias = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  run_rows(isa, w, pr, base.numel(), op);
  return x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(scalenn, CPU, m) {
  m.impl("sparse_int8_pack", &sparse_int8_pack_cpu);
  m.impl("sparse_int8_gemm_s32", &sparse_int8_gemm_s32_cpu);
  m.impl("sparse_int8_linear", &sparse_int8_linear_cpu);
}

}  // namespace scalenn::cpu
