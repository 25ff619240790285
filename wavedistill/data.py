"""Text for distillation: load documents, split train / val / test by document, tokenize, pack.

Documents are kept in file order and the *last* ``val_frac + test_frac`` of them are held out
(val for checkpoint selection, test for the reported metrics), so paragraphs of one story
rarely straddle the boundary. Training batches are windows cut at random offsets of the
concatenated training tokens (seeded by step, so a resumed run sees the same batches), or with
``train_windows: fixed`` rows drawn from its consecutive windows (those a teacher cache holds); held-out
text is cut into consecutive non-overlapping windows, so every held-out token is scored once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import DataError

LOCAL_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def read_documents(source: str, n_samples: int = 0, text_field: str = "text") -> list[str]:
    """Documents from a local .txt (blank-line separated) / .jsonl / .parquet file, or a hub dataset.

    A hub dataset is named ``name`` or ``name:config`` and read in streaming mode from its train split.
    ``n_samples`` > 0 keeps only the first n documents.
    """
    ext = os.path.splitext(source)[1].lower()
    if ext in LOCAL_FORMATS or os.path.exists(source):
        docs = _read_local(source, ext, text_field)
    else:
        docs = _read_hub(source, n_samples, text_field)
    docs = [d.strip() for d in docs if d and d.strip()]
    if n_samples > 0:
        docs = docs[:n_samples]
    if not docs:
        raise DataError(f"no text found in {source!r}; pass a non-empty .txt, .jsonl or .parquet file with --data")
    return docs


def _read_local(path: str, ext: str, text_field: str) -> list[str]:
    """Read in this process (json / pyarrow): nothing is copied into the datasets cache."""
    if os.path.isdir(path):
        raise DataError(f"--data {path!r} is a folder; pass a .txt, .jsonl or .parquet file")
    if not os.path.isfile(path):
        raise DataError(f"data file {path!r} does not exist; pass an existing .txt, .jsonl or .parquet file")
    if ext not in LOCAL_FORMATS:
        raise DataError(f"unsupported data file {path!r}; use .txt, .jsonl or .parquet")
    if os.path.getsize(path) == 0:
        raise DataError(f"data file {path!r} is empty; pass a file with text")
    try:
        if ext == ".txt":
            with open(path, encoding="utf-8") as f:
                return f.read().split("\n\n")
        if ext in (".jsonl", ".json"):
            return _read_jsonl(path, text_field)
        import pyarrow.parquet as pq  # lazy: only .parquet corpora need pyarrow

        names = pq.read_schema(path).names
        if text_field not in names:
            raise DataError(f"{path!r} has no {text_field!r} column (columns: {names})")
        return [t for t in pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
                if isinstance(t, str)]
    except UnicodeDecodeError as e:
        raise DataError(f"data file {path!r} is not UTF-8 text (byte {e.start}); pass text encoded as UTF-8") from None
    except DataError:
        raise
    except Exception as e:  # pyarrow's parser errors (ArrowInvalid, ...): a damaged or mislabelled file
        raise DataError(f"could not read {path!r} as {ext[1:]}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None


def _read_jsonl(path: str, text_field: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):  # a .json file holding one list of objects
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"could not read {path!r} as json: line {e.lineno}: {e.msg}") from None
        return [r[text_field] for r in rows if isinstance(r, dict) and isinstance(r.get(text_field), str)]
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"could not read {path!r} as jsonl: line {n}: {e.msg}") from None
        if not isinstance(row, dict) or text_field not in row:
            fields = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"{path!r} line {n} has no {text_field!r} field (it has: {fields}); pass a file whose "
                            "lines are JSON objects with one")
        if isinstance(row[text_field], str):
            docs.append(row[text_field])
    return docs


def _read_hub(name: str, n_samples: int, text_field: str) -> list[str]:
    from datasets import load_dataset  # lazy: datasets loads ~1 s of modules; only hub corpora need it

    repo, _, config = name.partition(":")
    try:
        ds = load_dataset(repo, config or None, split="train", streaming=True)
        rows = ds.take(n_samples) if n_samples > 0 else ds
        return [row[text_field] for row in rows]
    except Exception as e:  # network, missing dataset, missing column
        raise DataError(f"could not read hub dataset {name!r} ({type(e).__name__}: {str(e)[:200]}); "
                        "pass a local .txt/.jsonl/.parquet file with --data") from None


@dataclass(frozen=True)
class DataSplit:
    """How a run's documents are split, by document (never by window): the last ``test_frac`` of them are
    test, the ``val_frac`` before those val, the rest train. The one definition of the default fractions."""

    val_frac: float = 0.05
    test_frac: float = 0.10


@dataclass
class Splits:
    train: Tensor  # (N_train,) token ids
    val: Tensor
    test: Tensor
    n_docs: tuple[int, int, int]

    def summary(self) -> dict:
        return {"documents": dict(zip(("train", "val", "test"), self.n_docs)),
                "tokens": {"train": len(self.train), "val": len(self.val), "test": len(self.test)}}


def tokenize_documents(docs: list[str], tokenizer) -> Tensor:
    """Concatenate documents into one id stream; each starts with BOS (if the tokenizer adds one),
    otherwise ends with EOS, so document boundaries are marked as the model was trained."""
    enc = tokenizer(docs, add_special_tokens=True)["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and enc and enc[0][:1] == [tokenizer.bos_token_id]
    eos = [] if adds_bos or tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    return torch.tensor([t for ids in enc for t in ids + eos], dtype=torch.long)


def split_texts(docs: list[str], val_frac: float, test_frac: float) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test) documents: the last ``test_frac`` are test, the ``val_frac`` before them val."""
    n = len(docs)
    n_test = max(1, round(n * test_frac))
    n_val = max(1, round(n * val_frac))
    if n - n_test - n_val < 1:
        raise DataError(f"only {n} documents: too few for a train / val / test split; pass more text with --data")
    return docs[: n - n_val - n_test], docs[n - n_val - n_test: n - n_test], docs[n - n_test:]


