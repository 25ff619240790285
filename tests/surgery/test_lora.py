"""LoRA recovery on the MLPs: what trains, what an adapter holds, and merged == unmerged."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from wavedistill.training.distill import trainable_counts
from wavedistill.io import ADAPTER_WEIGHTS, load_student, load_teacher, save_adapter
from wavedistill.surgery.lora import add_mlp_lora, lora_parameters, merge_mlp_lora
from wavedistill.surgery import convert, mixer_parameters


@pytest.fixture(scope="module")
def base(tiny_teacher):
    teacher, tok = load_teacher(str(tiny_teacher["teacher"]))
    ids = torch.randint(3, len(tok), (2, 20), generator=torch.Generator().manual_seed(0))
    return teacher, ids


def lora_student(teacher, r: int = 2):
    student = copy.deepcopy(teacher)
    convert(student, "learned_gate")
    add_mlp_lora(student, r, 2.0 * r)
    with torch.no_grad():  # LoRA B starts at zero (a no-op); move it so the update matters
        for p in lora_parameters(student).values():
            p.add_(0.2 * torch.randn_like(p))
    return student.eval()


def test_only_mixers_and_lora_train_and_counts_say_so(base):
    teacher, _ = base
    student = lora_student(teacher)
    trainable = {n for n, p in student.get_decoder().named_parameters() if p.requires_grad}
    assert trainable == set(lora_parameters(student)) | {n for n, p in student.get_decoder().named_parameters()
                                                         if ".mixer." in n}
    counts = trainable_counts(student)
    assert counts["lora"] == sum(p.numel() for p in lora_parameters(student).values()) > 0
    assert counts["mixers"] == sum(p.numel() for p in mixer_parameters(student))
    assert counts["mlp"] == counts["attention"] == counts["embeddings"] == counts["norms"] == 0
    # rank 2 on 2 layers x 3 projections of a 32 -> 64 (and 64 -> 32) MLP: 6 x 2 x (32 + 64)
    assert counts["lora"] == 6 * 2 * (32 + 64)


def test_kept_lora_round_trips_through_an_adapter(base, tmp_path):
    teacher, ids = base
    student = lora_student(teacher)
    save_adapter(student, str(tmp_path / "a"), base_model=str(teacher.name_or_path))
    weights = load_file(tmp_path / "a" / ADAPTER_WEIGHTS)
    assert {k for k in weights if ".lora_" in k} == set(lora_parameters(student))
    assert not [k for k in weights if "base_layer" in k]  # the frozen MLP weights stay in the base
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["lora"]["r"] == 2 and config["unfrozen"] == []
    loaded, _ = load_student(str(tmp_path / "a"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, use_cache=False).logits, student(ids, use_cache=False).logits,
                                   rtol=0, atol=1e-6)


def test_merged_lora_gives_the_same_student_and_an_adapter_without_lora(base, tmp_path):
    teacher, ids = base
    student = lora_student(teacher)
    with torch.no_grad():
        before = student(ids, use_cache=False).logits
        merged = merge_mlp_lora(student)
        after = student(ids, use_cache=False).logits
    assert len(merged) == 6 and not lora_parameters(student)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    with torch.no_grad():  # the merge really changed the MLP weights
        assert not torch.equal(student.model.layers[0].mlp.up_proj.weight, teacher.model.layers[0].mlp.up_proj.weight)
    save_adapter(student, str(tmp_path / "m"), base_model=str(teacher.name_or_path))
    weights = load_file(tmp_path / "m" / ADAPTER_WEIGHTS)
    config = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert config["lora"] is None and config["unfrozen"] == ["mlp"]
    assert set(merged) <= set(weights) and not [k for k in weights if ".lora_" in k]
    loaded, _ = load_student(str(tmp_path / "m"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, use_cache=False).logits, after, rtol=0, atol=1e-6)


def test_a_lora_run_records_its_groups_and_merges_on_request(tiny_teacher, tmp_path):
    from tests.conftest import tiny_run_config
    from wavedistill.training.distill import run

    metrics = run(tiny_run_config(tiny_teacher, tmp_path / "run", lora_mlp=2, lora_merge=True,
                                  stages=[{"kind": "transfer", "steps": 2}, {"kind": "kd", "steps": 3}]))
    assert metrics["lora"] == {"r": 2, "merged": True}
    assert metrics["trainable_params"]["lora"] == 6 * 2 * (32 + 64)
    assert metrics["stages"][0]["trainable_params"]["lora"] == 0  # transfer trains the mixers only
    assert metrics["stages"][1]["trainable_params"]["lora"] > 0
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert config["lora"] is None and config["unfrozen"] == ["mlp"]
