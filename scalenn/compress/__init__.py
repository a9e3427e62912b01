"""Compression recipes: pruning, quantization, distillation, schedules and the recipe runner."""
