// Cross-process progress counters for scalenn.distributed's same-host transport
// (scalenn/distributed/shm.py): the ranks of one machine exchange gradient buckets through a
// shared-memory file, and these two ops order their steps. `counters` is an int64 tensor that
// lives in that file (MAP_SHARED), so a store on one rank is visible to the others.
//
// shm_post stores with release semantics: everything this rank wrote before (its packed
// gradients, its reduced shard) is visible to a rank that observes the new value with
// shm_wait's acquire load. Plain x86 stores would already be ordered (TSO); ARM needs the
// barriers, and the compiler must not move the data writes past the counter store either way.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <chrono>
#include <thread>

#include <sched.h>

#include "../checks.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SCALENN_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define SCALENN_CPU_RELAX() asm volatile("yield" ::: "memory")
#else
#define SCALENN_CPU_RELAX() ((void)0)
#endif

namespace {

int64_t* counters_data(const at::Tensor& counters, const std::string& op) {
  const std::string name = op + ": counters";
  TORCH_CHECK_VALUE(counters.device().is_cpu(), name, " must be a CPU tensor, got ",
                    counters.device());
  scalenn::check_dtype(counters, at::kLong, name.c_str());
  scalenn::check_dim(counters, 1, name.c_str());
  scalenn::check_contiguous(counters, name.c_str());
  return counters.data_ptr<int64_t>();
}

void shm_post_cpu(const at::Tensor& counters, int64_t index, int64_t value) {
  int64_t* c = counters_data(counters, "shm_post");
  TORCH_CHECK_VALUE(index >= 0 && index < counters.numel(), "shm_post: index ", index,
                    " out of range for ", counters.numel(), " counters");
  __atomic_store_n(c + index, value, __ATOMIC_RELEASE);
}

// Waits until counters[first + i * stride] >= target for every i < count, or until timeout_s
// has passed. Returns -1 when all arrived, else the first i that had not (for the error
// message: which rank is missing). timeout_s = 0 returns after the brief spin below.
//
// How it waits: spins briefly (a peer that is about to post), then yields, then sleeps 50 us
// per check once it has waited over a millisecond, so a rank waiting for a slower peer does not
// take CPU from processes that share its core (2 ranks and their threads on 2 cores here).
int64_t shm_wait_cpu(const at::Tensor& counters, int64_t first, int64_t stride, int64_t count,
                     int64_t target, double timeout_s) {
  const int64_t* c = counters_data(counters, "shm_wait");
  TORCH_CHECK_VALUE(count >= 0 && stride >= 1 && first >= 0 &&
                        (count == 0 || first + (count - 1) * stride < counters.numel()),
                    "shm_wait: counters [", first, " + i * ", stride, " for i < ", count,
                    "] out of range for ", counters.numel(), " counters");
  TORCH_CHECK_VALUE(timeout_s >= 0, "shm_wait: timeout_s must be >= 0, got ", timeout_s);
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const auto limit = std::chrono::duration<double>(timeout_s);
  int64_t i = 0;  // counters before i have arrived (they only grow)
  for (int64_t round = 0;; ++round) {
    while (i < count && __atomic_load_n(c + first + i * stride, __ATOMIC_ACQUIRE) >= target) ++i;
    if (i == count) return -1;
    if (round < 256) {
      SCALENN_CPU_RELAX();
      continue;
    }
    const auto waited = clock::now() - start;
    if (waited >= limit) return i;
    if (waited < std::chrono::milliseconds(1)) sched_yield();
    else std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(scalenn, CPU, m) {
  m.impl("shm_post", &shm_post_cpu);
  m.impl("shm_wait", &shm_wait_cpu);
}
