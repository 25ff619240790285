"""Recall probes: does the student keep the teacher's ability to copy from its own context?

Attention looks up any earlier token exactly; a recurrence with a decaying, fixed-size state cannot hold
them all, and copying is what published conversions lose first. Three probes, each reported for the
teacher, the no-mixing baseline and the student, with standard errors and counts:

* ``induction`` -- L random tokens, then the same L again (after BOS). Accuracy and loss of predicting
  tokens 2..L of the second copy: the classic test of the copy circuit (induction heads). Tokens are drawn
  uniformly from the tokenizer's ordinary tokens (special and byte-fallback tokens left out), so chance
  accuracy is 1 / their number; a small teacher may be at chance here (it never learned a general copy).
* ``copy_positions`` -- on held-out windows, the positions whose *teacher* top-1 token occurs earlier in the
  window, bucketed by the distance back to its last occurrence (1-8, 9-32, 33-128, > 128): the student's
  top-1 agreement with the teacher there, next to its agreement over all positions; and the same over the
  copies that need the context (the no-mixing baseline predicts another token). Standard errors treat
  windows as clusters.
* ``repeated_passages`` -- a held-out passage of L tokens followed by the same passage: top-1 accuracy
  (true next token) on the second copy against the first, per passage, and the gain; natural text
  carries a copy signal even for a teacher too small to copy random tokens.
* ``passkey`` -- a key stated once ("The pass key is 48." / "... a girl named Mia."), F tokens of held-out
  text, then the question ("The pass key is" / "The girl's name was"): is the stated key the likeliest of
  ``choices`` candidates (log-likelihood of each continuation; a tie shares the hit)? Chance is
  1 / ``choices``; the ``name`` form is the one a small story model can answer at all.
"""

from __future__ import annotations

import re

import torch

from ..errors import WavedistillError
from .scoring import logits
from .stats import estimate, mean_se, ratio_se

DISTANCE_BUCKETS = ((1, 8), (9, 32), (33, 128), (129, None))
INDUCTION_LENGTHS = (16, 32, 64, 128, 256)
PASSAGE_LENGTHS = (32, 64, 128, 256)
FILLER_LENGTHS = (0, 32, 64, 128, 256)
PASSKEY_FORMS = {  # form -> (needle with {key}, question, keys drawn from)
    "number": ("The pass key is {key}. Remember it.", " What is the pass key? The pass key is",
               [str(n) for n in range(10, 100)]),
    "name": ("Once upon a time, there was a girl named {key}.", " The girl's name was",
             ["Lily", "Tom", "Ben", "Mia", "Sue", "Max", "Anna", "Sam", "Zoe", "Leo", "Tim", "Lucy", "Jack", "Amy"]),
}
BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def ordinary_tokens(tokenizer) -> list[int]:
    """Token ids a random sequence draws from: not special, not a byte-fallback piece."""
    special = set(tokenizer.all_special_ids)
    return sorted(i for t, i in tokenizer.get_vocab().items() if i not in special and not BYTE_TOKEN.match(t))


# the eval flag that sets each probe's lengths, for the error that asks for shorter ones
LENGTH_FLAGS = {"induction": "--induction-lengths", "repeated-passage": "--passage-lengths", "passkey": "--fillers"}


def fitting(lengths, need, context: int | None, probe: str) -> tuple[list[int], list[int]]:
    """(lengths whose sequence of ``need(L)`` tokens fits the context, those that do not); none fitting is an error."""
    fit = [L for L in lengths if context is None or need(L) <= context]
    if not fit:
        raise WavedistillError(f"the {probe} probe needs {need(min(lengths))} positions at L = {min(lengths)}, more "
                               f"than the model's context of {context}; pass shorter {LENGTH_FLAGS[probe]}")
    return fit, [L for L in lengths if L not in fit]


