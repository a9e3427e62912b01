"""Model compression recipes: int8 quantization (quantize.py, int8_cost.py)."""
