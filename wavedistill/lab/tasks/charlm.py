"""Character-level language modelling on any local text file (nanoGPT's shakespeare_char setup).

The vocabulary is the set of characters of the file. The first ``1 - val_frac`` of the characters
train (windows at seeded random offsets), the rest is held out: it is cut into consecutive windows
and every character of them is scored (``max_val_windows`` > 0 scores only the first ones). The
metric is bits per character, mean cross-entropy / ln 2.
"""

from __future__ import annotations

import math
import os

import torch

from ...errors import DataError
from .base import StreamTask


class CharLM(StreamTask):
    name = "charlm"
    defaults = dict(d_model=128, n_layers=2, n_heads=4, d_mlp=512, activation="gelu", norm="rms", lr=1e-3,
                    weight_decay=0.1, beta2=0.99, batch_size=32, steps=2000, warmup_steps=100, eval_every=200)

    def __init__(self, seed: int, data: str | None = None, seq_len: int = 128, val_frac: float = 0.1,
                 max_val_windows: int = 0) -> None:
        super().__init__(seed)
        if not data:
            raise DataError("the charlm task needs a text file: pass --data FILE.txt "
                            "(e.g. ../shared/corpora/tinyshakespeare/input.txt)")
        if not os.path.isfile(data):
            raise DataError(f"text file {data!r} does not exist; pass an existing file with --data")
        with open(data, encoding="utf-8") as f:
            text = f.read()
        n_val = int(len(text) * val_frac)
        if len(text) - n_val < seq_len + 1 or n_val < seq_len + 1:
            raise DataError(f"{data!r} has {len(text)} characters: too few for train and val windows of "
                            f"{seq_len + 1}; pass a longer file or a smaller seq_len")
        self.chars = sorted(set(text))
        index = {c: i for i, c in enumerate(self.chars)}
        ids = torch.tensor([index[c] for c in text], dtype=torch.long)
        self.train_stream, self.val_stream = ids[: len(ids) - n_val], ids[len(ids) - n_val:]
        self.data = data
        self.vocab_size, self.seq_len = len(self.chars), seq_len
        self.test_x, self.test_y = self.windows(self.val_stream, max_val_windows)
        self.train_x, self.train_y = self.windows(self.train_stream, 256)  # what "train" metrics are scored on

    def extra_metrics(self, split: str, loss: float) -> dict:
        return {f"{split}_bpc": loss / math.log(2)}

    def describe(self) -> dict:
        return {"data": self.data, "train_chars": len(self.train_stream), "val_chars": len(self.val_stream),
                "scored_val_chars": self.test_x.numel(), "vocab_size": self.vocab_size, "seq_len": self.seq_len}
