"""Text classification from a local labelled ``.jsonl`` or ``.csv`` file (the lab's encoder task).

Rows are shuffled by the seed and split ``1 - test_frac`` / ``test_frac``. Text is read character by
character (vocabulary: the characters of the training rows, plus pad and unknown), cut to ``max_len``
and right-padded; the padding mask reaches every mixer. The model pools its final states over the
real tokens and a linear head predicts the label. The metric is accuracy on the test rows.
"""

from __future__ import annotations

import csv
import json
import os

import torch

from ...errors import DataError
from .base import Task

PAD, UNK = 0, 1


def read_rows(path: str, text_field: str, label_field: str) -> list[tuple[str, str]]:
    if not os.path.isfile(path):
        raise DataError(f"labelled file {path!r} does not exist; pass a .jsonl or .csv file with --data")
    ext = os.path.splitext(path)[1].lower()
    with open(path, encoding="utf-8", newline="") as f:
        if ext == ".jsonl":
            try:
                records = [json.loads(line) for line in f if line.strip()]
            except json.JSONDecodeError as e:
                raise DataError(f"{path!r} is not valid JSON lines: {e}") from None
        elif ext == ".csv":
            records = list(csv.DictReader(f))
        else:
            raise DataError(f"unsupported labelled file {path!r}; use .jsonl or .csv")
    missing = [k for k in (text_field, label_field) if records and k not in records[0]]
    if missing:
        raise DataError(f"{path!r} has no {missing} field(s) (fields: {sorted(records[0])})")
    return [(str(r[text_field]), str(r[label_field])) for r in records]


class Classify(Task):
    name = "classify"
    kind = "classify"
    defaults = dict(d_model=64, n_layers=2, n_heads=4, d_mlp=256, activation="gelu", norm="rms", lr=1e-3,
                    weight_decay=0.1, beta2=0.98, batch_size=32, steps=1000, warmup_steps=50, eval_every=100)

    def __init__(self, seed: int, data: str | None = None, text_field: str = "text", label_field: str = "label",
                 max_len: int = 256, test_frac: float = 0.2) -> None:
        super().__init__(seed)
        if not data:
            raise DataError("the classify task needs a labelled file: pass --data FILE.jsonl or FILE.csv")
        rows = read_rows(data, text_field, label_field)
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
        n_test = max(1, round(len(rows) * test_frac))
        if len(rows) - n_test < 2:
            raise DataError(f"{data!r} has {len(rows)} rows: too few to train and test; pass more labelled rows")
        train, test = [rows[i] for i in order[n_test:]], [rows[i] for i in order[:n_test]]
        self.labels = sorted({label for _, label in rows})
        if len(self.labels) < 2:
            raise DataError(f"{data!r} has a single label {self.labels}; classification needs at least two")
        chars = sorted({c for text, _ in train for c in text})
        self.index = {c: i + 2 for i, c in enumerate(chars)}
        self.vocab_size, self.seq_len, self.n_classes, self.data = len(chars) + 2, max_len, len(self.labels), data
        self.train_x, self.train_pad, self.train_y = self.encode(train)
        self.test_x, self.test_pad, self.test_y = self.encode(test)

    def encode(self, rows):
        x = torch.full((len(rows), self.seq_len), PAD, dtype=torch.long)
        pad = torch.zeros(len(rows), self.seq_len, dtype=torch.bool)
        for r, (text, _) in enumerate(rows):
            ids = [self.index.get(c, UNK) for c in text[: self.seq_len]] or [UNK]
            x[r, : len(ids)] = torch.tensor(ids)
            pad[r, : len(ids)] = True
        y = torch.tensor([self.labels.index(label) for _, label in rows])
        return x, pad, y

    def describe(self) -> dict:
        return {**super().describe(), "data": self.data, "labels": self.labels}
