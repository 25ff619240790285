"""The decoding contract: every mixer with a recurrent form steps exactly as its parallel form computes.

Parametrised over the same cases as tests/mixers/test_contract.py, so a newly registered mixer is
covered without touching this file. All checks run in float64 on jittered weights.
"""

from __future__ import annotations

import pytest
import torch

from tests.mixers.test_contract import CASES, D, T, make, rand_x
from wavedistill.errors import MixerStateError
from wavedistill.mixers import build_mixer, list_mixers
from wavedistill.mixers.functional import rope_tables

STATEFUL = [c for c in CASES if make(*c.values, randomize=False).has_state]
# Bidirectional FNet has no recurrent form (every output sees every token).
STATELESS = [c for c in CASES if not make(*c.values, randomize=False).has_state] + [
    pytest.param("fnet", {"causal": False}, id="fnet-causal=False")]


def _inputs(with_rope: bool):
    x = rand_x()
    pad = torch.ones(2, T, dtype=torch.bool)
    pad[1, :5] = False  # a left-padded row: pads must leave no trace in the state
    pe = rope_tables(T, 6, 10000.0, x.device, x.dtype) if with_rope else None
    return x, pad, pe


def _kwargs_for_rope(m) -> bool:
    """Pass explicit rotary tables (as a teacher does) to mixers whose head_dim is 6 in the variants."""
    return getattr(m, "rope", False) and m.head_dim == 6


def _steps(m, x, pad, pe, state=None, start=0):
    state = m.init_state(x.shape[0]) if state is None else state
    ys = []
    for t in range(start, x.shape[1]):
        pe_t = None if pe is None else tuple(p[:, t] for p in pe)
        y, state = m.step(x[:, t], state, pad[:, t], pe_t)
        ys.append(y)
    return torch.stack(ys, dim=1), state


@pytest.mark.parametrize("name,kw", STATEFUL)
def test_step_by_step_recurrence_equals_the_parallel_form_at_every_position(name, kw):
    m = make(name, kw)
    x, pad, pe = _inputs(_kwargs_for_rope(m))
    with torch.no_grad():
        full = m(x, padding_mask=pad, position_embeddings=pe)
        stepped, _ = _steps(m, x, pad, pe)
    real = pad[..., None].expand_as(full)
    gap = (stepped - full)[real].abs().max().item()
    assert gap <= 1e-10, f"recurrent and parallel forms differ by {gap:.2e} on real tokens"


@pytest.mark.parametrize("name,kw", STATEFUL)
def test_prefill_then_steps_equals_one_forward(name, kw):
    m = make(name, kw)
    x, pad, pe = _inputs(_kwargs_for_rope(m))
    split = 14
    with torch.no_grad():
        full = m(x, padding_mask=pad, position_embeddings=pe)
        pe_head = None if pe is None else tuple(p[:, :split] for p in pe)
        head, state = m.prefill(x[:, :split], pad[:, :split], pe_head)
        tail, _ = _steps(m, x, pad, pe, state=state, start=split)
        # A prefill from a given state (several tokens at once after the prompt) continues it too.
        mid_pe = None if pe is None else tuple(p[:, split:] for p in pe)
        mid, _ = m.prefill(x[:, split:], pad[:, split:], mid_pe, state=state)
    real = pad[..., None].expand_as(full)
    for what, got in (("prefill + steps", torch.cat([head, tail], 1)),
                      ("prefill + prefill", torch.cat([head, mid], 1))):
        gap = (got - full)[real].abs().max().item()
        assert gap <= 1e-10, f"{what} differs from one forward by {gap:.2e}"


@pytest.mark.parametrize("name,kw", STATEFUL)
def test_a_state_of_another_batch_size_is_refused(name, kw):
    m = make(name, kw)
    state = m.init_state(3)
    with pytest.raises(MixerStateError, match="batch 3"):
        m.step(rand_x()[:, 0], state)


@pytest.mark.parametrize("name,kw", STATELESS)
def test_a_mixer_without_a_state_form_refuses_the_state_path(name, kw):
    m = make(name, kw)
    with pytest.raises(MixerStateError, match="no recurrent state form"):
        m.init_state(2)


@pytest.mark.parametrize("name", list_mixers())
def test_fixed_buffers_stay_float32_through_a_bfloat16_cast(name):
    # Decay rates, frequencies and scales are constants: bf16 would round 1 - 1/741 to 1.0.
    m = build_mixer(name, D)
    before = {n: b.clone() for n, b in m.named_buffers()}
    fixed = getattr(m, "_fixed_buffers", set())
    m.to(torch.bfloat16)
    for n, b in m.named_buffers():
        if n in fixed:
            assert b.dtype == torch.float32, f"{n} became {b.dtype}"
            assert torch.equal(b, before[n].float()), f"{n} changed value in the cast"
    m.to(torch.float64)
    for n in fixed:
        assert dict(m.named_buffers())[n].dtype == torch.float64, "fixed buffers follow up-casts"


@pytest.mark.parametrize("name", list_mixers())
def test_float32_kept_parameters_stay_float32_and_the_weights_follow_the_cast(name):
    # A selective SSM's Delta / decay / frequency parameters sum over the sequence: bf16 would shift phases.
    m = build_mixer(name, D)
    kept = getattr(m, "_float32_params", set())
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    m.to(torch.bfloat16)
    for n, p in m.named_parameters():
        if n in kept:
            assert p.dtype == torch.float32 and torch.equal(p, before[n]), f"{n} was rounded by the cast"
        else:
            assert p.dtype == torch.bfloat16, f"{n} did not follow the cast"
    assert m.weight_dtype == torch.bfloat16
    with torch.no_grad():
        assert m(torch.randn(2, 8, D, dtype=torch.bfloat16)).dtype == torch.bfloat16
    m.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters()), "kept parameters follow up-casts"


def test_selective_s4d_keeps_its_selection_in_float32():
    m = build_mixer("selective_s4d", D)
    assert m._float32_params == {"log_alpha", "omega", "dt_proj.weight", "dt_proj.bias"}