@torch.no_grad()
def induction(models, tokenizer, names, lengths=INDUCTION_LENGTHS, n_sequences: int = 100, context: int | None = None,
              batch_size: int = 16, seed: int = 0) -> dict:
    """Random tokens repeated once: accuracy / loss on tokens 2..L of the second copy, per L and model."""
    pool = torch.tensor(ordinary_tokens(tokenizer))
    if len(pool) < 2:
        raise WavedistillError("the tokenizer has fewer than two ordinary tokens to draw random sequences from")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    fit, skipped = fitting(lengths, lambda L: len(bos) + 2 * L, context, "induction")
    g = torch.Generator().manual_seed(seed)
    out = {"chance": 1 / len(pool), "tokens_drawn_from": len(pool), "sequences": n_sequences,
           "skipped_lengths": skipped, "lengths": {}}
    for L in fit:
        half = pool[torch.randint(0, len(pool), (n_sequences, L), generator=g)]
        ids = torch.cat([torch.tensor(bos, dtype=torch.long).expand(n_sequences, len(bos)), half, half], dim=1)
        start = len(bos) + L  # the first token of the second copy; its successors are the targets
        targets = ids[:, start + 1:]  # (N, L - 1)
        row = {}
        for name in names:
            acc, loss = [], []
            for i in range(0, n_sequences, batch_size):
                z = logits(models, name, ids[i: i + batch_size])[:, start: -1]  # predicts targets
                t = targets[i: i + batch_size]
                acc += (z.argmax(-1) == t).float().mean(1).tolist()
                loss += torch.nn.functional.cross_entropy(z.transpose(1, 2), t, reduction="none").mean(1).tolist()
            row[name] = {"accuracy": estimate(*mean_se(acc), len(acc)), "loss": estimate(*mean_se(loss), len(loss))}
        out["lengths"][str(L)] = row
    return out


