"""Registration of the Triton kernels for CUDA (scalenn/_ops/gpu_backends.py): an op is served
only if its schema exists and its argument names equal the launcher's parameters."""
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
