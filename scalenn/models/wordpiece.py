"""BERT's uncased tokenizer in plain Python: basic tokenization (lower case, strip accents, split
on whitespace and punctuation, CJK characters as words) then greedy longest-match-first
WordPiece over vocab.txt. Matches the reference BertTokenizer for ordinary text."""
import unicodedata
from typing import Dict, List, Sequence, Tuple

import torch


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or
            0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or
            0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def basic_tokenize(text: str) -> List[str]:
    out, word = [], []

    def flush():
        if word:
            out.append("".join(word))
            word.clear()

    text = unicodedata.normalize("NFD", text.lower())
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\t\n\r":
            continue
        if unicodedata.category(ch) == "Mn":  # accents
            continue
        if ch.isspace() or unicodedata.category(ch) == "Zs":
            flush()
        elif _is_punctuation(ch) or _is_cjk(cp):
            flush()
            out.append(ch)
        else:
            word.append(ch)
    flush()
    return out


class WordPieceTokenizer:
    def __init__(self, vocab_path: str, max_chars_per_word: int = 100):
        with open(vocab_path, encoding="utf-8") as f:
            self.vocab: Dict[str, int] = {line.rstrip("\n"): i for i, line in enumerate(f)}
        self.max_chars = max_chars_per_word
        self.cls, self.sep = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.pad, self.unk = self.vocab["[PAD]"], self.vocab["[UNK]"]

    def wordpiece(self, word: str) -> List[int]:
        if len(word) > self.max_chars:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk]
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str, max_length: int = 256) -> List[int]:
        ids = [i for w in basic_tokenize(text) for i in self.wordpiece(w)]
        return [self.cls] + ids[:max_length - 2] + [self.sep]

    def batch(self, texts: Sequence[str], max_length: int = 256) -> Tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), padded to the longest text."""
        encoded = [self.encode(t, max_length) for t in texts]
        length = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), length), self.pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), length), dtype=torch.long)
        for r, e in enumerate(encoded):  # per text, not per token
            ids[r, :len(e)] = torch.tensor(e)
            mask[r, :len(e)] = 1
        return ids, mask
