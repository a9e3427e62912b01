// Packed weights on transparent huge pages.
//
// At batch 1 a layer streams its packed weight from memory once per call, and with 4 KiB pages
// every 4 KiB of it costs a page walk whose tables are no longer cached when the layer's (or the
// model's) weights exceed what the TLBs cover. Backing the packed buffers with 2 MiB pages
// removes most of those walks: Int8Linear at 4096 x 4096, batch 1, 1 thread, interleaved with
// the same layer on 4 KiB pages: 0.54-0.58 -> 0.45-0.48 ms.
#pragma once

#include <ATen/ATen.h>

namespace scalenn::cpu {

// A contiguous CPU tensor copied into memory the kernel is asked to back with transparent huge
// pages (madvise(MADV_HUGEPAGE) on a 2 MiB-aligned anonymous mapping, freed with the tensor):
// all of it when rounding up to whole huge pages wastes at most 1/8 of its size, else its whole
// 2 MiB pieces. Other devices and systems without THP: unchanged.
//
// Used for Int8Linear's packed weight (one stream) and, through layer_helpers.
// weight_memory_together, for SparseInt8Linear's rel, values and base in ONE such buffer. An
// earlier trial that gave each sparse array huge pages of its own saw single layers become
// 10-25% faster or slower than on 4 KiB pages from one construction to the next (both arrays
// 2 MiB-aligned, so entry i of each sits at the same page offset: presumably the same cache
// sets); one buffer puts them at an unrelated offset, and measured fastest (layer_helpers.py).
at::Tensor to_weight_memory(const at::Tensor& t);

}  // namespace scalenn::cpu
