"""Imports the compiled extension with an error that tells the user how to build it."""
try:
    from . import _C  # noqa: F401  (registers the scalenn ops with the dispatcher)
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "scalenn's compiled extension scalenn._C could not be imported "
        f"({exc}). Build it with `make dev` (or `pip install --no-build-isolation -e .`) against "
        "the torch you have installed.") from exc
