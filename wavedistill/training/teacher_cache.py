"""An offline teacher cache: the teacher's top-k next-token distribution over the training split, on disk.

``wavedistill cache-teacher`` runs the teacher once over the training split and keeps, per position,
its k most likely next tokens with their log-probabilities and the log of the probability left over
for every other token. ``distill --teacher-cache DIR`` then trains on those targets: the training
steps run no teacher forward (val and test are still scored against the teacher itself).

Format: a folder (written to a temporary sibling and renamed when complete)::
    cache.json                what was cached and from what: teacher (fingerprint, architecture), a hash of
                              the tokenizer's vocabulary, data settings and a hash of the cached training
                              tokens, seq_len, k; windows, tokens, bytes per token, teacher tokens per second
    shard_00000.safetensors   consecutive windows of the training split (``eval_windows(train, seq_len)``):
        input_ids  (N, T)     int32    the window's tokens
        topk_ids   (N, T, k)  int32    the teacher's k most likely next tokens at each position, most likely first
        topk_logp  (N, T, k)  float16  their log-probabilities, at temperature 1
        rest_logp  (N, T)     float16  log of the probability of all other tokens together (-inf when k = V)
    shard_00001.safetensors   ...

That is ``4 + 6 k + 2`` bytes per token (198 at the default k = 32), whatever the vocabulary.

The loss on these targets is :func:`wavedistill.kd.cached.cached_kd_loss`.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import shutil
import time

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..core.devices import DTYPES
from ..core.run_folder import claim, sha256, umask, write_json_atomic
from ..data import DataSplit, check_lengths, eval_windows, run_splits, window_draw
from ..errors import WavedistillError
from ..io import architecture, base_fingerprint, embedding_sample, load_teacher, same_base
from ..kd.cached import teacher_targets
from ..version import __version__
from .recipes import KDLoss

CACHE_JSON = "cache.json"
FORMAT_VERSION = 1
DEFAULT_TOP_K = 32
SHARD_BYTES = 256 << 20  # target size of one shard file
KEYS = ("input_ids", "topk_ids", "topk_logp", "rest_logp")
META_KEYS = ("format_version", "seq_len", "top_k", "shards", "n_windows", "teacher", "base_fingerprint",
             "tokenizer_hash", "train_tokens_hash", "vocab_size", "data", "n_samples", "val_frac",
             "test_frac")  # what reading and checking a cache use


def bytes_per_token(top_k: int) -> int:
    """Shard bytes per cached token, headers aside: int32 id, k int32 ids + k float16 log-probs, one float16 rest."""
    return 4 + 6 * top_k + 2


def tokenizer_hash(tokenizer) -> str:
    """A short hash of the tokenizer's vocabulary (token -> id)."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def tokens_hash(ids: Tensor) -> str:
    """A short hash of a token stream (the cached training windows)."""
    return hashlib.sha256(ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------- writing


def write_cache(teacher: str, data: str, output_dir: str, *, top_k: int = DEFAULT_TOP_K, seq_len: int = 256,
                batch_size: int = 16, n_samples: int = 0, val_frac: float = DataSplit.val_frac,
                test_frac: float = DataSplit.test_frac,
                dtype: str = "float32", device: str = "cpu", shard_bytes: int = SHARD_BYTES,
                overwrite: bool = False) -> dict:
    """Run ``teacher`` over the training split of ``data`` (the split ``distill`` makes with the same
    settings) in windows of ``seq_len`` and write its top-``top_k`` targets to ``output_dir``; returns cache.json."""

    if top_k < 1 or seq_len < 2 or batch_size < 1:
        raise WavedistillError("cache-teacher needs --top-k >= 1, --seq-len >= 2 and --batch-size >= 1")
    if dtype not in DTYPES:
        raise WavedistillError(f"--dtype must be one of {', '.join(DTYPES)}")
    was_there = os.path.isdir(output_dir)
    claim(output_dir, "cache-teacher", overwrite=overwrite, resumable=False,
          settings={"teacher": teacher, "data": data, "top_k": top_k, "seq_len": seq_len, "n_samples": n_samples,
                    "val_frac": val_frac, "test_frac": test_frac, "dtype": dtype})
    try:
        return _write_cache(teacher, data, output_dir, top_k, seq_len, batch_size, n_samples, val_frac, test_frac,
                            dtype, device, shard_bytes)
    except BaseException:
        # nothing half-written stays: shards without cache.json are no cache
        if was_there:
            for name in os.listdir(output_dir):
                path = os.path.join(output_dir, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        else:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise


def _write_cache(teacher, data, output_dir, top_k, seq_len, batch_size, n_samples, val_frac, test_frac, dtype, device,
                 shard_bytes) -> dict:
    t_start = time.perf_counter()
    model, tokenizer = load_teacher(teacher, dtype=DTYPES[dtype], device=device)
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else model.config.vocab_size
    if top_k > vocab:
        raise WavedistillError(f"--top-k {top_k} exceeds the teacher's vocabulary of {vocab} tokens")
    splits = run_splits(data, tokenizer, n_samples=n_samples, val_frac=val_frac, test_frac=test_frac)
    check_lengths(splits, seq_len)
    windows = eval_windows(splits.train, seq_len)  # (N, T): every training window, consecutive
    per_shard = max(1, shard_bytes // (seq_len * bytes_per_token(top_k)))

    # The folder is claimed: shards go straight in, cache.json last (a folder without it is no cache).
    shards, pending, teacher_s = [], {k: [] for k in KEYS}, 0.0

    def flush(n: int) -> None:  # the first n pending windows become the next shard

        name = f"shard_{len(shards):05d}.safetensors"
        tensors = {k: torch.cat(v) for k, v in pending.items()}
        path = os.path.join(output_dir, name)
        save_file({k: v[:n].contiguous() for k, v in tensors.items()}, path)
        os.chmod(path, 0o666 & ~umask())  # safetensors writes it private (0600)
        shards.append({"file": name, "windows": n, "sha256": sha256(path)})
        for k, v in tensors.items():
            pending[k] = [v[n:]] if len(v) > n else []

    for b in range(0, len(windows), batch_size):
        ids = windows[b: b + batch_size]  # (b, T)
        t0 = time.perf_counter()
        with torch.no_grad():
            logits = model(ids.to(device), use_cache=False).logits  # (b, T, V)
            top_ids, top_logp, rest = (x.cpu() for x in teacher_targets(logits, top_k))
        teacher_s += time.perf_counter() - t0
        for key, value in zip(KEYS, (ids.to(torch.int32), top_ids.to(torch.int32), top_logp.half(), rest.half())):
            pending[key].append(value)
        while sum(len(x) for x in pending["input_ids"]) >= per_shard:
            flush(per_shard)
    if pending["input_ids"]:
        flush(sum(len(x) for x in pending["input_ids"]))
    n_tokens = windows.numel()
    size = sum(os.path.getsize(os.path.join(output_dir, s["file"])) for s in shards)
    meta = {
        "format_version": FORMAT_VERSION, "wavedistill_version": __version__,
        "teacher": os.path.abspath(teacher) if os.path.isdir(teacher) else teacher,
        "base_fingerprint": base_fingerprint(model), "base_architecture": architecture(model),
        "embedding_sample": embedding_sample(model), "dtype": dtype, "vocab_size": vocab,
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "data": os.path.abspath(data) if os.path.exists(data) else data, "n_samples": n_samples,
        "val_frac": val_frac, "test_frac": test_frac, "train_tokens_hash": tokens_hash(windows),
        "seq_len": seq_len, "top_k": top_k, "n_windows": len(windows), "n_tokens": n_tokens,
        "shards": shards, "bytes": size, "bytes_per_token": round(size / n_tokens, 2),
        "teacher_s": round(teacher_s, 2),
        "teacher_tokens_per_s": round(n_tokens / teacher_s, 1) if teacher_s else None,
        "wall_s": round(time.perf_counter() - t_start, 2),
    }
    write_json_atomic(os.path.join(output_dir, CACHE_JSON), meta)
    return meta


# --------------------------------------------------------------------------------------------- reading


class TeacherCache:
    """A cache folder opened for training: windows read on demand from memory-mapped shards."""

    def __init__(self, path: str) -> None:
        self.path = path
        meta_path = os.path.join(path, CACHE_JSON)
        if not os.path.isfile(meta_path):
            raise WavedistillError(f"--teacher-cache {path!r} is not a teacher cache ({CACHE_JSON} is missing: none "
                                   "was written there, or its writing was interrupted); write one with `wavedistill "
                                   "cache-teacher` (--overwrite to reuse the folder)")
        try:
            with open(meta_path) as f:
                self.meta = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise WavedistillError(f"corrupt teacher cache {meta_path!r}: {e}") from None
        missing = [k for k in META_KEYS if k not in (self.meta if isinstance(self.meta, dict) else {})]
        if missing or not isinstance(self.meta.get("shards"), list) or not all(
                isinstance(x, dict) and isinstance(x.get("file"), str) and isinstance(x.get("windows"), int)
                for x in self.meta["shards"]):
            raise WavedistillError(f"corrupt teacher cache {meta_path!r}: "
                                   f"{'it lacks ' + ', '.join(missing) if missing else 'its shard list is malformed'}; "
                                   "write the cache again")
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise WavedistillError(f"teacher cache {path!r} has format_version {self.meta.get('format_version')!r}; "
                                   f"this wavedistill reads {FORMAT_VERSION}")
        T, k = self.meta["seq_len"], self.meta["top_k"]
        self.files, self.starts, n = [], [], 0
        for shard in self.meta["shards"]:
            file = os.path.join(path, shard["file"])
            if "sha256" in shard and os.path.isfile(file) and sha256(file) != shard["sha256"]:
                raise WavedistillError(f"teacher cache {path!r}: shard {shard['file']} does not match the checksum "
                                       "written with it (damaged or changed since); write the cache again")
            try:
                handle = safe_open(file, framework="pt")
                shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in KEYS}
            except (SafetensorError, OSError, ValueError) as e:  # missing, truncated, a key absent
                raise WavedistillError(f"teacher cache {path!r} is incomplete: shard {shard['file']} is missing or "
                                       f"unreadable ({str(e).splitlines()[0][:120]}); write the cache again") from None
            m = shard["windows"]
            expected = {"input_ids": (m, T), "topk_ids": (m, T, k), "topk_logp": (m, T, k), "rest_logp": (m, T)}
            if shapes != expected:
                raise WavedistillError(f"teacher cache {path!r} is incomplete: shard {shard['file']} holds {shapes}, "
                                       f"cache.json says {expected}; write the cache again")
            self.files.append(handle)
            self.starts.append(n)
            n += m
        self.n_windows = n
        if n != self.meta["n_windows"]:
            raise WavedistillError(f"teacher cache {path!r} is incomplete: its shards hold {n} windows, cache.json "
                                   f"says {self.meta['n_windows']}; write the cache again")

    def windows(self, index: Tensor) -> dict[str, Tensor]:
        """Rows ``index`` (B,) of the cached windows: input_ids (B, T) and topk_ids (B, T, k) as int64,
        topk_logp (B, T, k) and rest_logp (B, T) as stored (float16)."""
        rows: dict[str, list[Tensor]] = {key: [] for key in KEYS}
        for i in index.tolist():
            s = bisect.bisect_right(self.starts, i) - 1
            j = i - self.starts[s]
            for key in KEYS:
                rows[key].append(self.files[s].get_slice(key)[j: j + 1])
        out = {key: torch.cat(v) for key, v in rows.items()}
        out["input_ids"], out["topk_ids"] = out["input_ids"].long(), out["topk_ids"].long()
        return out

    def batch(self, batch_size: int, seed: int, step: int) -> dict[str, Tensor]:
        """Training batch ``step``: the windows a ``train_windows: fixed`` run draws at that step, with targets."""

        return self.windows(window_draw(self.n_windows, batch_size, seed, step))


def check_stages(stages, cfg) -> None:
    """Refuse stages a cache cannot feed: those needing the teacher's activations on training batches, and
    any temperature but 1 (softening needs the teacher's whole distribution)."""

    for i, stage in enumerate(stages):
        name = f"stage {i} ({stage.kind})"
        if stage.kind in ("transfer", "fit"):
            raise WavedistillError(f"{name} needs the teacher's attention on training batches, which a teacher "
                                   "cache does not hold: drop --teacher-cache or the stage")
        if not isinstance(stage, KDLoss):
            continue
        for weight in ("hidden_weight", "attention_weight"):
            if getattr(stage, weight) > 0:
                raise WavedistillError(f"{name} has {weight} {getattr(stage, weight)}: that loss needs the teacher's "
                                       "activations, which a teacher cache does not hold; set it to 0 or drop "
                                       "--teacher-cache")
        temperature = cfg.temperature if stage.temperature is None else stage.temperature
        if stage.temperature_schedule != "constant" or temperature != 1.0:
            raise WavedistillError(f"{name} runs at temperature {temperature} (schedule "
                                   f"{stage.temperature_schedule}); a teacher cache holds temperature-1 targets: use "
                                   "a constant temperature 1 or drop --teacher-cache")


def open_for_run(cfg, stages, base, tokenizer, splits) -> TeacherCache:
    """``cfg.teacher_cache`` opened and checked against the run; every mismatch is a one-line error."""

    path = cfg.teacher_cache
    cache = TeacherCache(path)
    meta = cache.meta
    fingerprint = base_fingerprint(base)
    if not same_base(base, meta, fingerprint):
        raise WavedistillError(f"teacher cache {path!r} was written with teacher {meta['teacher']!r} (fingerprint "
                               f"{meta['base_fingerprint']}), but the run's teacher {cfg.teacher!r} has fingerprint "
                               f"{fingerprint}: write a cache with this --teacher")
    if meta["tokenizer_hash"] != tokenizer_hash(tokenizer):
        raise WavedistillError(f"teacher cache {path!r} was written with another tokenizer (vocabulary hash "
                               f"{meta['tokenizer_hash']}, the run's is {tokenizer_hash(tokenizer)}): write a cache "
                               "with this --teacher")
    if meta["seq_len"] != cfg.seq_len:
        raise WavedistillError(f"teacher cache {path!r} holds windows of {meta['seq_len']} tokens, the run's "
                               f"--seq-len is {cfg.seq_len}: write a cache with --seq-len {cfg.seq_len}")
    n_run = len(splits.train) // cfg.seq_len
    settings = (f"data {meta['data']!r}, n_samples {meta['n_samples']}, val_frac {meta['val_frac']}, "
                f"test_frac {meta['test_frac']}")
    if cache.n_windows < n_run:
        raise WavedistillError(f"teacher cache {path!r} is shorter than the run: it holds {cache.n_windows} windows "
                               f"of {cfg.seq_len} tokens ({settings}), the run's training split has {n_run}: write "
                               "it with the run's --data, --n-samples, --val-frac and --test-frac")
    if cache.n_windows != n_run or meta["train_tokens_hash"] != tokens_hash(splits.train[: n_run * cfg.seq_len]):
        raise WavedistillError(f"teacher cache {path!r} holds another training split ({settings}) than the run's: "
                               "write it with the run's --data, --n-samples, --val-frac and --test-frac")
    check_stages(stages, cfg)
    return cache
