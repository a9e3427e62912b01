// CPU implementations of the scalenn::bucket_* ops (ATen side: checks, segment tables,
// threading); the arithmetic lives in bucket_kernels.cpp, the contracts in bucket_kernels.h and
// the schema comments in csrc/ops.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#include "../checks.h"
#include "float_kind.h"
#include "bucket_kernels.h"

namespace scalenn::cpu {
namespace {

// About 128 KiB of fp32 per task: big enough to amortize a task, small enough to split a
// 25 MB bucket over every thread.
constexpr int64_t kGrainElems = 1 << 15;

std::vector<BucketSegment> segments_of(at::TensorList grads, const at::Tensor& flat,
                                       const char* op) {
  std::vector<BucketSegment> segs;
  segs.reserve(grads.size());
  int64_t offset = 0;
  for (size_t i = 0; i < grads.size(); ++i) {
    const at::Tensor& g = grads[i];
    const std::string name = std::string(op) + ": grads[" + std::to_string(i) + "]";
    check_float_input(g, name.c_str());
    check_contiguous(g, name.c_str());
    check_same_device(g, flat, name.c_str(), "the flat buffer");
    segs.push_back({const_cast<void*>(g.data_ptr()), float_kind(g.scalar_type()), offset,
                    g.numel()});
    offset += g.numel();
  }
  return segs;
}

int64_t total_numel(const std::vector<BucketSegment>& segs) {
  return segs.empty() ? 0 : segs.back().offset + segs.back().numel;
}

void check_flat(const at::Tensor& flat, const std::vector<BucketSegment>& segs, const char* op) {
  const std::string name = std::string(op) + ": flat";
  check_float_input(flat, name.c_str());
  check_dim(flat, 1, name.c_str());
  check_contiguous(flat, name.c_str());
  TORCH_CHECK_VALUE(flat.numel() >= total_numel(segs), op, ": flat must hold at least the ",
                    total_numel(segs), " elements of the gradients, got ", flat.numel());
}

void bucket_pack_cpu(at::TensorList grads, const at::Tensor& flat, double scale) {
  auto segs = segments_of(grads, flat, "bucket_pack");
  check_flat(flat, segs, "bucket_pack");
  const CpuIsa isa = current_isa();
  const FloatKind fk = float_kind(flat.scalar_type());
  void* fp = flat.data_ptr();
  const float s = static_cast<float>(scale);
  at::parallel_for(0, total_numel(segs), kGrainElems, [&](int64_t b, int64_t e) {
    bucket_pack_range(isa, segs.data(), static_cast<int64_t>(segs.size()), fk, fp, s, b, e);
  });
}

void bucket_unpack_cpu(const at::Tensor& flat, at::TensorList grads, double scale) {
  auto segs = segments_of(grads, flat, "bucket_unpack");
  check_flat(flat, segs, "bucket_unpack");
  const CpuIsa isa = current_isa();
  const FloatKind fk = float_kind(flat.scalar_type());
  const void* fp = flat.data_ptr();
  const float s = static_cast<float>(scale);
  at::parallel_for(0, total_numel(segs), kGrainElems, [&](int64_t b, int64_t e) {
    bucket_unpack_range(isa, segs.data(), static_cast<int64_t>(segs.size()), fk, fp, s, b, e);
  });
}

// records [nchunks, C + 4] uint8 -> C
int64_t chunk_of(const at::Tensor& records, int64_t record_dim, const char* op) {
  const std::string name = std::string(op) + ": records";
  check_dtype(records, at::kByte, name.c_str());
  check_contiguous(records, name.c_str());
  TORCH_CHECK_VALUE(records.dim() == record_dim + 1 && records.size(record_dim) > 4, name,
                    " must be ", record_dim + 1, "-D with last dimension C + 4 (C >= 1 int8 "
                    "values, then a float32 scale), got shape ", records.sizes());
  return records.size(record_dim) - 4;
}

// The error-feedback state of `nchunks` chunks of C: float32 [nchunks * C], or records uint8
// [nchunks, C + 4] (bucket_kernels.h).
Residual residual_of(const at::Tensor& residual, const at::Tensor& records, int64_t nchunks,
                     int64_t C, const char* op) {
  const std::string name = std::string(op) + ": residual";
  check_contiguous(residual, name.c_str());
  check_same_device(residual, records, name.c_str(), "records");
  Residual r;
  if (residual.scalar_type() == at::kByte) {
    TORCH_CHECK_VALUE(residual.dim() == 2 && residual.size(0) == nchunks &&
                      residual.size(1) == C + 4, name, " records must have shape [", nchunks,
                      ", ", C + 4, "] (one per chunk), got ", residual.sizes());
    r.records = residual.data_ptr<uint8_t>();
    return r;
  }
  TORCH_CHECK_TYPE(residual.scalar_type() == at::kFloat, name, " must be torch.float32 [N * C] "
                   "or torch.uint8 records [N, C + 4], got ", residual.scalar_type());
  check_dim(residual, 1, name.c_str());
  TORCH_CHECK_VALUE(residual.numel() == nchunks * C, op, ": residual must have N * C = ",
                    nchunks * C, " elements, got ", residual.numel());
  r.values = residual.data_ptr<float>();
  return r;
}

void bucket_quantize_int8_cpu(at::TensorList grads, const at::Tensor& residual,
                              const at::Tensor& records, double scale) {
  const char* op = "bucket_quantize_int8";
  auto segs = segments_of(grads, residual, op);
  const int64_t C = chunk_of(records, 1, op);
  const int64_t nchunks = records.size(0);
  const Residual rp = residual_of(residual, records, nchunks, C, op);
  TORCH_CHECK_VALUE(total_numel(segs) <= nchunks * C, op, ": the gradients' ", total_numel(segs),
                    " elements do not fit in ", nchunks, " chunks of ", C);
  const CpuIsa isa = current_isa();
  uint8_t* qp = records.data_ptr<uint8_t>();
  const float s = static_cast<float>(scale);
  const int64_t grain = std::max<int64_t>(1, kGrainElems / C);
  at::parallel_for(0, nchunks, grain, [&](int64_t b, int64_t e) {
    bucket_quantize_int8_chunks(isa, segs.data(), static_cast<int64_t>(segs.size()), s, rp, qp, C,
                                b, e);
  });
}

void bucket_dequantize_sum_cpu(const at::Tensor& records, const at::Tensor& out) {
  const char* op = "bucket_dequantize_sum";
  const int64_t C = chunk_of(records, 2, op);
  const int64_t W = records.size(0), nchunks = records.size(1);
  check_dtype(out, at::kFloat, "bucket_dequantize_sum: out");
  check_dim(out, 1, "bucket_dequantize_sum: out");
  check_contiguous(out, "bucket_dequantize_sum: out");
  check_same_device(records, out, "bucket_dequantize_sum: records", "out");
  TORCH_CHECK_VALUE(out.numel() == nchunks * C, op, ": out must have records.size(1) * C = ",
                    nchunks * C, " elements, got ", out.numel());
  const CpuIsa isa = current_isa();
  const uint8_t* qp = records.data_ptr<uint8_t>();
  float* op_ = out.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, C * W));
  at::parallel_for(0, nchunks, grain, [&](int64_t b, int64_t e) {
    bucket_dequantize_sum_chunks(isa, qp, W, nchunks, C, op_, b, e);
  });
}

