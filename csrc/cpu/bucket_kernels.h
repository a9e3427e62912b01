// Gradient-bucket kernels for the fused all-reduce (scalenn.distributed), on raw pointers, one
// function per ISA level. A bucket is a list of gradient tensors laid out back to back in one
// flat buffer: segment i occupies flat[offset_i, offset_i + numel_i).
//
// Contracts (every ISA gives bit-identical results; all arithmetic in float32, round to nearest
// even on every cast; no fused multiply-add, so results equal the plain-PyTorch reference):
//   pack:      flat[off + j] = cast_to_flat_dtype(float(grad[j]) * scale)
//   unpack:    grad[j]       = cast_to_grad_dtype(float(flat[off + j]) * scale)
//   quantize:  v = float(grad[j]) * scale + residual[off + j]  (v = residual where no segment)
//              per chunk of C values: amax = max |v|; finite: s = amax / 127,
//              q = clamp(round_half_even(v * (127 / amax)), -127, 127) (q = 0 when amax == 0),
//              residual = v - q * s (error feedback: what the wire lost, added next step);
//              NaN/Inf in the chunk: s = NaN, q = 0, residual = 0 (the NaN travels to every
//              rank through s; the residual is not poisoned for later steps).
//              Output is one record per chunk: C int8 values, then s as 4 little-endian bytes.
//   dequantize_sum: out[c*C + j] = sum over w = 0..W-1 (in that order, starting from +0.0f) of
//              float(q_w[c][j]) * s_w[c], for W record arrays stored back to back.
//   unpack_int8: grad[j] = cast_to_grad_dtype(dequantize_sum of W record arrays at off + j).
//   requantize: quantize (as above, with scale 1) v = dequantize_sum(W arrays) + residual:
//              the reduce-scatter step of the int8 all-reduce without an fp32 intermediate.
//   residual as records (CPU only): the residual array may instead be int8 records like the
//              wire's, a quarter of the memory: quantize reads residual = dequantize_sum of its
//              one record array, and stores the new residual r as a record of its own (s_r =
//              max|r| / 127, quantized as above). |r| <= s / 2, so what that storage drops is at
//              most s / 508 per value a step, where no error feedback would drop s / 2.
#pragma once

#include <cstdint>

#include "float_convert.h"
#include "isa.h"

namespace scalenn::cpu {

struct BucketSegment {
  void* data;       // the gradient's elements (read by pack/quantize, written by unpack)
  FloatKind kind;   // its dtype
  int64_t offset;   // first flat index it occupies
  int64_t numel;
};

// Flat indices [begin, end) of a bucket; segments sorted by offset, non-overlapping.
void bucket_pack_range(CpuIsa isa, const BucketSegment* segs, int64_t nseg, FloatKind flat_kind,
                       void* flat, float scale, int64_t begin, int64_t end);
void bucket_unpack_range(CpuIsa isa, const BucketSegment* segs, int64_t nseg, FloatKind flat_kind,
                         const void* flat, float scale, int64_t begin, int64_t end);

// Error-feedback state of an array of chunks: nchunks * C floats, or nchunks records.
struct Residual {
  float* values = nullptr;
  uint8_t* records = nullptr;
};

// Chunks [chunk_begin, chunk_end) of C values each; records nchunks * (C + 4) bytes.
void bucket_quantize_int8_chunks(CpuIsa isa, const BucketSegment* segs, int64_t nseg, float scale,
                                 Residual residual, uint8_t* records, int64_t C,
                                 int64_t chunk_begin, int64_t chunk_end);

// records: W arrays of nchunks records (C + 4 bytes each); out: nchunks * C floats.
void bucket_dequantize_sum_chunks(CpuIsa isa, const uint8_t* records, int64_t W, int64_t nchunks,
                                  int64_t C, float* out, int64_t chunk_begin, int64_t chunk_end);

// W record arrays of nchunks records, summed -> the segments (flat index c*C + j of chunk c).
void bucket_unpack_int8_chunks(CpuIsa isa, const BucketSegment* segs, int64_t nseg,
                               const uint8_t* records, int64_t W, int64_t nchunks, int64_t C,
                               int64_t chunk_begin, int64_t chunk_end);

// records: W arrays of nchunks records; out nchunks records.
void bucket_requantize_int8_chunks(CpuIsa isa, const uint8_t* records, int64_t W, int64_t nchunks,
                                   int64_t C, Residual residual, uint8_t* out, int64_t chunk_begin,
                                   int64_t chunk_end);

}  // namespace scalenn::cpu
