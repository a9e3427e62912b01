"""Registers the Triton kernels in `scalenn.kernels` as the CUDA implementation of scalenn ops.

The compiled CUDA kernels (csrc/cuda) are the default CUDA implementation when the extension
was built with them; otherwise, or with SCALENN_GPU_BACKEND=triton, the Triton kernels are
registered here. Triton itself is imported lazily, on the first call on a CUDA tensor.

An entry of `_TRITON_OPS` is registered only if its schema exists (op families are added by
different people; a missing schema is skipped, not an import error) and only if the schema's
argument names are exactly the Triton function's parameters, so a schema that changed shape can
never be served by a launcher with another argument order.
"""
import importlib
import importlib.util
import inspect
import os
import sys

import torch

from .. import _C

# op -> (module in scalenn.kernels, function). The function's positional parameters must be the
# schema's argument names, in order.
_TRITON_OPS = {
    "scalenn::quantize_per_row": ("quantize", "quantize_per_row"),
    "scalenn::dequantize_per_row": ("quantize", "dequantize_per_row"),
    "scalenn::int8_pack_weight": ("int8_linear", "int8_pack_weight"),
    "scalenn::int8_linear": ("int8_linear", "int8_linear"),
    "scalenn::bucket_pack": ("bucket_pack", "bucket_pack"),
    "scalenn::bucket_unpack": ("bucket_pack", "bucket_unpack"),
    "scalenn::bucket_quantize_int8": ("bucket_pack", "bucket_quantize_int8"),
    "scalenn::bucket_dequantize_sum": ("bucket_pack", "bucket_dequantize_sum"),
    "scalenn::bucket_unpack_int8": ("bucket_pack", "bucket_unpack_int8"),
    "scalenn::bucket_requantize_int8": ("bucket_pack", "bucket_requantize_int8"),
}


