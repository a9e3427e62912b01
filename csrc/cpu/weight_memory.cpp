#include "weight_memory.h"

#include <cstdint>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace scalenn::cpu {

at::Tensor to_weight_memory(const at::Tensor& t) {
  constexpr int64_t kHugePage = int64_t(2) << 20;
  const int64_t nbytes = t.numel() * static_cast<int64_t>(t.element_size());
  if (!t.device().is_cpu() || !t.is_contiguous() || nbytes <= 0) return t;
  // Huge pages up to the end when that wastes at most 1/8 of the tensor, else only the whole
  // 2 MiB pieces (the tail stays on 4 KiB pages); too small for either: unchanged.
  const int64_t up = (nbytes + kHugePage - 1) / kHugePage * kHugePage;
  const int64_t huge = up - nbytes <= nbytes / 8 ? up : nbytes / kHugePage * kHugePage;
  if (huge == 0) return t;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  // One spare huge page to align the start; pages never touched cost no memory.
  const size_t length = static_cast<size_t>(up + kHugePage);
  void* mapping = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapping == MAP_FAILED) return t;
  const uintptr_t start = (reinterpret_cast<uintptr_t>(mapping) + kHugePage - 1) &
                          ~static_cast<uintptr_t>(kHugePage - 1);
  // A hint: if the kernel refuses it, the copy simply stays on 4 KiB pages.
  madvise(reinterpret_cast<void*>(start), static_cast<size_t>(huge), MADV_HUGEPAGE);
  void* data = reinterpret_cast<void*>(start);
  std::memcpy(data, t.data_ptr(), static_cast<size_t>(nbytes));
  return at::from_blob(
      data, t.sizes(), [mapping, length](void*) { munmap(mapping, length); }, t.options());
#else
  return t;
#endif
}

}  // namespace scalenn::cpu
