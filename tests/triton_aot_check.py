"""Compiles every Triton kernel in kernels/ for sm_80 and sm_90 without a GPU and prints one
json line of results (used by tests/test_triton_aot_compile.py; run with TRITON_INTERPRET unset)."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import scalenn  # noqa: E402,F401  (binds scalenn.kernels to this checkout)
from scalenn.kernels import bsr_matmul, bucket_pack, int8_linear, quantize  # noqa: E402

ARCHS = [80, 90]
RESULTS = []


def _raw(kernel):
    from triton.runtime.autotuner import Autotuner
    return kernel.fn if isinstance(kernel, Autotuner) else kernel  # unwrap to the JITFunction


def _compile(name, kernel, signature, constexprs, arch, num_warps=4, num_stages=3):
    sig = {**signature, **{k: "constexpr" for k in constexprs}}
    src = ASTSource(fn=_raw(kernel), signature=sig, constexprs=constexprs)
    entry = {"name": name, "arch": arch, "ok": False}
    try:
        k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": num_warps, "num_stages": num_stages,
                                    "enable_fp_fusion": False})
        ptx = k.asm["ptx"]
        entry.update(ok=True, tensor_cores=("wgmma" in ptx) or ("mma.sync" in ptx),
                     shared=k.metadata.shared)
    except Exception as e:  # noqa: BLE001 - reported, the test fails on it
        msg = str(e)
        cause = e.__cause__
        while cause is not None:
            msg += f"\ncaused by {type(cause).__name__}: {cause}"
            cause = cause.__cause__
        entry["error"] = msg[-2000:]
    RESULTS.append(entry)


INT8_SIG = {"x_ptr": "*bf16", "q_ptr": "*i8", "row_scale_ptr": "*fp32", "w_ptr": "*i8",
            "w_scale_ptr": "*fp32", "bias_ptr": "*fp32", "y_ptr": "*bf16", "M": "i32", "N": "i32",
            "K": "i32", "stride_xm": "i32", "stride_ym": "i32", "M_BUCKET": "i32"}


def main():
    for arch in ARCHS:
        for fuse, (bm, bn, bk) in [(True, (16, 128, 256)), (False, (128, 128, 128)),
                                   (True, (64, 128, 128))]:
            _compile(f"int8_linear fuse={fuse} {bm}x{bn}x{bk}", int8_linear._int8_linear_kernel,
                     INT8_SIG, {"FUSE_QUANT": fuse, "HAS_BIAS": True, "ACT": 2,
                                "RAW_INT32": False, "GROUP_M": 8, "BLOCK_M": bm, "BLOCK_N": bn,
                                "BLOCK_K": bk}, arch, num_warps=8 if bm == 128 else 4)
        _compile("int8_mm raw int32", int8_linear._int8_linear_kernel,
                 {**INT8_SIG, "y_ptr": "*i32"},
                 {"FUSE_QUANT": False, "HAS_BIAS": False, "ACT": 0, "RAW_INT32": True,
                  "GROUP_M": 8, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, arch)
        for is_int8, dtype in [(True, "bf16"), (False, "fp16"), (False, "bf16"), (False, "fp32")]:
            sig = {"x_ptr": "*i8" if is_int8 else f"*{dtype}", "crow_ptr": "*i64",
                   "col_ptr": "*i64", "val_ptr": "*i8" if is_int8 else f"*{dtype}",
                   "w_scale_ptr": "*fp32", "row_scale_ptr": "*fp32", "bias_ptr": "*fp32",
                   "y_ptr": f"*{dtype}", "M": "i32", "N": "i32", "K": "i32", "M_BUCKET": "i32"}
            _compile(f"bsr int8={is_int8} {dtype}", bsr_matmul._bsr_kernel, sig,
                     {"IS_INT8": is_int8, "HAS_BIAS": True, "ACT": 1,
                      "FP32_IEEE": dtype == "fp32", "BN": 32, "BK": 32, "BLOCK_M": 64}, arch)
        table = {"src_addr_ptr": "*i64", "dst_off_ptr": "*i64", "len_ptr": "*i64"}
        utable = {"dst_addr_ptr": "*i64", "src_off_ptr": "*i64", "len_ptr": "*i64"}
        _compile("bucket pack", bucket_pack._pack_kernel,
                 {**table, "src_ref_ptr": "*fp32", "dst_ptr": "*bf16", "scale": "fp32"},
                 {"CHUNK": 2048}, arch)
        _compile("bucket unpack", bucket_pack._unpack_kernel,
                 {**utable, "dst_ref_ptr": "*fp32", "src_ptr": "*bf16", "scale": "fp32"},
                 {"CHUNK": 2048}, arch)
        _compile("bucket accumulate", bucket_pack._accumulate_kernel,
                 {**table, "src_ref_ptr": "*fp16", "residual_ptr": "*fp32", "scale": "fp32"},
                 {"CHUNK": 2048}, arch)
        _compile("bucket quantize chunks", bucket_pack._quantize_chunk_kernel,
                 {"residual_ptr": "*fp32", "rec_q_ptr": "*i8", "rec_u8_ptr": "*u8", "C": "i32"},
                 {"BLOCK": 1024}, arch)
        _compile("bucket dequantize sum", bucket_pack._dequantize_sum_kernel,
                 {"rec_q_ptr": "*i8", "rec_u8_ptr": "*u8", "out_ptr": "*fp32", "W": "i32",
                  "stride": "i64", "C": "i32"}, {"BLOCK": 1024}, arch)
        _compile("quantize_per_row", quantize._quantize_per_row_kernel,
                 {"x_ptr": "*bf16", "q_ptr": "*i8", "scale_ptr": "*fp32", "K": "i32"},
                 {"BLOCK": 1024}, arch)
        _compile("dequantize_per_row", quantize._dequantize_per_row_kernel,
                 {"q_ptr": "*i8", "scale_ptr": "*fp32", "y_ptr": "*fp16", "K": "i32"},
                 {"BLOCK": 1024}, arch)
    print(json.dumps(RESULTS))


if __name__ == "__main__":
    main()
