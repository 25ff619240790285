"""Algorithmic sequence tasks: copy, reverse and sort a random sequence.

Each example is ``[x_1 .. x_L, SEP, y_1 .. y_L]`` with x drawn uniformly from tokens 1..vocab-1
(token 0 is SEP), and y = x (copy), x reversed (reverse) or x sorted (sort). The model reads the
whole sequence causally and is scored on predicting y: the targets of positions L .. 2L-1 (SEP and
y_1 .. y_{L-1} predict y_1 .. y_L); accuracy is per predicted token. Train and test sequences are
drawn from disjoint seeded generators.
Worked example, copy, L = 3: inputs [5, 2, 7, 0, 5, 2, 7], targets [-100, -100, -100, 5, 2, 7, -100].
"""

from __future__ import annotations

import torch

from ...errors import WavedistillError
from .base import IGNORE, Task


class _Sequence(Task):
    defaults = dict(d_model=64, n_layers=2, n_heads=4, d_mlp=256, activation="gelu", norm="rms", lr=1e-3,
                    weight_decay=0.1, beta2=0.98, batch_size=64, steps=3000, warmup_steps=100, eval_every=100)

    def __init__(self, seed: int, length: int = 16, vocab: int = 16, n_train: int = 20000, n_test: int = 1000) -> None:
        super().__init__(seed)
        if length < 2 or vocab < 3:
            raise WavedistillError(f"{self.name} needs length >= 2 and vocab >= 3, got {length} and {vocab}")
        self.length, self.vocab = length, vocab
        self.train_x, self.train_y = self.make(n_train, seed * 2 + 1)
        self.test_x, self.test_y = self.make(n_test, seed * 2 + 2)
        self.vocab_size, self.seq_len = vocab, 2 * length + 1

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def make(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        L = self.length
        x = torch.randint(1, self.vocab, (n, L), generator=torch.Generator().manual_seed(seed))
        seq = torch.cat([x, torch.zeros(n, 1, dtype=torch.long), self.transform(x)], dim=1)  # (n, 2L + 1)
        y = torch.full_like(seq, IGNORE)
        y[:, L: 2 * L] = seq[:, L + 1:]
        return seq, y

    def describe(self) -> dict:
        return {**super().describe(), "length": self.length}


class Copy(_Sequence):
    name = "copy"

    def transform(self, x):
        return x.clone()


class Reverse(_Sequence):
    name = "reverse"

    def transform(self, x):
        return x.flip(1)


class Sort(_Sequence):
    name = "sort"

    def transform(self, x):
        return x.sort(dim=1).values
