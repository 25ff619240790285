"""Token-by-token decoding of a lab ``WaveTransformer`` through its mixers' recurrent states.

Each block's mixer runs :meth:`~wavedistill.mixers.WaveMixer.prefill` over the prompt (its parallel form plus the
closed-form state) and then :meth:`~wavedistill.mixers.WaveMixer.step` per new token: O(1) per token for a
recurrence, a growing key / value cache for ``attention``. :func:`forward_logits` is the reference the decode
path is tested against (tests/lab/test_decode.py); :func:`decode_ms_per_token` times it.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import Tensor

from ..errors import WavedistillError
from .model import WaveTransformer


def _positions(model: WaveTransformer, start: int, T: int) -> Tensor | None:
    """(T, D) rows of the learned position table for positions start..start+T-1, or None without one."""
    if model.pos is None:
        return None
    if start + T > model.max_len:
        raise WavedistillError(f"decoding past position {model.max_len} needs a model without a position table "
                               "(positions: none)")
    return model.pos.weight[start: start + T]


@torch.no_grad()
def prefill(model: WaveTransformer, ids: Tensor) -> tuple[Tensor, list[dict]]:
    """ids (B, P) -> (next-token logits (B, V) after the prompt, one mixer state per block)."""
    x = model.embed(ids)  # (B, P, D)
    pos = _positions(model, 0, ids.shape[1])
    if pos is not None:
        x = x + pos
    states = []
    for block in model.blocks:
        y, state = block.mixer.prefill(block.norm1(x))
        x = block.feed_forward(x + y)
        states.append(state)
    return model.logits(model.norm(x[:, -1])), states


@torch.no_grad()
def step(model: WaveTransformer, token: Tensor, states: list[dict]) -> tuple[Tensor, list[dict]]:
    """token (B,) -> (next-token logits (B, V), the states after it)."""
    x = model.embed(token)  # (B, D)
    pos = _positions(model, int(states[0]["pos"].max()), 1)
    if pos is not None:
        x = x + pos[0]
    new = []
    for block, state in zip(model.blocks, states):
        y, state = block.mixer.step(block.norm1(x), state)
        x = block.feed_forward(x + y)
        new.append(state)
    return model.logits(model.norm(x)), new


@torch.no_grad()
def greedy(model: WaveTransformer, prompt: Tensor, n_tokens: int) -> Tensor:
    """(B, P) prompt -> (B, n_tokens) greedy continuation, decoded token by token."""
    logits, states = prefill(model, prompt)
    out = []
    for _ in range(n_tokens):
        token = logits.argmax(-1)
        out.append(token)
        logits, states = step(model, token, states)
    return torch.stack(out, dim=1)


@torch.no_grad()
def forward_logits(model: WaveTransformer, ids: Tensor) -> Tensor:
    """(B, T) -> (B, T, V): the parallel forward, what :func:`prefill` + :func:`step` must reproduce."""
    return model.logits(model(ids))


@torch.no_grad()
def decode_ms_per_token(model: WaveTransformer, context: int, n_tokens: int = 32, seed: int = 0) -> float:
    """Median milliseconds of one :func:`step` (batch 1) after a prefill of ``context`` random tokens and one warm-up
    step; what grows with the context is the attention cache, not a recurrence's state."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.head.out_features, (1, context), generator=g)
    logits, states = prefill(model.eval(), ids)
    token = logits.argmax(-1)
    logits, states = step(model, token, states)
    times = []
    for _ in range(n_tokens):
        token = logits.argmax(-1)
        t0 = time.perf_counter()
        logits, states = step(model, token, states)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)
