"""Model compression recipes: pruning (prune.py, channel.py, schedule.py), the packed sparse
layouts (sparse_format.py), sparsify (sparsify.py) and int8 quantization (quantize.py,
int8_cost.py), distillation (distill.py) and the recipe runner (recipe.py, pipeline.py,
command.py)."""
from .prune import PruneReport, prune, remove_masks  # noqa: F401
from .schedule import PruningSchedule  # noqa: F401
from .sparsify import SparsifyReport, sparsify  # noqa: F401
