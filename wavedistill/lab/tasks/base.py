"""What every lab task provides; see :mod:`wavedistill.lab.tasks`."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

IGNORE = -100


class Task:
    """A seeded dataset with a train split and a held-out test split.

    Subclasses set ``vocab_size``, ``seq_len`` and the split tensors ``train_x / train_y`` and
    ``test_x / test_y`` (and ``*_pad`` when sequences are padded), or override the batch methods.
    ``defaults`` are the lab-config values this task is usually run with (model size, optimiser,
    steps); a user's config overrides them.
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "lm"  # "lm": next-token targets per position; "classify": one label per sequence;
    # "regress": real-valued targets per position, inputs of ``in_features`` reals per position
    in_features: int = 0
    defaults: ClassVar[dict] = {}
    n_classes: int = 0
    full_batch: bool = False
    train_pad: Tensor | None = None
    test_pad: Tensor | None = None
    max_len: int | None = None  # the longest sequence a model of this task takes; None = seq_len
    seeded_data: ClassVar[bool] = True  # whether the seed draws the data (else it only orders the training batches)

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.order_seed = seed  # draws the training batches; a distilled student sets its run seed here

    def train_batch(self, step: int, batch_size: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """The whole training set (full batch, or ``batch_size`` 0), else rows drawn by (seed, step)."""
        if self.full_batch or batch_size <= 0 or batch_size >= len(self.train_x):
            return self.train_x, self.train_y, self.train_pad
        g = torch.Generator().manual_seed(self.order_seed * 1_000_003 + step)
        rows = torch.randint(0, len(self.train_x), (batch_size,), generator=g)
        pad = None if self.train_pad is None else self.train_pad[rows]
        return self.train_x[rows], self.train_y[rows], pad

    def eval_sets(self, max_train_rows: int = 2048) -> dict[str, tuple[Tensor, Tensor, Tensor | None]]:
        """``train`` (the first ``max_train_rows`` training rows, or all of a full-batch task) and ``test``."""
        n = len(self.train_x) if self.full_batch else min(max_train_rows, len(self.train_x))
        pad = None if self.train_pad is None else self.train_pad[:n]
        return {"train": (self.train_x[:n], self.train_y[:n], pad), "test": (self.test_x, self.test_y, self.test_pad)}

    def extra_metrics(self, split: str, loss: float) -> dict:
        """Task-specific numbers derived from a split's mean loss (bits per character, perplexity)."""
        return {}

    def describe(self) -> dict:
        """Sizes of the splits, for summary.json."""
        return {"train_examples": len(self.train_x), "test_examples": len(self.test_x), "vocab_size": self.vocab_size,
                "seq_len": self.seq_len}


class StreamTask(Task):
    """A language-modelling task on one token stream per split (``train_stream``): training windows at seeded random
    offsets, held-out text cut into consecutive windows with every token but the first a target once."""

    seeded_data = False  # the text and its split are fixed; the seed only draws the training windows
    train_stream: Tensor

    def windows(self, stream: Tensor, n_max: int) -> tuple[Tensor, Tensor]:
        """Consecutive (n, seq_len) inputs and next-token targets; n_max 0 = every whole window."""
        n = (len(stream) - 1) // self.seq_len
        n = min(n, n_max) if n_max > 0 else n
        return stream[: n * self.seq_len].view(n, self.seq_len), stream[1: n * self.seq_len + 1].view(n, self.seq_len)

    def train_batch(self, step: int, batch_size: int):
        """(x, y) windows at random offsets of the train stream, a pure function of (order seed, step)."""
        g = torch.Generator().manual_seed(self.order_seed * 1_000_003 + step)
        starts = torch.randint(0, len(self.train_stream) - self.seq_len, (batch_size,), generator=g).tolist()
        x = torch.stack([self.train_stream[s: s + self.seq_len] for s in starts])
        y = torch.stack([self.train_stream[s + 1: s + self.seq_len + 1] for s in starts])
        return x, y, None
