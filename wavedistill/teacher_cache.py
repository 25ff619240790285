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

Loss: the divergence between teacher and student distributions *coarsened* to k + 1 outcomes, the
teacher's k cached tokens and one "rest" bucket. For forward KL, per position::

    sum_i p_i (log p_i - log q_i) + p_rest (log p_rest - log q_rest),   q_rest = 1 - sum_i q_i

with q the student's softmax over the same k ids (``log q_rest`` is the log-sum-exp of the student's
other log-probabilities, exact even when the top k hold nearly all of its mass). It is at most the
full KL (coarsening never increases a divergence) and equals it when k = V. Reverse KL and JSD are
taken over the same k + 1 outcomes (:func:`wavedistill.kd_chunked.divergence`). Temperature 1 only:
softening needs the teacher's whole distribution. CE on the next token and masks as in
:func:`wavedistill.losses.kd_loss`; the loss runs a chunk of positions at a time like
:mod:`wavedistill.kd_chunked`, with the student's log-softmax computed once per chunk for both terms.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import shutil
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from . import __version__
from .core.devices import DTYPES
from .errors import WavedistillError
from .kd_chunked import CHUNK_ELEMENTS, DIVERGENCES, divergence
from .run_folder import claim, sha256, umask, write_json_atomic

CACHE_JSON = "cache.json"
FORMAT_VERSION = 1
DEFAULT_TOP_K = 32
SHARD_BYTES = 256 << 20  # target size of one shard file
KEYS = ("input_ids", "topk_ids", "topk_logp", "rest_logp")
META_KEYS = ("format_version", "seq_len", "top_k", "shards", "n_windows", "teacher", "base_fingerprint",
             "tokenizer_hash", "train_tokens_hash", "vocab_size", "data", "n_samples", "val_frac",
             "test_frac")  # what reading and checking a cache use
# Finite stand-ins for log 0: 0 * (-inf) would be NaN in the divergence and its gradient.
_STUDENT_FLOOR = -1e30  # log q_rest when the k ids cover the whole vocabulary
_TEACHER_FLOOR = -1e4  # exp() of it is 0 in float32


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


