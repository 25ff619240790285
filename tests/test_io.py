"""Adapters: what is saved, that a fresh process rebuilds the same student, and what is refused.

The round trip is checked in a *fresh Python process*: loading must work from the folder alone
(config + weights + base model), not from state left in the process that saved it.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny_teachers import write_tiny_corpus, write_tiny_teacher
from wavedistill.errors import AdapterError
from wavedistill.io import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_student, load_teacher, save_adapter
from wavedistill.mixers import list_mixers
from wavedistill.surgery import convert, decoder_layers, mixer_state_dict

# name -> (mixer, [(layers, mixer kwargs), ...] converted in that order, unfreeze MLPs)
CASES = {
    **{m: (m, [(None, {})], False) for m in list_mixers()},
    # Different kwargs per layer: the adapter must record and rebuild each layer's own.
    "frequency_band-per-layer": ("frequency_band", [([0], {"window": 4}), ([1], {"window": 8})], False),
    # One converted layer plus trainable MLPs everywhere (what `distill --unfreeze-mlps` does).
    "learned_gate-mlps": ("learned_gate", [([1], {})], True),
}

# Loads each adapter in a new interpreter and saves its logits on the given ids.
FRESH_SCRIPT = """
import sys, torch
from wavedistill.io import load_student
ids = torch.load(sys.argv[1])
for adapter, out in zip(sys.argv[2::2], sys.argv[3::2]):
    model, _ = load_student(adapter)
    with torch.no_grad():
        torch.save(model(ids, use_cache=False).logits, out)