void bucket_unpack_int8_cpu(const at::Tensor& records, at::TensorList grads) {
  const char* op = "bucket_unpack_int8";
  auto segs = segments_of(grads, records, op);
  const int64_t C = chunk_of(records, 2, op);
  const int64_t W = records.size(0), nchunks = records.size(1);
  TORCH_CHECK_VALUE(total_numel(segs) <= nchunks * C, op, ": the gradients' ", total_numel(segs),
                    " elements exceed the ", nchunks, " chunks of ", C, " in records");
  const CpuIsa isa = current_isa();
  const uint8_t* qp = records.data_ptr<uint8_t>();
  // only the chunks that hold gradient values (the rest: flags/padding, read elsewhere)
  const int64_t used = (total_numel(segs) + C - 1) / C;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, C * W));
  at::parallel_for(0, used, grain, [&](int64_t b, int64_t e) {
    bucket_unpack_int8_chunks(isa, segs.data(), static_cast<int64_t>(segs.size()), qp, W,
                              nchunks, C, b, e);
  });
}

void bucket_requantize_int8_cpu(const at::Tensor& records, const at::Tensor& residual,
                                const at::Tensor& out) {
  const char* op = "bucket_requantize_int8";
  const int64_t C = chunk_of(records, 2, op);
  const int64_t W = records.size(0), nchunks = records.size(1);
  check_dtype(out, at::kByte, "bucket_requantize_int8: out");
  check_contiguous(out, "bucket_requantize_int8: out");
  TORCH_CHECK_VALUE(out.dim() == 2 && out.size(0) == nchunks && out.size(1) == C + 4, op,
                    ": out must have shape [", nchunks, ", ", C + 4, "] (one record per chunk), "
                    "got ", out.sizes());
  check_same_device(records, out, "bucket_requantize_int8: records", "out");
  const Residual rp = residual_of(residual, records, nchunks, C, op);
  const CpuIsa isa = current_isa();
  const uint8_t* qp = records.data_ptr<uint8_t>();
  uint8_t* outp = out.data_ptr<uint8_t>();
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, C * W));
  at::parallel_for(0, nchunks, grain, [&](int64_t b, int64_t e) {
    bucket_requantize_int8_chunks(isa, qp, W, nchunks, C, rp, outp, b, e);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(scalenn, CPU, m) {
  m.impl("bucket_unpack_int8", &bucket_unpack_int8_cpu);
  m.impl("bucket_requantize_int8", &bucket_requantize_int8_cpu);
  m.impl("bucket_pack", &bucket_pack_cpu);
  m.impl("bucket_unpack", &bucket_unpack_cpu);
  m.impl("bucket_quantize_int8", &bucket_quantize_int8_cpu);
  m.impl("bucket_dequantize_sum", &bucket_dequantize_sum_cpu);
}

}  // namespace scalenn::cpu
