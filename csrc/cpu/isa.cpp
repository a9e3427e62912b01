#include "isa.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace scalenn {

const char* isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::avx512: return "avx512";
    case CpuIsa::avx2: return "avx2";
    default: return "scalar";
  }
}

CpuIsa detected_isa() {
  // __builtin_cpu_supports also checks that the OS saves the wide register state (XGETBV).
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2"))
    return CpuIsa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("bmi2"))
    return CpuIsa::avx2;  // F16C ships with every AVX2 CPU
  return CpuIsa::scalar;
}

static CpuIsa parse_isa(const std::string& name) {
  if (name == "avx512") return CpuIsa::avx512;
  if (name == "avx2") return CpuIsa::avx2;
  if (name == "scalar") return CpuIsa::scalar;
  throw std::invalid_argument("SCALENN_CPU_ISA must be one of avx512, avx2, scalar; got '" +
                              name + "'");
}

static CpuIsa validated(CpuIsa wanted) {
  CpuIsa best = detected_isa();
  if (static_cast<int>(wanted) > static_cast<int>(best))
    throw std::invalid_argument(std::string("CPU ISA '") + isa_name(wanted) +
                                "' is not supported by this CPU (best available: '" +
                                isa_name(best) + "')");
  return wanted;
}

static CpuIsa initial_isa() {
  const char* env = std::getenv("SCALENN_CPU_ISA");
  if (env == nullptr || *env == '\0') return detected_isa();
  return validated(parse_isa(env));
}

// Relaxed atomics: the level changes only from tests/tools, never mid-kernel.
static std::atomic<int> g_isa{-1};

CpuIsa current_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v < 0) {
    v = static_cast<int>(initial_isa());
    g_isa.store(v, std::memory_order_relaxed);
  }
  return static_cast<CpuIsa>(v);
}

void set_isa(const std::string& name) {
  g_isa.store(static_cast<int>(validated(parse_isa(name))), std::memory_order_relaxed);
}

static bool detected_vbmi() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vbmi") != 0;
}

static std::atomic<bool> g_vbmi{detected_vbmi()};

bool vbmi_enabled() { return g_vbmi.load(std::memory_order_relaxed); }

void set_vbmi_enabled(bool enabled) {
  if (enabled && !detected_vbmi())
    throw std::invalid_argument("AVX512_VBMI is not supported by this CPU");
  g_vbmi.store(enabled, std::memory_order_relaxed);
}

}  // namespace scalenn
