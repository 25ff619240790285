"""Multi-query associative recall (MQAR; Arora et al., 2023, "Zoology"): can the model look a key up?

Each sequence starts with ``n_pairs`` key-value pairs ``k_1 v_1 .. k_P v_P`` (keys distinct, from
tokens 1 .. vocab/2 - 1; values distinct, from vocab/2 .. vocab - 1). Every key then appears once
more, at an even offset of the rest of the sequence drawn from a power law ``p(g) ~ g^(power_a - 1)``
(most queries come soon after the pairs, some far away); the target at a query is its value. All
other positions hold random tokens and are not scored. Accuracy is over queries. Zoology uses a
vocabulary of 8,192 (``vocab=8192``); the default here is 1,024, which keeps the read-out cheap on a CPU.
Worked example, vocab 12, 2 pairs, length 12 (zeros instead of random fillers):
inputs [2, 8, 4, 7, 0, 0, 4, 0, 0, 0, 2, 0], targets -100 everywhere but 7 at index 6 and 8 at index 10.
"""

from __future__ import annotations

import torch

from ...errors import WavedistillError
from .base import IGNORE, Task


def sample_without_replacement(weights: torch.Tensor, n: int, k: int, g: torch.Generator) -> torch.Tensor:
    """(n, k) distinct indices per row, drawn with probabilities ~ ``weights`` (Gumbel top-k)."""
    u = torch.rand(n, len(weights), generator=g).clamp_min(1e-12)
    return (weights.log()[None] - (-u.log()).log()).topk(k, dim=1).indices


class MQAR(Task):
    name = "mqar"
    defaults = dict(d_model=64, n_layers=2, n_heads=4, d_mlp=256, activation="gelu", norm="rms", lr=1e-3,
                    weight_decay=0.1, beta2=0.98, batch_size=64, steps=2000, warmup_steps=100, eval_every=200)

    def __init__(self, seed: int, seq_len: int = 256, n_pairs: int = 16, vocab: int = 1024, power_a: float = 0.01,
                 n_train: int = 20000, n_test: int = 1000) -> None:
        super().__init__(seed)
        if seq_len % 2 or 4 * n_pairs > seq_len:
            raise WavedistillError(f"mqar needs an even seq_len >= 4 * n_pairs, got seq_len {seq_len}, {n_pairs} pairs")
        if vocab // 2 - 1 < n_pairs:
            raise WavedistillError(f"mqar needs vocab >= 2 * (n_pairs + 1) for distinct keys, got {vocab}")
        self.n_pairs, self.vocab, self.power_a = n_pairs, vocab, power_a
        self.vocab_size, self.seq_len = vocab, seq_len
        self.train_x, self.train_y = self.make(n_train, seed * 2 + 1)
        self.test_x, self.test_y = self.make(n_test, seed * 2 + 2)

    def make(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        P, T, half = self.n_pairs, self.seq_len, self.vocab // 2
        keys = torch.rand(n, half - 1, generator=g).topk(P, dim=1).indices + 1  # (n, P) distinct, in 1..half-1
        values = torch.rand(n, self.vocab - half, generator=g).topk(P, dim=1).indices + half
        x = torch.randint(0, self.vocab, (n, T), generator=g)  # random fillers
        x[:, 0: 2 * P: 2], x[:, 1: 2 * P: 2] = keys, values
        space = (T - 2 * P) // 2  # even offsets available for queries
        gaps = torch.arange(1, space + 1, dtype=torch.float64)
        slots = sample_without_replacement(self.power_a * gaps ** (self.power_a - 1), n, P, g)  # (n, P)
        where = 2 * P + 2 * slots
        x.scatter_(1, where, keys)
        y = torch.full_like(x, IGNORE)
        y.scatter_(1, where, values)
        return x, y

    def describe(self) -> dict:
        return {**super().describe(), "n_pairs": self.n_pairs, "power_a": self.power_a}