def split_documents(docs: list[str], tokenizer, val_frac: float, test_frac: float) -> Splits:
    train, val, test = split_texts(docs, val_frac, test_frac)
    return Splits(tokenize_documents(train, tokenizer), tokenize_documents(val, tokenizer),
                  tokenize_documents(test, tokenizer), (len(train), len(val), len(test)))


def run_documents(data: str, n_samples: int = 0) -> list[str]:
    """The documents a run reads from ``data``: a hub source its first ``n_samples`` (20,000 if 0)."""
    local = os.path.exists(data) or os.path.splitext(data)[1].lower() in LOCAL_FORMATS
    return read_documents(data, n_samples or (0 if local else 20000))


def run_splits(data: str, tokenizer, *, n_samples: int = 0, val_frac: float = DataSplit.val_frac,
               test_frac: float = DataSplit.test_frac) -> Splits:
    """The train / val / test split of a run's data, the same for every command that reads a run
    (distill, eval, layers, demo, make-tasks)."""
    return split_documents(run_documents(data, n_samples), tokenizer, val_frac, test_frac)


def check_lengths(splits: Splits, seq_len: int) -> None:
    for name in ("train", "val", "test"):
        n = len(getattr(splits, name))
        need = seq_len + 1 if name == "train" else seq_len
        if n < need:
            raise DataError(f"the {name} split has {n} tokens, fewer than one window of {need}; "
                            f"pass more text with --data or a smaller --seq-len")


def eval_windows(stream: Tensor, seq_len: int, max_windows: int = 0) -> Tensor:
    """Consecutive non-overlapping windows, (N, seq_len); the tail shorter than a window is dropped."""
    n = len(stream) // seq_len
    if max_windows > 0:
        n = min(n, max_windows)
    return stream[: n * seq_len].view(n, seq_len)


def window_draw(n_windows: int, batch_size: int, seed: int, step: int) -> Tensor:
    """(batch_size,) indices into ``n_windows`` fixed training windows; a pure function of (seed, step).

    Batch ``step`` of a run with ``train_windows: fixed`` and of a run from a teacher cache: both draw
    these rows of ``eval_windows(train, seq_len)``, so they train on the same tokens step for step.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, n_windows, (batch_size,), generator=g)


def train_batch(stream: Tensor, batch_size: int, seq_len: int, seed: int, step: int) -> Tensor:
    """(batch_size, seq_len) windows at random offsets; a pure function of (seed, step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(stream) - seq_len + 1, (batch_size,), generator=g)
    return torch.stack([stream[s: s + seq_len] for s in starts.tolist()])
