"""Model compression recipes: pruning (prune.py, channel.py, schedule.py), the packed sparse
layouts (sparse_format.py) and sparsify (sparsify.py)."""
from .prune import PruneReport, prune, remove_masks  # noqa: F401
from .schedule import PruningSchedule  # noqa: F401
from .sparsify import SparsifyReport, sparsify  # noqa: F401
