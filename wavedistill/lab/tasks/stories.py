"""Subword language modelling from scratch on a local story corpus (TinyStories with the stories260K tokenizer).

The text is read and split exactly as ``wavedistill distill`` splits a run's data (:func:`wavedistill.data.run_splits`):
documents (blank-line separated) in file order, the last 10 % held out as test and the 5 % before them as val,
never windows of one stream. Training batches are windows at seeded random offsets of the train tokens; val and
test are cut into consecutive windows and every token of them is scored once (``max_val_windows`` > 0 scores
only the first val windows). Val picks settings (the lab's lr search); test is what a table reports. The
metric is perplexity, exp of the mean cross-entropy in nats.
"""

from __future__ import annotations

import math
import os

from ...data import check_lengths, run_splits
from ...errors import DataError, WavedistillError
from .base import StreamTask


def load_tokenizer(path: str | None):
    """A local Hugging Face tokenizer folder (e.g. ``../shared/teachers/stories260K``); one-line errors."""
    if not path:
        raise WavedistillError("the stories task needs a tokenizer: pass --tokenizer FOLDER (a local Hugging Face "
                               "tokenizer, e.g. ../shared/teachers/stories260K)")
    if not os.path.isdir(path):
        raise WavedistillError(f"unknown tokenizer {path!r}: not a folder; pass a local Hugging Face tokenizer "
                               "folder (one with tokenizer.json or tokenizer.model)")
    from transformers import AutoTokenizer  # lazy: transformers' tokenizer stack, only this task needs it

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # a folder without tokenizer files raises OSError / ValueError / others by version
        raise WavedistillError(f"unknown tokenizer {path!r}: {type(e).__name__}: {str(e).splitlines()[0][:160]}; "
                               "pass a folder with tokenizer.json or tokenizer.model") from None


class Stories(StreamTask):
    name = "stories"
    # ~0.2M parameters besides the embeddings: a size a 2-core CPU trains in minutes (docs/lab.md)
    defaults = dict(d_model=64, n_layers=4, n_heads=4, d_mlp=256, activation="gelu", norm="rms", lr=3e-3,
                    weight_decay=0.1, beta2=0.95, batch_size=16, steps=600, warmup_steps=50, eval_every=50,
                    positions="none")
    # decoding and the recall probes run past the training windows; RoPE / recurrences carry positions
    max_len = 4096

    def __init__(self, seed: int, data: str | None = None, tokenizer: str | None = None, seq_len: int = 256,
                 max_val_windows: int = 0) -> None:
        super().__init__(seed)
        if not data:
            raise DataError("the stories task needs a text file: pass --data FILE.txt "
                            "(e.g. ../shared/corpora/tinystories/stories.txt)")
        if seq_len < 2:
            raise WavedistillError(f"seq_len must be >= 2, got {seq_len}")
        self.tokenizer = load_tokenizer(tokenizer)
        self.data, self.tokenizer_path = data, tokenizer
        splits = run_splits(data, self.tokenizer)
        check_lengths(splits, seq_len + 1)  # val and test need one window plus its last target
        self.splits, self.seq_len, self.vocab_size = splits, seq_len, len(self.tokenizer)
        self.train_stream = splits.train
        self.val_x, self.val_y = self.windows(splits.val, max_val_windows)
        self.test_x, self.test_y = self.windows(splits.test, 0)
        self.train_x, self.train_y = self.windows(splits.train, 64)  # what "train" metrics are scored on

    def eval_sets(self, max_train_rows: int = 2048):
        return {**super().eval_sets(max_train_rows), "val": (self.val_x, self.val_y, None)}

    def extra_metrics(self, split: str, loss: float) -> dict:
        return {f"{split}_ppl": math.exp(loss)}

    def describe(self) -> dict:
        return {"data": self.data, "tokenizer": self.tokenizer_path, "documents": dict(zip(
                    ("train", "val", "test"), self.splits.n_docs)),
                "tokens": {"train": len(self.splits.train), "val": len(self.splits.val), "test": len(self.splits.test)},
                "scored_val_tokens": self.val_y.numel(), "scored_test_tokens": self.test_y.numel(),
                "vocab_size": self.vocab_size, "seq_len": self.seq_len}
