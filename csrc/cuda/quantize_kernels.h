// Host launchers for the per-row int8 quantization kernels (raw pointers, no torch headers).
// Same contract as csrc/cpu/quantize_kernels.h. `kind`: 0 float32, 1 bfloat16, 2 float16.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace scalenn::cuda {

cudaError_t launch_quantize_per_row(int kind, const void* x, int64_t rows, int64_t K, int8_t* q,
                                    float* scale, cudaStream_t stream);
cudaError_t launch_dequantize_per_row(int kind, const int8_t* q, const float* scale, int64_t rows,
                                      int64_t K, void* y, cudaStream_t stream);

}  // namespace scalenn::cuda
