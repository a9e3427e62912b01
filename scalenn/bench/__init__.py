"""Side-by-side benchmarks behind `scalenn bench NAME`.

Each benchmark is a module `scalenn.bench.NAME` with `run(args) -> harness.Report`, discovered by
name (no registry to edit). Shared machinery (interleaving, rotation, medians, json/md/png) is in
`harness.py`.
"""
import importlib
import pkgutil


def available():
    """Names of the benchmarks that `scalenn bench` can run."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if not m.name.startswith("_") and m.name != "harness")


def load(name: str):
    if name not in available():
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(available())}")
    return importlib.import_module(f"{__name__}.{name}")
