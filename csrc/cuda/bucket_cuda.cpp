// CUDA bindings of the gradient-bucket ops of scalenn.distributed (built with SCALENN_CUDA):
// bucket_pack / bucket_unpack / bucket_quantize_int8 / bucket_dequantize_sum /
// bucket_unpack_int8 / bucket_requantize_int8. Schemas and contracts: the "bucket" block of
// csrc/ops.cpp and csrc/cpu/bucket_kernels.h; the checks mirror csrc/cpu/bucket_ops.cpp.
//
// Copies between the gradients and a flat buffer are driven by a piece table (address, flat
// offset, length per piece of at most kPiece elements, never crossing a tensor) built on the
// host and copied to the device with the launch: one kernel per distinct gradient dtype, for any
// number of tensors. bucket_unpack_int8 / bucket_requantize_int8 are composed from
// dequantize_sum into a float32 scratch buffer, exactly as their contracts are defined.
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#include "binding_utils.h"
#include "bucket_kernels.h"

namespace scalenn::cuda {
namespace {

// A block loops over 64 Ki elements: a 25 MB bucket is ~100 table rows, so building and copying
// the table per call costs microseconds, not the kernel's time.
constexpr int64_t kPiece = 1 << 16;

// Checks grads (float, contiguous, on `device`) and returns their total numel.
int64_t check_grads(at::TensorList grads, const at::Tensor& device_of, const char* op) {
  int64_t total = 0;
  for (size_t i = 0; i < grads.size(); ++i) {
    const std::string name = std::string(op) + ": grads[" + std::to_string(i) + "]";
    check_float_input(grads[i], name.c_str());
    check_contiguous(grads[i], name.c_str());
    check_same_device(grads[i], device_of, name.c_str(), "the bucket buffer");
    total += grads[i].numel();
  }
  return total;
}

struct PieceTable {
  at::Tensor table;  // int64 [3, n] on the device: addr, off, len
  int64_t n = 0;
  int kind = 0;  // float_kind_of the gradients' dtype
  const int64_t* addr() const { return table.data_ptr<int64_t>(); }
  const int64_t* off() const { return addr() + n; }
  const int64_t* len() const { return addr() + 2 * n; }
};

// One table per gradient dtype present (flat offsets count every gradient, in list order).
// The table is copied from (pinned) host memory on every call, so a CUDA graph replay would
// read a host buffer that was freed and reused since: refuse capture with a way out (the Triton
// kernels cache their tables on the device and can be captured).
std::vector<PieceTable> make_tables(at::TensorList grads, const at::Device& device,
                                    const char* op) {
  TORCH_CHECK(c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None,
              op, ": the compiled CUDA bucket kernels cannot be captured in a CUDA graph (their "
              "piece table is copied from host memory on every call); set "
              "SCALENN_GPU_BACKEND=triton to capture the Triton ones");
  std::vector<PieceTable> out;
  for (at::ScalarType st : {at::kFloat, at::kBFloat16, at::kHalf}) {
    std::vector<int64_t> addr, off, len;
    int64_t flat = 0;
    for (const auto& g : grads) {
      const int64_t n = g.numel();
      if (g.scalar_type() == st) {
        const auto base = reinterpret_cast<int64_t>(g.data_ptr());
        for (int64_t s = 0; s < n; s += kPiece) {
          addr.push_back(base + s * static_cast<int64_t>(g.element_size()));
          off.push_back(flat + s);
          len.push_back(std::min(kPiece, n - s));
        }
      }
      flat += n;
    }
    if (addr.empty()) continue;
    PieceTable t;
    t.n = static_cast<int64_t>(addr.size());
    t.kind = float_kind_of(st);
    at::Tensor host =
        at::empty({3, t.n}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    int64_t* h = host.data_ptr<int64_t>();
    std::copy(addr.begin(), addr.end(), h);
    std::copy(off.begin(), off.end(), h + t.n);
    std::copy(len.begin(), len.end(), h + 2 * t.n);
    t.table = host.to(device, /*non_blocking=*/true);
    out.push_back(std::move(t));
  }
  return out;
}

void check_flat(const at::Tensor& flat, int64_t total, const char* op) {
  const std::string name = std::string(op) + ": flat";
  check_float_input(flat, name.c_str());
  check_cuda(flat, name.c_str());
  check_dim(flat, 1, name.c_str());
  check_contiguous(flat, name.c_str());
  TORCH_CHECK_VALUE(flat.numel() >= total, op, ": flat must hold at least the ", total,
                    " elements of the gradients, got ", flat.numel());
}

void bucket_pack_cuda(at::TensorList grads, const at::Tensor& flat, double scale) {
  const int64_t total = check_grads(grads, flat, "bucket_pack");
  check_flat(flat, total, "bucket_pack");
  c10::cuda::CUDAGuard guard(flat.device());
  for (const PieceTable& t : make_tables(grads, flat.device(), "bucket_pack")) {
    C10_CUDA_CHECK(launch_bucket_pack(t.kind, float_kind_of(flat.scalar_type()), t.addr(),
                                      t.off(), t.len(), t.n, flat.data_ptr(),
                                      static_cast<float>(scale), current_stream()));
  }
}

void bucket_unpack_cuda(const at::Tensor& flat, at::TensorList grads, double scale) {
  const int64_t total = check_grads(grads, flat, "bucket_unpack");
  check_flat(flat, total, "bucket_unpack");
  c10::cuda::CUDAGuard guard(flat.device());
  for (const PieceTable& t : make_tables(grads, flat.device(), "bucket_unpack")) {
    C10_CUDA_CHECK(launch_bucket_unpack(float_kind_of(flat.scalar_type()), t.kind, t.addr(),
                                        t.off(), t.len(), t.n, flat.data_ptr(),
                                        static_cast<float>(scale), current_stream()));
  }
}

// records uint8 [..., N, C + 4] with record_dim + 1 dimensions -> C
int64_t chunk_of(const at::Tensor& records, int64_t record_dim, const char* op,
                 const char* what = "records") {
  const std::string name = std::string(op) + ": " + what;
  check_dtype(records, at::kByte, name.c_str());
  check_cuda(records, name.c_str());
  check_contiguous(records, name.c_str());
  TORCH_CHECK_VALUE(records.dim() == record_dim + 1 && records.size(record_dim) > 4, name,
                    " must be ", record_dim + 1, "-D with last dimension C + 4 (C >= 1 int8 "
                    "values, then a float32 scale), got shape ", records.sizes());
  return records.size(record_dim) - 4;
}

void check_residual(const at::Tensor& residual, const at::Tensor& records, int64_t numel,
                    const char* op) {
  const std::string name = std::string(op) + ": residual";
  check_dtype(residual, at::kFloat, name.c_str());
  check_dim(residual, 1, name.c_str());
  check_contiguous(residual, name.c_str());
  check_same_device(residual, records, name.c_str(), "records");
  TORCH_CHECK_VALUE(residual.numel() == numel, op, ": residual must have N * C = ", numel,
                    " elements (one float per record value), got ", residual.numel());
}

void bucket_quantize_int8_cuda(at::TensorList grads, const at::Tensor& residual,
                               const at::Tensor& records, double scale) {
  const char* op = "bucket_quantize_int8";
  const int64_t C = chunk_of(records, 1, op);
  const int64_t N = records.size(0);
  check_residual(residual, records, N * C, op);
  const int64_t total = check_grads(grads, residual, op);
  TORCH_CHECK_VALUE(total <= N * C, op, ": the gradients' ", total, " elements do not fit in ",
                    N, " chunks of ", C);
  c10::cuda::CUDAGuard guard(records.device());
  // v = grads * scale + residual, built in place in residual; then quantized per chunk.
  for (const PieceTable& t : make_tables(grads, records.device(), op)) {
    C10_CUDA_CHECK(launch_bucket_accumulate(t.kind, t.addr(), t.off(), t.len(), t.n,
                                            residual.data_ptr<float>(),
                                            static_cast<float>(scale), current_stream()));
  }
  C10_CUDA_CHECK(launch_bucket_quantize_chunks(residual.data_ptr<float>(),
                                               records.data_ptr<uint8_t>(), N, C,
                                               current_stream()));
}

void bucket_dequantize_sum_cuda(const at::Tensor& records, const at::Tensor& out) {
  const char* op = "bucket_dequantize_sum";
  const int64_t C = chunk_of(records, 2, op);
  const int64_t W = records.size(0), N = records.size(1);
  check_dtype(out, at::kFloat, "bucket_dequantize_sum: out");
  check_dim(out, 1, "bucket_dequantize_sum: out");
  check_contiguous(out, "bucket_dequantize_sum: out");
  check_same_device(records, out, "bucket_dequantize_sum: records", "out");
  TORCH_CHECK_VALUE(out.numel() == N * C, op, ": out must have records.size(1) * C = ", N * C,
                    " elements, got ", out.numel());
  c10::cuda::CUDAGuard guard(records.device());
  C10_CUDA_CHECK(launch_bucket_dequantize_sum(records.data_ptr<uint8_t>(), W, N, C,
                                              out.data_ptr<float>(), current_stream()));
}

void bucket_unpack_int8_cuda(const at::Tensor& records, at::TensorList grads) {
  const char* op = "bucket_unpack_int8";
  const int64_t C = chunk_of(records, 2, op);
  const int64_t N = records.size(1);
  const int64_t total = check_grads(grads, records, op);
  TORCH_CHECK_VALUE(total <= N * C, op, ": the gradients' ", total, " elements exceed the ", N,
                    " chunks of ", C, " in records");
  if (total == 0) return;
  at::Tensor sum = at::empty({N * C}, records.options().dtype(at::kFloat));
  bucket_dequantize_sum_cuda(records, sum);
  bucket_unpack_cuda(sum, grads, 1.0);  // x * 1.0f is exact: only the cast remains
}

void bucket_requantize_int8_cuda(const at::Tensor& records, const at::Tensor& residual,
                                 const at::Tensor& out) {
  const char* op = "bucket_requantize_int8";
  const int64_t C = chunk_of(records, 2, op);
  const int64_t N = records.size(1);
  TORCH_CHECK_VALUE(chunk_of(out, 1, op, "out") == C && out.size(0) == N, op,
                    ": out must have shape [", N, ", ", C + 4, "] (one record per chunk), got ",
                    out.sizes());
  check_same_device(records, out, "bucket_requantize_int8: records", "out");
  check_residual(residual, records, N * C, op);
  at::Tensor sum = at::empty({N * C}, records.options().dtype(at::kFloat));
  bucket_dequantize_sum_cuda(records, sum);
  const at::Tensor grads[] = {sum};
  bucket_quantize_int8_cuda(at::TensorList(grads), residual, out, 1.0);  // v = sum*1 + residual
}

}  // namespace

TORCH_LIBRARY_IMPL(scalenn, CUDA, m) {
  m.impl("bucket_pack", &bucket_pack_cuda);
  m.impl("bucket_unpack", &bucket_unpack_cuda);
  m.impl("bucket_quantize_int8", &bucket_quantize_int8_cuda);
  m.impl("bucket_dequantize_sum", &bucket_dequantize_sum_cuda);
  m.impl("bucket_unpack_int8", &bucket_unpack_int8_cuda);
  m.impl("bucket_requantize_int8", &bucket_requantize_int8_cuda);
}

}  // namespace scalenn::cuda