def _use_source_tree_kernels() -> None:
    """In a source checkout the Triton kernels live in <repo>/kernels, not in scalenn/kernels
    (setup.py maps the folder only when installing). Bind `scalenn.kernels` to the folder that
    sits next to *this* scalenn package, so a worktree, an in-place build or a GPU check run
    from the repo uses its own kernels rather than those of whichever checkout was installed."""
    pkg_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isdir(os.path.join(pkg_dir, "kernels")):
        return  # installed layout: scalenn/kernels is a real subpackage
    src = os.path.join(os.path.dirname(pkg_dir), "kernels", "__init__.py")
    if not os.path.exists(src):
        return
    current = sys.modules.get("scalenn.kernels")
    if current is not None and os.path.abspath(current.__file__) == src:
        return
    spec = importlib.util.spec_from_file_location(
        "scalenn.kernels", src, submodule_search_locations=[os.path.dirname(src)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["scalenn.kernels"] = module
    spec.loader.exec_module(module)
    setattr(sys.modules["scalenn"], "kernels", module)


def gpu_backend() -> str:
    """Which implementation serves CUDA tensors: 'cuda' (compiled), 'triton', or 'none'."""
    choice = os.environ.get("SCALENN_GPU_BACKEND", "auto").lower()
    if choice not in ("auto", "cuda", "triton"):
        raise ValueError(f"SCALENN_GPU_BACKEND must be auto, cuda or triton, got {choice!r}")
    built_cuda = _C.build_info()["cuda"]
    if choice == "cuda" and not built_cuda:
        raise ValueError("SCALENN_GPU_BACKEND=cuda but scalenn was built without CUDA kernels "
                         "(rebuild with SCALENN_CUDA=1)")
    if choice == "triton" or (choice == "auto" and not built_cuda):
        return "triton" if _triton_installed() else "none"
    return "cuda"


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _lazy(module_name: str, fn_name: str):
    def call(*args, **kwargs):
        module = importlib.import_module(f"scalenn.kernels.{module_name}")
        return getattr(module, fn_name)(*args, **kwargs)
    call.__name__ = f"triton_{fn_name}"
    return call


def _schema_args(op: str):
    """Argument names of a registered schema, or None when the op is not defined (yet)."""
    namespace, name = op.split("::")
    try:
        packet = getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return None
    return [a.name for a in packet.default._schema.arguments]


def _function_params(module_name: str, fn_name: str):
    """Positional parameter names of a kernels/ launcher, read from its source without
    importing Triton (the import is deferred to the first CUDA call)."""
    import ast
    kernels_pkg = importlib.import_module("scalenn.kernels")  # kernels/__init__ imports only os
    path = os.path.join(os.path.dirname(kernels_pkg.__file__), f"{module_name}.py")
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == fn_name:
            return [a.arg for a in node.args.posonlyargs + node.args.args]
    raise LookupError(f"kernels/{module_name}.py has no function {fn_name}")


def registrable_triton_ops():
    """op -> (module, fn) for the entries whose schema exists and matches the launcher."""
    out = {}
    for op, (module_name, fn_name) in _TRITON_OPS.items():
        args = _schema_args(op)
        if args is None:
            continue
        params = _function_params(module_name, fn_name)
        if args != params:
            import warnings
            warnings.warn(f"scalenn: not registering Triton {module_name}.{fn_name} for {op}: "
                          f"schema arguments {args} != launcher parameters {params}")
            continue
        out[op] = (module_name, fn_name)
    return out


def _has_compiled_cuda_kernel(op: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")


def _register_triton() -> None:
    """'triton' backend: every registrable op. 'cuda' backend: Triton fills in only the ops
    that have no compiled CUDA kernel (an op family added without csrc/cuda code), except
    int8_linear, which picks between both kernels per call (`int8_linear_kernel_choice`)."""
    backend = gpu_backend()
    if backend == "none":
        return
    for op, (module_name, fn_name) in registrable_triton_ops().items():
        if backend == "cuda" and _has_compiled_cuda_kernel(op):
            continue
        if backend == "cuda" and op == "scalenn::int8_linear" and _schema_args(MMA_OP):
            torch.library.register_kernel(op, "cuda", _int8_linear_cuda)
            continue
        torch.library.register_kernel(op, "cuda", _lazy(module_name, fn_name))


# The compiled int8 kernel (csrc/cuda, mma.sync) under its own name, in CUDA builds.
MMA_OP = "scalenn::int8_linear_mma"
# Above this much work (M*N*K multiply-adds) a call is device-bound even from eager Python.
TRITON_INT8_MIN_MACS = 1 << 36


def int8_linear_kernel_choice(x: torch.Tensor, out_features: int) -> str:
    """'triton' or 'mma' for one scalenn::int8_linear call on a CUDA tensor.

    Measured on an H200 (benchmarks/results/gpu_check_h200_*): the Triton kernel (wgmma on
    Hopper) takes 2.2-2.7x less device time than the mma.sync kernel at every M, but each eager
    call costs ~100 us of Python launch work per Triton launch there, against ~40 us for the
    compiled op. So on Hopper: Triton while a CUDA graph is being captured (replays pay device
    time only) or when the call is big enough to be device-bound; mma otherwise. Ampere is
    unmeasured: mma (native there). SCALENN_INT8_GPU_KERNEL=triton|mma forces one."""
    forced = os.environ.get("SCALENN_INT8_GPU_KERNEL", "auto").lower()
    if forced not in ("auto", "triton", "mma"):
        raise ValueError(f"SCALENN_INT8_GPU_KERNEL must be auto, triton or mma, got {forced!r}")
    if forced != "auto":
        return forced
    if torch.cuda.get_device_capability(x.device)[0] < 9:
        return "mma"
    if torch.cuda.is_current_stream_capturing():
        return "triton"
    macs = x.shape[0] * x.shape[-1] * out_features
    return "triton" if macs >= TRITON_INT8_MIN_MACS else "mma"


_triton_int8_linear = _lazy("int8_linear", "int8_linear")


def _int8_linear_cuda(x, w_packed, w_scale, bias, out_features, activation):
    if int8_linear_kernel_choice(x, out_features) == "triton":
        return _triton_int8_linear(x, w_packed, w_scale, bias, out_features, activation)
    return torch.ops.scalenn.int8_linear_mma(x, w_packed, w_scale, bias, out_features, activation)


def _register_mma_fake() -> None:
    if _schema_args(MMA_OP) is not None:
        @torch.library.register_fake(MMA_OP)
        def _(x, w_packed, w_scale, bias, out_features, activation):
            return x.new_empty((x.shape[0], out_features))


_use_source_tree_kernels()
_register_mma_fake()
_register_triton()
