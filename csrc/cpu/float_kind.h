// The kernels' FloatKind for an ATen dtype (shared by the CPU op bindings).
#pragma once

#include <c10/core/ScalarType.h>

#include "float_convert.h"

namespace scalenn::cpu {

inline FloatKind float_kind(c10::ScalarType st) {
  switch (st) {
    case c10::ScalarType::BFloat16: return FloatKind::bf16;
    case c10::ScalarType::Half: return FloatKind::f16;
    default: return FloatKind::f32;
  }
}

}  // namespace scalenn::cpu
