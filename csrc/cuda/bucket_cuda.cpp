// CUDA bindings of the gradient-bucket ops (built with SCALENN_CUDA): bucket_pack_cast /
// bucket_unpack_cast / bucket_pack_q8 / bucket_unpack_q8. The chunk table (address, flat offset,
// length per chunk) is built on the host from the tensors' sizes and copied to the device with
// the launch, so any number of tensors costs one kernel.
#include <torch/library.h>

#include <vector>

#include "binding_utils.h"
#include "bucket_kernels.h"

namespace scalenn::cuda {
namespace {

// Cast chunks are large (a block loops over 64 Ki elements): a 25 MB bucket is ~100 table rows,
// so building and copying the table per call costs microseconds, not the kernel's time.
constexpr int64_t kCastChunk = 1 << 16;

void check_bucket_tensors(const at::TensorList& tensors, const char* op) {
  TORCH_CHECK_VALUE(!tensors.empty(), op, ": tensors must be a non-empty list");
  const auto& first = tensors[0];
  check_float_input(first, op);
  check_cuda(first, op);
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK_TYPE(tensors[i].scalar_type() == first.scalar_type(), op,
                     ": tensors must share one dtype; tensors[0] is ",
                     dtype_name(first.scalar_type()), ", tensors[", i, "] is ",
                     dtype_name(tensors[i].scalar_type()));
    TORCH_CHECK_VALUE(tensors[i].is_contiguous() && tensors[i].device() == first.device(), op,
                      ": tensors must be contiguous and on one device; tensors[", i,
                      "] is not");
  }
}

struct ChunkTable {
  at::Tensor table;  // int64 [3, n_chunks] on the device: addr, off, len
  int64_t n_chunks = 0;
  int64_t total = 0;
  const int64_t* addr() const { return table.data_ptr<int64_t>(); }
  const int64_t* off() const { return addr() + n_chunks; }
  const int64_t* len() const { return addr() + 2 * n_chunks; }
};

ChunkTable make_table(const at::TensorList& tensors, int64_t chunk) {
  std::vector<int64_t> addr, off, len;
  int64_t flat = 0;
  for (const auto& t : tensors) {
    const int64_t n = t.numel();
    const auto base = reinterpret_cast<int64_t>(t.data_ptr());
    for (int64_t s = 0; s < n; s += chunk) {
      addr.push_back(base + s * static_cast<int64_t>(t.element_size()));
      off.push_back(flat + s);
      len.push_back(std::min(chunk, n - s));
    }
    flat += n;
  }
  ChunkTable out;
  out.n_chunks = static_cast<int64_t>(addr.size());
  out.total = flat;
  if (out.n_chunks > 0) {
    at::Tensor host = at::empty({3, out.n_chunks},
                                at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    int64_t* h = host.data_ptr<int64_t>();
    std::copy(addr.begin(), addr.end(), h);
    std::copy(off.begin(), off.end(), h + out.n_chunks);
    std::copy(len.begin(), len.end(), h + 2 * out.n_chunks);
    out.table = host.to(tensors[0].device(), /*non_blocking=*/true);
  }
  return out;
}

at::Tensor bucket_pack_cast_cuda(at::TensorList tensors, double scale, at::ScalarType dtype) {
  check_bucket_tensors(tensors, "bucket_pack_cast");
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
                   "bucket_pack_cast: dtype must be float32, bfloat16 or float16, got ",
                   dtype_name(dtype));
  c10::cuda::CUDAGuard guard(tensors[0].device());
  const ChunkTable t = make_table(tensors, kCastChunk);
  at::Tensor flat = at::empty({t.total}, tensors[0].options().dtype(dtype));
  if (t.n_chunks > 0) {
    C10_CUDA_CHECK(launch_bucket_pack(float_kind_of(tensors[0].scalar_type()),
                                      float_kind_of(dtype), t.addr(), t.off(), t.len(),
                                      t.n_chunks, flat.data_ptr(), static_cast<float>(scale),
                                      current_stream()));
  }
  return flat;
}

void bucket_unpack_cast_cuda(const at::Tensor& flat, at::TensorList tensors, double scale) {
  check_bucket_tensors(tensors, "bucket_unpack_cast");
  check_float_input(flat, "bucket_unpack_cast: flat");
  check_same_device(flat, tensors[0], "bucket_unpack_cast: flat", "tensors");
  c10::cuda::CUDAGuard guard(flat.device());
  const ChunkTable t = make_table(tensors, kCastChunk);
  TORCH_CHECK_VALUE(flat.dim() == 1 && flat.numel() == t.total && flat.is_contiguous(),
                    "bucket_unpack_cast: flat must be contiguous 1-D with ", t.total,
                    " elements, got ", flat.sizes());
  if (t.n_chunks > 0) {
    C10_CUDA_CHECK(launch_bucket_unpack(float_kind_of(flat.scalar_type()),
                                        float_kind_of(tensors[0].scalar_type()), t.addr(),
                                        t.off(), t.len(), t.n_chunks, flat.data_ptr(),
                                        static_cast<float>(scale), current_stream()));
  }
}

void check_chunk(int64_t chunk, const char* op) {
  TORCH_CHECK_VALUE(chunk >= 16 && (chunk & (chunk - 1)) == 0, op,
                    ": chunk must be a power of two >= 16, got ", chunk);
}

std::tuple<at::Tensor, at::Tensor> bucket_pack_q8_cuda(at::TensorList tensors, double scale,
                                                       int64_t chunk) {
  check_bucket_tensors(tensors, "bucket_pack_q8");
  check_chunk(chunk, "bucket_pack_q8");
  c10::cuda::CUDAGuard guard(tensors[0].device());
  const ChunkTable t = make_table(tensors, chunk);
  at::Tensor q = at::empty({t.total}, tensors[0].options().dtype(at::kChar));
  at::Tensor scales = at::empty({t.n_chunks}, tensors[0].options().dtype(at::kFloat));
  if (t.n_chunks > 0) {
    C10_CUDA_CHECK(launch_bucket_pack_int8(float_kind_of(tensors[0].scalar_type()), t.addr(),
                                           t.off(), t.len(), t.n_chunks, q.data_ptr<int8_t>(),
                                           scales.data_ptr<float>(), static_cast<float>(scale),
                                           current_stream()));
  }
  return {q, scales};
}

void bucket_unpack_q8_cuda(const at::Tensor& q, const at::Tensor& chunk_scales,
                           at::TensorList tensors, double scale, int64_t chunk) {
  check_bucket_tensors(tensors, "bucket_unpack_q8");
  check_chunk(chunk, "bucket_unpack_q8");
  check_dtype(q, at::kChar, "bucket_unpack_q8: q");
  check_dtype(chunk_scales, at::kFloat, "bucket_unpack_q8: chunk_scales");
  check_same_device(q, tensors[0], "bucket_unpack_q8: q", "tensors");
  check_same_device(chunk_scales, tensors[0], "bucket_unpack_q8: chunk_scales", "tensors");
  c10::cuda::CUDAGuard guard(q.device());
  const ChunkTable t = make_table(tensors, chunk);
  TORCH_CHECK_VALUE(q.dim() == 1 && q.numel() == t.total && q.is_contiguous(),
                    "bucket_unpack_q8: q must be contiguous 1-D with ", t.total,
                    " elements, got ", q.sizes());
  TORCH_CHECK_VALUE(chunk_scales.dim() == 1 && chunk_scales.numel() == t.n_chunks &&
                        chunk_scales.is_contiguous(),
                    "bucket_unpack_q8: chunk_scales must be contiguous [", t.n_chunks, "], got ",
                    chunk_scales.sizes());
  if (t.n_chunks > 0) {
    C10_CUDA_CHECK(launch_bucket_unpack_int8(float_kind_of(tensors[0].scalar_type()), t.addr(),
                                             t.off(), t.len(), t.n_chunks,
                                             q.data_ptr<int8_t>(), chunk_scales.data_ptr<float>(),
                                             static_cast<float>(scale), current_stream()));
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(scalenn, CUDA, m) {
  m.impl("bucket_pack_cast", &bucket_pack_cast_cuda);
  m.impl("bucket_unpack_cast", &bucket_unpack_cast_cuda);
  m.impl("bucket_pack_q8", &bucket_pack_q8_cuda);
  m.impl("bucket_unpack_q8", &bucket_unpack_q8_cuda);
}

}  // namespace scalenn::cuda