def last_occurrence_distance(ids: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """(B, T) distance from position t + 1 back to the last j <= t with ids[j] == predicted[t]; 0 where none."""
    T = ids.shape[1]
    same = ids[:, None, :] == predicted[:, :, None]  # (B, T, T): [b, t, j]
    same &= torch.ones(T, T, dtype=torch.bool).tril()  # j <= t only
    j = torch.arange(T)
    last = torch.where(same, j, -1).amax(-1)  # (B, T)
    return torch.where(last >= 0, j + 1 - last, 0)


@torch.no_grad()
def copy_positions(models, windows: torch.Tensor, names, batch_size: int = 8) -> dict:
    """Top-1 agreement with the teacher on held-out windows (N, T): all positions, and the positions whose
    teacher top-1 token occurs earlier in the window, by distance bucket (windows are the clusters).

    With the no-mixing baseline among ``names``, also the stricter subset of those positions where the
    baseline's top-1 differs from the teacher's: copies the current token alone does not predict (frequent
    tokens such as "the" or "." occur earlier in almost every window and dominate the plain selection).
    """
    others = [n for n in names if n != "teacher"]
    selections = ["copy", "needs_context"] if "no_mixing" in names else ["copy"]
    keys = [(sel, b) for sel in selections for b in DISTANCE_BUCKETS]
    per = {n: {k: ([], []) for k in ["all", *keys]} for n in others}
    shares = {sel: [] for sel in selections}
    positions = []
    for i in range(0, len(windows), batch_size):
        ids = windows[i: i + batch_size]
        top = logits(models, "teacher", ids).argmax(-1)  # (B, T)
        dist = last_occurrence_distance(ids, top)
        tops = {n: logits(models, n, ids).argmax(-1) for n in others}
        masks = {"copy": dist > 0}
        if "needs_context" in selections:
            masks["needs_context"] = masks["copy"] & (tops["no_mixing"] != top)
        positions += [ids.shape[1]] * len(ids)
        for sel in selections:
            shares[sel] += masks[sel].sum(1).tolist()
        for n in others:
            agree = tops[n] == top
            _add_rate(per[n]["all"], agree, torch.ones_like(agree))
            for sel, (lo, hi) in keys:
                _add_rate(per[n][sel, (lo, hi)], agree, masks[sel] & (dist >= lo) & (dist <= (hi or ids.shape[1])))
    out = {"windows": len(windows), "seq_len": windows.shape[1], "buckets": [bucket_name(b) for b in DISTANCE_BUCKETS],
           "shares": {sel: estimate(*ratio_se(shares[sel], positions)) for sel in selections}}
    for sel in selections:
        out[f"agreement_{sel}"] = {n: {bucket_name(b): estimate(*ratio_se(*per[n][sel, b])) for b in DISTANCE_BUCKETS}
                                   for n in others}
    out["agreement_all"] = {n: estimate(*ratio_se(*per[n]["all"])) for n in others}
    return out


def _add_rate(acc: tuple[list, list], hits: torch.Tensor, inside: torch.Tensor) -> None:
    """Per window (row): the hits inside the selection and the selection's size."""
    acc[0].extend((hits & inside).sum(1).tolist())
    acc[1].extend(inside.sum(1).tolist())


def bucket_name(bucket: tuple[int, int | None]) -> str:
    lo, hi = bucket
    return f"{lo}-{hi}" if hi else f">{lo - 1}"


@torch.no_grad()
def repeated_passages(models, stream: torch.Tensor, names, lengths=PASSAGE_LENGTHS, n_passages: int = 128,
                      context: int | None = None, batch_size: int = 16) -> dict:
    """Held-out passages of L tokens, each followed by itself: top-1 accuracy on copy 1 vs copy 2 (tokens 2..L of
    each, the true next token), and the per-passage gain, per L and model."""
    fit, skipped = fitting(lengths, lambda L: 2 * L, context, "repeated-passage")
    out = {"skipped_lengths": skipped, "lengths": {}}
    for L in fit:
        n = min(n_passages, len(stream) // L)
        if n < 2:
            raise WavedistillError(f"the held-out text has {len(stream)} tokens, too few for two passages of {L}; "
                                   "pass more text or shorter --passage-lengths")
        half = stream[: n * L].view(n, L)
        ids = torch.cat([half, half], dim=1)  # (n, 2L)
        row = {}
        for name in names:
            first, second = [], []
            for i in range(0, n, batch_size):
                top = logits(models, name, ids[i: i + batch_size]).argmax(-1)  # (B, 2L): top[:, t] predicts t + 1
                h = half[i: i + batch_size]
                first += (top[:, : L - 1] == h[:, 1:]).float().mean(1).tolist()
                second += (top[:, L: 2 * L - 1] == h[:, 1:]).float().mean(1).tolist()
            gains = [b - a for a, b in zip(first, second)]
            row[name] = {"first": estimate(*mean_se(first), n), "second": estimate(*mean_se(second), n),
                         "gain": estimate(*mean_se(gains), n)}
        out["lengths"][str(L)] = row
    return out


def _continuation(tokenizer, question: str, key: str) -> list[int]:
    """The ids ``" " + key`` adds after ``question`` (both without special tokens)."""
    q = tokenizer(question, add_special_tokens=False)["input_ids"]
    both = tokenizer(question + " " + key, add_special_tokens=False)["input_ids"]
    if both[: len(q)] != q:
        raise WavedistillError(f"the tokenizer merges {key!r} into the question; the passkey probe cannot score it")
    return both[len(q):]


@torch.no_grad()
def passkey(models, tokenizer, stream: torch.Tensor, names, fillers=FILLER_LENGTHS, trials: int = 100,
            choices: int = 5, context: int | None = None, batch_size: int = 8, seed: int = 0) -> dict:
    """Per form and filler length F: how often the stated key is the likeliest of ``choices`` candidates."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    text = stream[stream != tokenizer.bos_token_id] if bos else stream  # filler without document starts
    out = {"chance": 1 / choices, "trials": trials, "forms": {}}
    for form, (needle, question, keys) in PASSKEY_FORMS.items():
        q_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
        conts = {k: _continuation(tokenizer, question, k) for k in keys}
        needles = {k: bos + tokenizer(needle.format(key=k), add_special_tokens=False)["input_ids"] for k in keys}
        longest = max(len(n) for n in needles.values()) + len(q_ids) + max(len(c) for c in conts.values())
        fit, skipped = fitting(fillers, lambda F: F + longest, context, "passkey")
        rng = torch.Generator().manual_seed(seed)
        rows = {}
        for F in fit:
            # One row per (trial, candidate): the stated key is candidate 0 of its trial.
            seqs, spans = [], []
            for _ in range(trials):
                picked = [keys[i] for i in torch.randperm(len(keys), generator=rng)[:choices].tolist()]
                start = torch.randint(0, len(text) - F + 1, (1,), generator=rng).item()
                prefix = needles[picked[0]] + text[start: start + F].tolist() + q_ids
                seqs += [prefix + conts[k] for k in picked]
                spans += [(len(prefix), len(prefix) + len(conts[k])) for k in picked]
            ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)  # right padding: causal models
            for i, seq in enumerate(seqs):
                ids[i, : len(seq)] = torch.tensor(seq)
            hits = {}
            for n in names:
                scores = []
                for i in range(0, len(seqs), batch_size * choices):
                    logp = logits(models, n, ids[i: i + batch_size * choices]).log_softmax(-1)
                    for r, (lo, hi) in enumerate(spans[i: i + batch_size * choices]):
                        scores.append(logp[r, lo - 1: hi - 1].gather(-1, ids[i + r, lo: hi, None]).sum().item())
                per_trial = torch.tensor(scores, dtype=torch.float64).view(trials, choices)
                # a tie for the top shares the hit: random tie-breaking's expected accuracy
                top = per_trial == per_trial.amax(1, keepdim=True)
                hits[n] = (top[:, 0] / top.sum(1)).tolist()
            rows[str(F)] = {n: estimate(*mean_se(h), len(h)) for n, h in hits.items()}
        out["forms"][form] = {"fillers": rows, "skipped_fillers": skipped}
    return out
