// CPU instruction-set dispatch.
//
// Each kernel has one function per ISA level, compiled with a per-function target attribute
// (never a file- or library-wide -m flag, so that inlined torch/std code outside those functions
// stays baseline x86-64). The level is detected once at load and can be overridden with the
// environment variable SCALENN_CPU_ISA=avx512|avx2|scalar or scalenn._C.set_cpu_isa().
#pragma once

#include <string>

// AVX-512 level: Ice Lake / Zen 4 and later (F, BW, VL, DQ and VNNI).
#define SCALENN_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c,bmi2")))
// AVX2 level: Haswell and later.
#define SCALENN_TARGET_AVX2 __attribute__((target("avx2,fma,f16c,bmi2")))

namespace scalenn {

enum class CpuIsa : int { scalar = 0, avx2 = 1, avx512 = 2 };

const char* isa_name(CpuIsa isa);
// The best level this CPU (and OS) supports.
CpuIsa detected_isa();
// The level kernels use now.
CpuIsa current_isa();
// Select a level by name; throws std::invalid_argument for an unknown name or a level the CPU
// lacks (executing it would crash with SIGILL).
void set_isa(const std::string& name);

// AVX512_VBMI (vpermb / vpermt2b), an optional extra some AVX-512 kernels use when present
// (Ice Lake, Zen 4 and later; not Cascade Lake). Tests switch it off to cover the fallbacks;
// enabling it on a CPU without it throws std::invalid_argument.
bool vbmi_enabled();
void set_vbmi_enabled(bool enabled);

}  // namespace scalenn
