"""Registration of the Triton kernels for CUDA (scalenn/_ops/gpu_backends.py): an op is served
only if its schema exists and its argument names equal the launcher's parameters."""
import pytest
import torch

from scalenn._ops import gpu_backends as gb


def test_source_tree_kernels_are_bound():
    import scalenn.kernels
    assert scalenn.kernels.__file__.endswith("kernels/__init__.py")


def test_registrable_ops_match_schemas():
    ops = gb.registrable_triton_ops()
    for op in ("scalenn::quantize_per_row", "scalenn::bucket_pack", "scalenn::bucket_unpack",
               "scalenn::bucket_quantize_int8", "scalenn::bucket_dequantize_sum",
               "scalenn::bucket_unpack_int8", "scalenn::bucket_requantize_int8"):
        assert op in ops
    for op, (module_name, fn_name) in ops.items():
        assert gb._schema_args(op) == gb._function_params(module_name, fn_name)


def test_missing_schema_is_skipped_and_mismatch_warns(monkeypatch, recwarn):
    lib = torch.library.Library("scalenn_gb_test", "DEF")  # noqa: F841 (kept alive)
    lib.define("bucket_pack(Tensor[] tensors, float scale, ScalarType dtype) -> Tensor")
    monkeypatch.setattr(gb, "_TRITON_OPS", {
        "scalenn_gb_test::bucket_pack": ("bucket_pack", "bucket_pack"),  # names differ
        "scalenn_gb_test::not_defined": ("bucket_pack", "bucket_pack"),
    })
    assert gb.registrable_triton_ops() == {}
    assert any("tensors" in str(w.message) for w in recwarn.list)
    assert gb._schema_args("scalenn_gb_test::not_defined") is None


def test_int8_linear_kernel_choice(monkeypatch):
    # The per-call choice between the Triton and the compiled (mma) int8 kernels on CUDA tensors;
    # the device queries are stubbed, so this runs without a GPU.
    x_small, x_big = torch.empty(16, 4096), torch.empty(8192, 8192)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert gb.int8_linear_kernel_choice(x_small, 4096) == "mma"      # host-bound eager call
    assert gb.int8_linear_kernel_choice(x_big, 8192) == "triton"     # device-bound
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert gb.int8_linear_kernel_choice(x_small, 4096) == "triton"   # graph replays: device time
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert gb.int8_linear_kernel_choice(x_big, 8192) == "mma"        # Ampere: unmeasured
    for forced in ("triton", "mma"):
        monkeypatch.setenv("SCALENN_INT8_GPU_KERNEL", forced)
        assert gb.int8_linear_kernel_choice(x_small, 4096) == forced
    monkeypatch.setenv("SCALENN_INT8_GPU_KERNEL", "fast")
    with pytest.raises(ValueError, match="SCALENN_INT8_GPU_KERNEL"):
        gb.int8_linear_kernel_choice(x_small, 4096)
