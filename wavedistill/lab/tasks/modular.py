"""Modular arithmetic ``a o b mod p`` (Power et al., 2022; Nanda et al., 2023): the grokking task.

Each example is three tokens ``[a, b, =]`` with a, b in Z_p (tokens 0..p-1) and ``=`` token p; the
target of the last position is ``c = a o b mod p``. All p^2 pairs (p (p - 1) for division, b != 0)
are shuffled by the seed and split ``train_frac`` / rest. Training is full batch. The defaults are
Nanda et al.'s: p = 113, 30 % of pairs, a 1-layer width-128 model with 4 heads and a 512-wide ReLU
MLP, AdamW lr 1e-3, weight decay 1.0, betas (0.9, 0.98).
Worked example, p = 5, op "+": inputs [3, 4, 5], targets [-100, -100, 2].
"""

from __future__ import annotations

import torch

from ...errors import WavedistillError
from .base import IGNORE, Task

OPS = {"+": lambda a, b, p: (a + b) % p, "-": lambda a, b, p: (a - b) % p, "*": lambda a, b, p: (a * b) % p,
       "/": lambda a, b, p: (a * pow_mod(b, p - 2, p)) % p}


def pow_mod(b: torch.Tensor, e: int, p: int) -> torch.Tensor:
    """b^e mod p elementwise by squaring (b^(p-2) is the inverse of b for prime p)."""
    out = torch.ones_like(b)
    base = b % p
    while e:
        if e & 1:
            out = out * base % p
        base = base * base % p
        e >>= 1
    return out


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


class Modular(Task):
    name = "modular"
    defaults = dict(d_model=128, n_layers=1, n_heads=4, d_mlp=512, activation="relu", norm="none", lr=1e-3,
                    weight_decay=1.0, beta2=0.98, batch_size=0, steps=20000, warmup_steps=10, grad_clip=0.0,
                    eval_every=20)
    full_batch = True

    def __init__(self, seed: int, p: int = 113, op: str = "+", train_frac: float = 0.3) -> None:
        super().__init__(seed)
        if op not in OPS:
            raise WavedistillError(f"unknown modular op {op!r}; known: {', '.join(OPS)}")
        if not is_prime(p):
            raise WavedistillError(f"p must be prime (Z_p is then a field, and division is defined), got {p}")
        if not 0.0 < train_frac < 1.0:
            raise WavedistillError(f"train_frac must be in (0, 1), got {train_frac}")
        self.p, self.op, self.train_frac = p, op, train_frac
        a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
        a, b = a.flatten(), b.flatten()
        if op == "/":
            a, b = a[b != 0], b[b != 0]
        c = OPS[op](a, b, p)
        order = torch.randperm(len(a), generator=torch.Generator().manual_seed(seed))
        x = torch.stack([a, b, torch.full_like(a, p)], dim=1)[order]  # (N, 3)
        y = torch.full_like(x, IGNORE)
        y[:, -1] = c[order]
        n_train = round(train_frac * len(a))
        if not 0 < n_train < len(a):
            raise WavedistillError(f"train_frac {train_frac} leaves an empty train or test split for p = {p}")
        self.train_x, self.train_y, self.test_x, self.test_y = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
        self.vocab_size, self.seq_len = p + 1, 3

    def describe(self) -> dict:
        return {**super().describe(), "p": self.p, "op": self.op, "train_frac": self.train_frac}
