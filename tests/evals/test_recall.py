"""Recall probes against models whose answers are known: an exact copy oracle and a constant model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from wavedistill.errors import WavedistillError
from wavedistill.evals import recall
from wavedistill.evals.runs import RunModels

V = 600


class FakeTokenizer:
    """Ordinary tokens w2..w(V-3), two special ones, and two byte-fallback pieces the probes must skip."""

    bos_token_id = 1
    all_special_ids = [0, 1]

    def get_vocab(self):
        vocab = {"<pad>": 0, "<s>": 1, "<0x41>": V - 2, "<0x0A>": V - 1}
        vocab.update({f"w{i}": i for i in range(2, V - 2)})
        return vocab


class CopyOracle(nn.Module):
    """At each position, predicts the token that followed the last earlier occurrence of the current token
    (an exact induction head); with no earlier occurrence, token 0."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, ids, use_cache=False):
        B, T = ids.shape
        logits = torch.zeros(B, T, V)
        for b in range(B):
            last: dict[int, int] = {}
            for t in range(T):
                tok = ids[b, t].item()
                logits[b, t, ids[b, last[tok] + 1] if tok in last else 0] = 10.0
                last[tok] = t
        return SimpleNamespace(logits=logits)


class Constant(nn.Module):
    """Uniform logits: argmax is token 0, the loss of any target log(V)."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, ids, use_cache=False):
        return SimpleNamespace(logits=torch.zeros(*ids.shape, V))


def models(student, teacher=None):
    return RunModels(student, teacher if teacher is not None else CopyOracle(), FakeTokenizer(), {}, None)


def test_ordinary_tokens_leave_out_special_and_byte_pieces():
    assert recall.ordinary_tokens(FakeTokenizer()) == list(range(2, V - 2))


def test_induction_scores_the_second_copy_only():
    m = models(CopyOracle())
    out = recall.induction(m, FakeTokenizer(), ["teacher", "student"], lengths=(8, 16), n_sequences=20, context=64,
                           batch_size=7)
    assert out["chance"] == pytest.approx(1 / (V - 4))
    for L in ("8", "16"):
        acc = out["lengths"][L]["student"]["accuracy"]
        # repeats inside one random half are rare (596 tokens): the oracle copies almost every target
        assert acc["value"] > 0.95 and acc["n"] == 20
    flat = recall.induction(models(Constant()), FakeTokenizer(), ["student"], lengths=(8,), n_sequences=5, context=64)
    row = flat["lengths"]["8"]["student"]
    assert row["accuracy"]["value"] == 0.0  # token 0 is special: never a target
    assert row["loss"]["value"] == pytest.approx(math.log(V))


def test_induction_skips_lengths_past_the_context_and_refuses_when_none_fit():
    out = recall.induction(models(Constant()), FakeTokenizer(), ["student"], lengths=(8, 64), n_sequences=2, context=40)
    assert list(out["lengths"]) == ["8"] and out["skipped_lengths"] == [64]
    with pytest.raises(WavedistillError, match="context of 10; pass shorter --induction-lengths"):
        recall.induction(models(Constant()), FakeTokenizer(), ["student"], lengths=(8,), n_sequences=2, context=10)


def test_last_occurrence_distance_matches_a_direct_search():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (3, 40), generator=g)
    predicted = torch.randint(0, 6, (3, 40), generator=g)
    dist = recall.last_occurrence_distance(ids, predicted)
    for b in range(3):
        for t in range(40):
            earlier = [j for j in range(t + 1) if ids[b, j] == predicted[b, t]]
            assert dist[b, t].item() == (t + 1 - earlier[-1] if earlier else 0)


def test_copy_positions_agreement_and_buckets():
    g = torch.Generator().manual_seed(1)
    # A small alphabet (copies at short distances), then 150 distinct tokens twice (copies 150 back).
    far = torch.stack([torch.randperm(400, generator=g)[:150] + 100 for _ in range(6)])
    windows = torch.cat([torch.randint(2, 40, (6, 60), generator=g), far, far], dim=1)
    same = recall.copy_positions(models(CopyOracle()), windows, ["teacher", "student"], batch_size=4)
    assert same["agreement_all"]["student"]["value"] == 1.0
    assert list(same["shares"]) == ["copy"]  # no baseline among the models: no needs-context subset
    flat = recall.copy_positions(models(Constant()), windows, ["teacher", "student"], batch_size=4)
    top = CopyOracle()(windows).logits.argmax(-1)
    dist = recall.last_occurrence_distance(windows, top)
    assert flat["agreement_all"]["student"]["value"] == pytest.approx((top == 0).float().mean().item())
    agree = flat["agreement_copy"]["student"]
    counts = [agree[b]["n"] for b in flat["buckets"]]
    assert sum(counts) == (dist > 0).sum().item() and all(c > 0 for c in counts)
    assert flat["shares"]["copy"]["value"] == pytest.approx((dist > 0).float().mean().item())


def test_copies_that_need_the_context_are_those_the_no_mixing_baseline_misses():
    from tests.conftest import tiny_model
    from wavedistill.evaluate import attention_zeroed
    from wavedistill.surgery import TeacherView, convert

    student = tiny_model("llama")
    convert(student, "learned_gate")
    m = RunModels(student, TeacherView(student), None, {}, None)
    windows = torch.randint(0, 20, (3, 48), generator=torch.Generator().manual_seed(0))
    out = recall.copy_positions(m, windows, ["teacher", "no_mixing", "student"], batch_size=2)
    with torch.no_grad():
        top = m.teacher(windows).logits.argmax(-1)
        with attention_zeroed(m.teacher):
            base = m.teacher(windows).logits.argmax(-1)
        mine = student(windows).logits.argmax(-1)
    dist = recall.last_occurrence_distance(windows, top)
    need = (dist > 0) & (base != top)
    assert out["shares"]["needs_context"]["n"] == 3 * 48
    assert out["shares"]["needs_context"]["value"] == pytest.approx(need.float().mean().item())
    hits = sum(out["agreement_needs_context"]["student"][b]["value"] * out["agreement_needs_context"]["student"][b]["n"]
               for b in out["buckets"] if out["agreement_needs_context"]["student"][b]["n"])
    assert hits == pytest.approx(((mine == top) & need).sum().item())
    for b in out["buckets"]:  # there, by definition, the baseline never agrees with the teacher
        cell = out["agreement_needs_context"]["no_mixing"][b]
        assert cell["n"] == 0 or cell["value"] == 0.0


def test_repeated_passages_gain_is_second_copy_minus_first():
    stream = torch.arange(2, 2 + 8 * 32)  # distinct tokens: nothing to copy in the first copy, all in the second
    out = recall.repeated_passages(models(CopyOracle()), stream, ["student"], lengths=(32,), n_passages=8, context=64)
    row = out["lengths"]["32"]["student"]
    assert (row["first"]["value"], row["second"]["value"], row["gain"]["value"]) == (0.0, 1.0, 1.0)
    assert row["gain"]["n"] == 8
    with pytest.raises(WavedistillError, match="too few for two passages"):
        recall.repeated_passages(models(CopyOracle()), stream[:40], ["student"], lengths=(32,), context=64)


class WordTokenizer(FakeTokenizer):
    """Whitespace words to ids (w<i> is id i, a few words of the passkey forms after them)."""

    WORDS = {w: V - 20 + i for i, w in enumerate("the pass key is . remember it what ? girl's name was once upon a "
                                                   "time , there girl named".split())}

    def __call__(self, text, add_special_tokens=True):
        words = text.replace(".", " .").replace(",", " ,").replace("?", " ?").lower().split()
        ids = [self.WORDS[w] if w in self.WORDS else int(w[1:]) if w[0] == "w" else 100 + int(w) for w in words]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def test_passkey_scores_the_stated_key_against_the_other_candidates(monkeypatch):
    monkeypatch.setattr(recall, "PASSKEY_FORMS", {"number": ("The pass key is {key}. Remember it.",
                                                             " What was the pass key? The pass key is",
                                                             [str(n) for n in range(10, 40)])})
    stream = torch.randint(2, 90, (2000,), generator=torch.Generator().manual_seed(0))  # filler: no form words
    tok = WordTokenizer()
    oracle = recall.passkey(models(CopyOracle()), tok, stream, ["student"], fillers=(0, 40), trials=12, choices=4,
                            context=80, batch_size=5)
    row = oracle["forms"]["number"]
    assert row["skipped_fillers"] == [] and oracle["chance"] == 0.25
    # "is" last occurred right before the stated key: the copy oracle always finds it
    assert all(row["fillers"][F]["student"]["value"] == 1.0 for F in ("0", "40"))
    flat = recall.passkey(models(Constant()), tok, stream, ["student"], fillers=(0,), trials=12, choices=4, context=80)
    assert flat["forms"]["number"]["fillers"]["0"]["student"]["value"] == pytest.approx(0.25)  # ties share the hit
    short = recall.passkey(models(Constant()), tok, stream, ["student"], fillers=(0, 100), trials=2, context=80)
    assert short["forms"]["number"]["skipped_fillers"] == [100]