@torch.no_grad()
def teacher_targets(logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(..., V) logits -> top-k ids (..., k), their log-probabilities (..., k), log of the rest's mass (...)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    top_logp, top_ids = logp.topk(k, dim=-1)
    # The rest's mass summed directly (not 1 - top-k mass, which float32 rounds to 0 for a peaked teacher).
    rest = logp.scatter(-1, top_ids, float("-inf")).logsumexp(-1)
    return top_ids, top_logp, rest


# --------------------------------------------------------------------------------------------- writing


def write_cache(teacher: str, data: str, output_dir: str, *, top_k: int = DEFAULT_TOP_K, seq_len: int = 256,
                batch_size: int = 16, n_samples: int = 0, val_frac: float = 0.05, test_frac: float = 0.10,
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
    from .data import check_lengths, eval_windows, run_splits
    from .io import architecture, base_fingerprint, embedding_sample, load_teacher

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
        from safetensors.torch import save_file

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
        from safetensors import SafetensorError, safe_open

        self.path = path
        meta_path = os.path.join(path, CACHE_JSON)
        if not os.path.isfile(meta_path):
            raise WavedistillError(f"--teacher-cache {path!r} is not a teacher cache ({CACHE_JSON} is missing: none was "
                                   "written there, or its writing was interrupted); write one with `wavedistill "
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
        from .data import window_draw

        return self.windows(window_draw(self.n_windows, batch_size, seed, step))


def check_stages(stages, cfg) -> None:
    """Refuse stages a cache cannot feed: those needing the teacher's activations on training batches, and
    any temperature but 1 (softening needs the teacher's whole distribution)."""
    from .recipes import KDLoss

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
    from .io import base_fingerprint, same_base

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


# --------------------------------------------------------------------------------------------- the loss


def _teacher_coarse(topk_logp: Tensor, rest_logp: Tensor) -> Tensor:
    """(..., k), (...) cached log-probabilities -> (..., k + 1) float32, renormalised (float16 storage
    leaves their sum a little off 1), with a finite floor for the empty rest bucket of k = V."""
    t = torch.cat([topk_logp.float(), rest_logp.float()[..., None]], dim=-1)
    return (t - t.logsumexp(-1, keepdim=True)).clamp_min(_TEACHER_FLOOR)


def student_coarse(s_logp: Tensor, topk_ids: Tensor) -> Tensor:
    """(..., V) student log-probabilities, (..., k) ids -> (..., k + 1): the ids' log-probabilities and the
    log of the rest's mass (log-sum-exp over the other ids; a finite floor if there are none)."""
    top = s_logp.gather(-1, topk_ids)
    chosen = torch.zeros_like(s_logp, dtype=torch.bool).scatter_(-1, topk_ids, True)
    rest = s_logp.masked_fill(chosen, _STUDENT_FLOOR).logsumexp(-1)
    return torch.cat([top, rest[..., None]], dim=-1)


def _weights(input_ids: Tensor, kl_weight: float, ce_weight: float, mask: Tensor | None):
    """Per-position weights of the divergence and the CE, and the CE targets, as in kd_loss_chunked; all (B, T)."""
    if mask is None:
        mask = torch.ones_like(input_ids, dtype=torch.bool)
    maskf = mask.float()
    ce_mask = torch.zeros_like(maskf)
    ce_mask[:, :-1] = (mask[:, :-1] & mask[:, 1:]).float()  # CE needs position t and the next token real
    targets = torch.full_like(input_ids, -100)
    targets[:, :-1] = input_ids[:, 1:]
    kl_w = kl_weight * maskf / maskf.sum().clamp_min(1)
    ce_w = ce_weight * ce_mask / ce_mask.sum().clamp_min(1)
    return maskf, ce_mask, targets, kl_w, ce_w


class _ChunkedCachedKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, targets, topk_ids, t_coarse, kl_w, ce_w, chunk, kind):
        # student: (N, V) logits; targets: (N,) next tokens, -100 = no CE; topk_ids: (N, k);
        # t_coarse: (N, k + 1) teacher log-probabilities; kl_w, ce_w: (N,) per-position weights.
        grad = torch.zeros_like(student)
        total = student.new_zeros((), dtype=torch.float32)
        divs = student.new_zeros(student.shape[0], dtype=torch.float32)
        ces = torch.zeros_like(divs)
        for i in range(0, student.shape[0], chunk):
            sl = slice(i, i + chunk)
            with torch.enable_grad():
                s = student[sl].float().requires_grad_(True)  # (c, V)
                s_logp = F.log_softmax(s, dim=-1)  # once, for the divergence and the CE
                div = divergence(t_coarse[sl], student_coarse(s_logp, topk_ids[sl]), kind)  # (c,)
                ce = -s_logp.gather(-1, targets[sl].clamp_min(0)[:, None])[:, 0] * (targets[sl] >= 0)
                loss = (kl_w[sl] * div).sum() + (ce_w[sl] * ce).sum()
                (g,) = torch.autograd.grad(loss, s)
            grad[sl] = g.to(grad.dtype)
            total = total + loss.detach()
            divs[sl], ces[sl] = div.detach(), ce.detach()
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(divs, ces)
        return total, divs, ces

    @staticmethod
    def backward(ctx, grad_total, _div, _ce):
        (grad,) = ctx.saved_tensors
        return (grad * grad_total.to(grad.dtype),) + (None,) * 7


def cached_kd_loss(student_logits: Tensor, input_ids: Tensor, topk_ids: Tensor, topk_logp: Tensor,
                   rest_logp: Tensor, *, kl_weight: float = 0.9, ce_weight: float = 0.1, mask: Tensor | None = None,
                   divergence_kind: str = "forward_kl", chunk: int | None = None) -> dict[str, Tensor]:
    """``kl_weight * mean(D_coarse(teacher, student)) + ce_weight * CE`` from cached targets, ``chunk`` positions
    at a time (None: ~128 MB of float32 per chunk). Shapes: logits (B, T, V), ids (B, T), topk (B, T, k),
    rest (B, T). Returns ``loss`` and the unweighted means ``kl`` (the coarse divergence) and ``ce``."""
    if divergence_kind not in DIVERGENCES:
        raise WavedistillError(f"unknown divergence {divergence_kind!r}; known: {', '.join(DIVERGENCES)}")
    B, T, V = student_logits.shape
    chunk = max(1, CHUNK_ELEMENTS // V) if chunk is None else chunk
    if chunk < 1:
        raise WavedistillError(f"the KD loss chunk must be >= 1 position, got {chunk}")
    k = topk_ids.shape[-1]
    maskf, ce_mask, targets, kl_w, ce_w = _weights(input_ids, kl_weight, ce_weight, mask)
    loss, div, ce = _ChunkedCachedKD.apply(student_logits.reshape(B * T, V), targets.reshape(-1),
                                           topk_ids.reshape(B * T, k).long(),
                                           _teacher_coarse(topk_logp, rest_logp).reshape(B * T, k + 1),
                                           kl_w.reshape(-1), ce_w.reshape(-1), chunk, divergence_kind)
    kl = (div.view(B, T) * maskf).sum() / maskf.sum().clamp_min(1)
    ce = (ce.view(B, T) * ce_mask).sum() / ce_mask.sum().clamp_min(1)
    return {"loss": loss, "kl": kl, "ce": ce}


def cached_kd_loss_dense(student_logits: Tensor, input_ids: Tensor, topk_ids: Tensor, topk_logp: Tensor,
                         rest_logp: Tensor, *, kl_weight: float = 0.9, ce_weight: float = 0.1,
                         mask: Tensor | None = None, divergence_kind: str = "forward_kl") -> dict[str, Tensor]:
    """:func:`cached_kd_loss` on the whole (B, T, V) at once through autograd: the reference (``loss_chunk: 0``)."""
    s_logp = F.log_softmax(student_logits.float(), dim=-1)  # (B, T, V)
    div = divergence(_teacher_coarse(topk_logp, rest_logp), student_coarse(s_logp, topk_ids.long()),
                     divergence_kind)  # (B, T)
    ce = -s_logp[:, :-1].gather(-1, input_ids[:, 1:, None])[..., 0]  # (B, T - 1)
    maskf, ce_mask, _, kl_w, ce_w = _weights(input_ids, kl_weight, ce_weight, mask)
    loss = (kl_w * div).sum() + (ce_w[:, :-1] * ce).sum()
    kl = (div * maskf).sum() / maskf.sum().clamp_min(1)
    ce = (ce * ce_mask[:, :-1]).sum() / ce_mask.sum().clamp_min(1)
    return {"loss": loss, "kl": kl.detach(), "ce": ce.detach()}
