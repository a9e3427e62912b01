"""Small plain-PyTorch model definitions for pretrained weights shipped in packages (no
transformers/tokenizers dependency)."""
