"""Autotune configurations shared by the Triton GEMM-like kernels.

On a GPU the kernels autotune over a short list per architecture (Hopper sm_90, Ampere sm_80);
under the interpreter (TRITON_INTERPRET=1) autotuning would run every config on the CPU for
minutes, so one small fixed config is used instead.
"""
import os

import triton

from . import interpreting


def _cfg(bm, bn, bk, warps, stages, **extra):
    return triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, **extra),
                         num_warps=warps, num_stages=stages)


# Int8 tiles: K-steps of 128 bytes keep the wgmma/mma.sync K dimension (32 for s8) busy and the
# loads 128-byte aligned. Small-M configs exist because decode-like M=16 is weight-bandwidth
# bound: there the best tile is narrow in M and wide in N with deep pipelining.
# Kept short on purpose: every entry is compiled and timed once per new (M bucket, N, K).
# Decode-sized M (<= 32) streams the weight: narrow N tiles (32/64 columns) give N/32..N/64
# programs, enough to keep all 132 SMs of an H200 loading (N/128 programs left 100 of them idle
# at N=4096).
_INT8_SM90 = [
    _cfg(128, 256, 128, 8, 3), _cfg(128, 256, 128, 8, 4), _cfg(256, 128, 128, 8, 4),
    _cfg(128, 128, 128, 8, 4), _cfg(64, 128, 128, 4, 4), _cfg(64, 64, 128, 4, 4),
    _cfg(64, 64, 256, 4, 3), _cfg(32, 32, 256, 4, 4),
    _cfg(16, 128, 256, 4, 4), _cfg(16, 64, 256, 4, 4), _cfg(16, 32, 512, 4, 3),
    _cfg(32, 64, 256, 4, 5),
]
_INT8_SM80 = [
    _cfg(128, 256, 64, 8, 3), _cfg(128, 128, 64, 4, 4), _cfg(64, 128, 128, 4, 4),
    _cfg(16, 128, 128, 4, 4),
]
# Float tiles (fp16/bf16/fp32 operands): half the K depth of the int8 tiles for the same bytes.
_FLOAT_SM90 = [
    _cfg(128, 256, 64, 8, 3), _cfg(128, 128, 64, 8, 4), _cfg(64, 128, 64, 4, 4),
    _cfg(16, 128, 128, 4, 4), _cfg(32, 64, 128, 4, 5),
]
_FLOAT_SM80 = [
    _cfg(128, 128, 32, 4, 4), _cfg(128, 256, 32, 8, 3), _cfg(64, 128, 64, 4, 4),
    _cfg(16, 128, 64, 4, 4),
]
# Under the interpreter: tiny tiles so that masked edges are exercised on small test shapes.
_INTERPRET = [_cfg(16, 16, 32, 1, 1)]
# With autotuning off (the GPU test run): one mid-size tile whose shared memory fits every mode
# on sm_80 and sm_90, float32 activations loaded by the fused-quantize path included (a 128x128
# tile with 4 stages needs 272 KiB there).
_NO_AUTOTUNE = {"int8": _cfg(64, 128, 128, 4, 3), "float": _cfg(64, 128, 64, 4, 3)}


def _arch_major() -> int:
    import torch
    if not torch.cuda.is_available():
        return 0
    return torch.cuda.get_device_capability()[0]


def gemm_configs(kind: str):
    """kind: 'int8' or 'float'. One fixed config under the interpreter; with
    SCALENN_TRITON_AUTOTUNE=0 (the GPU test run) one config that fits everywhere, so tests with
    many shapes do not compile every candidate for every shape."""
    if interpreting():
        return list(_INTERPRET)
    if os.environ.get("SCALENN_TRITON_AUTOTUNE", "1") == "0":
        return [_NO_AUTOTUNE[kind]]
    hopper = _arch_major() >= 9
    if kind == "int8":
        return list(_INT8_SM90 if hopper else _INT8_SM80)
    return list(_FLOAT_SM90 if hopper else _FLOAT_SM80)


def with_pre_hook(configs, hook):
    """The same tiles, each running `hook(kernel_args)` before every launch (TMA kernels set
    their descriptors' block shapes from the chosen tile there)."""
    return [triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=c.num_stages,
                          pre_hook=hook) for c in configs]


def prune_by_m(configs, named_args, **kwargs):
    """Autotune early prune: only tiles whose M extent suits the batch size are timed (decode
    M <= 32 -> BLOCK_M <= 32; M <= 256 -> 32..128; larger -> >= 64), so a new shape costs 2-3
    compilations, not the whole list. Falls back to the full list if nothing matches."""
    m = named_args["M_BUCKET"]
    if m <= 32:
        keep = [c for c in configs if c.kwargs["BLOCK_M"] <= 32]
    elif m <= 256:
        keep = [c for c in configs if 32 <= c.kwargs["BLOCK_M"] <= 128]
    else:
        keep = [c for c in configs if c.kwargs["BLOCK_M"] >= 64]
    return keep or configs


def m_bucket(m: int) -> int:
    """Autotune key for M: the next power of two (capped), so a new batch size re-tunes only
    when it changes the tile choice class, not on every distinct M."""
    return min(triton.next_power_of_2(max(m, 1)), 8192)
