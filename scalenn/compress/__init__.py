"""Model compression recipes: pruning (prune.py, schedule.py), sparse layouts, sparsify."""