"""


def jitter(params, seed: int = 0, scale: float = 0.1) -> None:
    # Move every trainable tensor off its initial value: an adapter whose weights were silently
    # not loaded would otherwise still reproduce teacher-initialised (or zero-initialised) mixers.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def make_student(teacher, case: str):
    mixer, steps, unfreeze = CASES[case]
    student = copy.deepcopy(teacher)
    for layers, kw in steps:
        convert(student, mixer, layers=layers, **kw)
    if unfreeze:
        for block in decoder_layers(student):
            block.mlp.requires_grad_(True)
    jitter([p for p in student.parameters() if p.requires_grad])
    return student.eval()


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("io")
    corpus = write_tiny_corpus(root / "stories.txt", n_stories=50)
    return {"root": root, "teacher": write_tiny_teacher(root / "teacher", corpus, seed=0),
            # Same config, another random init: a different base the adapter must refuse.
            "other": write_tiny_teacher(root / "other", corpus, seed=1)}


@pytest.fixture(scope="module")
def saved(bases):
    """Every case saved as an adapter, its in-memory logits, and the logits a fresh process gets."""
    root = bases["root"]
    teacher, tokenizer = load_teacher(str(bases["teacher"]))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(tokenizer), (2, 20), generator=g)  # no special tokens
    torch.save(ids, root / "ids.pt")
    with torch.no_grad():
        teacher_logits = teacher(ids, use_cache=False).logits
    out, argv = {}, []
    for case in CASES:
        student = make_student(teacher, case)
        adapter = root / "adapters" / case
        save_adapter(student, str(adapter), base_model=str(bases["teacher"]))
        with torch.no_grad():
            logits = student(ids, use_cache=False).logits
        out[case] = {"student": student, "adapter": adapter, "logits": logits, "fresh": root / f"{case}.pt"}
        argv += [str(adapter), str(root / f"{case}.pt")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", FRESH_SCRIPT, str(root / "ids.pt"), *argv], check=False, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"cases": out, "ids": ids, "teacher_logits": teacher_logits}


@pytest.mark.parametrize("case", list(CASES))
def test_fresh_process_reproduces_the_student_logits(saved, case):
    c = saved["cases"][case]
    fresh = torch.load(c["fresh"])
    delta = (fresh - c["logits"]).abs().max().item()
    assert delta <= 1e-6, f"{case}: max |delta logits| = {delta:.3e} after save_adapter -> load_student"
    # The mixers must matter, or equal logits would say nothing about the loaded weights.
    assert (c["logits"] - saved["teacher_logits"]).abs().max().item() > 1e-3


@pytest.mark.parametrize("case", list(CASES))
def test_adapter_holds_only_mixer_and_unfrozen_weights(saved, case):
    c = saved["cases"][case]
    student = c["student"]
    weights = load_file(os.path.join(c["adapter"], ADAPTER_WEIGHTS))
    expected = set(mixer_state_dict(student))
    if CASES[case][2]:
        expected |= {n for n, p in student.get_decoder().named_parameters() if ".mlp." in n}
        assert any(".mlp." in k for k in expected)
    assert set(weights) == expected
    # Nothing of the frozen teacher: embeddings, norms, the kept attention (base_attn), q/k/v/o.
    assert not [k for k in weights if "embed" in k or "base_attn" in k or "lm_head" in k
                or (".mixer." not in k and ".mlp." not in k)]
    decoder = student.get_decoder().state_dict()
    for k, v in weights.items():
        torch.testing.assert_close(v, decoder[k], rtol=0, atol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_adapter_config_names_base_layers_mixer_and_kwargs(saved, bases, case):
    c = saved["cases"][case]
    with open(os.path.join(c["adapter"], ADAPTER_CONFIG)) as f:
        config = json.load(f)
    student = c["student"]
    assert config["base_model"] == str(bases["teacher"])
    assert config["base_model_type"] == "qwen3"
    assert config["mixer"] == CASES[case][0]
    assert config["layers"] == student.wavedistill_config["layers"]
    assert config["layer_kwargs"] == json.loads(json.dumps(student.wavedistill_config["layer_kwargs"]))
    assert config["unfrozen"] == (["mlp"] if CASES[case][2] else [])
    if case == "frequency_band-per-layer":
        assert config["layers"] == [0, 1]
        assert config["layer_kwargs"]["0"]["window"] == 4 and config["layer_kwargs"]["1"]["window"] == 8
    if case == "learned_gate-mlps":
        assert config["layers"] == [1] and list(config["layer_kwargs"]) == ["1"]


@pytest.fixture
def adapter_copy(saved, tmp_path):
    """A writable copy of one saved adapter, to damage."""
    dst = tmp_path / "adapter"
    shutil.copytree(saved["cases"]["learned_gate"]["adapter"], dst)
    return dst


@pytest.mark.parametrize("checksums", [True, False], ids=["with-checksums", "written-before-checksums"])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_corrupt_adapter_weights_are_an_adapter_error_naming_the_file(adapter_copy, damage, checksums):
    path = adapter_copy / ADAPTER_WEIGHTS
    if not checksums:
        (adapter_copy / "checksums.json").unlink()
    if damage == "garbage":
        path.write_bytes(b"\x00\x01 not a safetensors file " * 10)
    elif damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()
    with pytest.raises(AdapterError, match=ADAPTER_WEIGHTS if checksums or damage == "missing" else
                       "corrupt or unreadable"):
        load_student(str(adapter_copy))


def test_adapter_on_a_different_base_is_refused_by_fingerprint(saved, bases):
    adapter = saved["cases"]["learned_gate"]["adapter"]
    with pytest.raises(AdapterError, match="fingerprint"):
        load_student(str(adapter), base=str(bases["other"]))


def test_missing_adapter_config_is_an_adapter_error(adapter_copy):
    (adapter_copy / ADAPTER_CONFIG).unlink()
    with pytest.raises(AdapterError, match=ADAPTER_CONFIG):
        load_student(str(adapter_copy))


def test_adapter_with_a_missing_mixer_tensor_is_refused(adapter_copy):
    from safetensors.torch import save_file

    weights = load_file(adapter_copy / ADAPTER_WEIGHTS)
    weights.pop(min(weights))
    save_file(weights, adapter_copy / ADAPTER_WEIGHTS)
    (adapter_copy / "checksums.json").unlink()  # a well-formed file with the wrong content, as if written by hand
    with pytest.raises(AdapterError, match="missing"):
        load_student(str(adapter_copy))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_same_base_loaded_in_another_dtype_is_accepted(saved, dtype):
    # Distilling in one dtype and evaluating in another (`distill --dtype bfloat16`, then `eval`
    # at the default float32, or the reverse) is the same base model and must load.
    c = saved["cases"]["learned_gate"]
    model, _ = load_student(str(c["adapter"]), dtype=dtype)
    with torch.no_grad():
        logits = model(saved["ids"], use_cache=False).logits.float()
    # Half precision keeps ~3 significant digits; the point is that the mixers are loaded, not exactness.
    assert (logits - c["logits"]).abs().max().item() < 0.1 * c["logits"].abs().max().item()
