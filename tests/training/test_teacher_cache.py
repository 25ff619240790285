"""The offline teacher cache: its format and training without the teacher (its loss: tests/kd/test_cached.py).

The cache: written
for the tiny teacher it round-trips (shapes, bytes per token, the teacher's own top k), a cached
distill run trains without one teacher forward in its training steps, and with k = V its first loss
is the online run's on the same windows. Bad input is a one-line error that leaves the output alone.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tests.conftest import tiny_run_config
from tests.cli.test_main import assert_one_line_error, ok, wavedistill_here
from tests.tiny_teachers import write_tiny_teacher
from wavedistill.training.teacher_cache import TeacherCache, bytes_per_token, write_cache

# ----------------------------------------------------------------------------------------------- the cache

K = 32


@pytest.fixture(scope="module")
def cache(tiny_teacher, tmp_path_factory):
    """The tiny teacher's cache at seq_len 32 and the default k, in several shards (small shard size)."""
    out = tmp_path_factory.mktemp("cache") / "c32"
    meta = write_cache(str(tiny_teacher["teacher"]), str(tiny_teacher["corpus"]), str(out), top_k=K, seq_len=32,
                       batch_size=64, shard_bytes=200 * 32 * bytes_per_token(K))
    return out, meta


def test_the_cache_round_trips_the_teachers_top_k_in_under_300_bytes_per_token(tiny_teacher, cache):
    from wavedistill.data import eval_windows, run_splits
    from wavedistill.io import load_teacher

    out, meta = cache
    assert json.loads((out / "cache.json").read_text()) == meta
    model, tokenizer = load_teacher(str(tiny_teacher["teacher"]))
    windows = eval_windows(run_splits(str(tiny_teacher["corpus"]), tokenizer).train, 32)
    assert meta["n_windows"] == len(windows) and meta["n_tokens"] == windows.numel()
    assert [s["windows"] for s in meta["shards"]] == [200, 200, len(windows) - 400]
    shard = load_file(out / "shard_00001.safetensors")
    assert {k: (v.shape, v.dtype) for k, v in shard.items()} == {
        "input_ids": ((200, 32), torch.int32), "topk_ids": ((200, 32, K), torch.int32),
        "topk_logp": ((200, 32, K), torch.float16), "rest_logp": ((200, 32), torch.float16)}
    assert bytes_per_token(K) == 198 and 198 <= meta["bytes_per_token"] <= 300
    assert meta["teacher_tokens_per_s"] > 0
    c = TeacherCache(str(out))
    rows = c.windows(torch.tensor([3, 250, len(windows) - 1]))  # windows in the first, second and last shard
    torch.testing.assert_close(rows["input_ids"], windows[[3, 250, len(windows) - 1]], rtol=0, atol=0)
    with torch.no_grad():
        logp = F.log_softmax(model(rows["input_ids"]).logits.float(), -1)
    top_logp, top_ids = logp.topk(K, dim=-1)
    torch.testing.assert_close(rows["topk_ids"], top_ids, rtol=0, atol=0)
    torch.testing.assert_close(rows["topk_logp"].float(), top_logp, rtol=2e-3, atol=2e-3)
    rest = torch.log1p(-top_logp.exp().sum(-1))
    torch.testing.assert_close(rows["rest_logp"].float(), rest, rtol=2e-3, atol=2e-3)


def test_a_cached_run_trains_without_a_teacher_forward_in_its_training_steps(tiny_teacher, cache, tmp_path,
                                                                             monkeypatch):
    import wavedistill.training.loop as loop
    from wavedistill.training.distill import run
    from wavedistill.surgery import TeacherView

    in_step, forwards = [False], {"training": 0, "scoring": 0}
    step_forward, teacher_forward = loop._Step.forward, TeacherView.forward

    def step(self, *args, **kwargs):
        in_step[0] = True
        try:
            return step_forward(self, *args, **kwargs)
        finally:
            in_step[0] = False

    def teacher(self, *args, **kwargs):
        forwards["training" if in_step[0] else "scoring"] += 1
        return teacher_forward(self, *args, **kwargs)

    monkeypatch.setattr(loop._Step, "forward", step)
    monkeypatch.setattr(TeacherView, "forward", teacher)
    out = tmp_path / "cached"
    metrics = run(tiny_run_config(tiny_teacher, out, teacher_cache=str(cache[0]), eval_every=5,
                                  stages=[{"kind": "kd", "steps": 10, "kl_weight": 1.0, "ce_weight": 0.0}]))
    assert forwards["training"] == 0 and forwards["scoring"] > 0  # val and test are still scored on the teacher
    for name in ("adapter/adapter_model.safetensors", "checkpoint", "config.yaml", "metrics.json", "samples.md"):
        assert (out / name).exists(), name
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 10 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    assert metrics["tokens_seen"] == 10 * 4 * 32 and math.isfinite(metrics["kl"])


def test_with_every_token_cached_a_run_starts_with_the_loss_of_the_online_run_on_the_same_windows(tiny_teacher,
                                                                                                 tmp_path):
    from wavedistill.training.distill import run
    from wavedistill.io import load_teacher

    vocab = load_teacher(str(tiny_teacher["teacher"]))[0].config.vocab_size
    write_cache(str(tiny_teacher["teacher"]), str(tiny_teacher["corpus"]), str(tmp_path / "full"), top_k=vocab,
                seq_len=32, batch_size=64)
    first = {}
    for name, changes in {"online": {"train_windows": "fixed"}, "cached": {"teacher_cache": str(tmp_path / "full")}
                          }.items():
        out = tmp_path / name
        run(tiny_run_config(tiny_teacher, out, stages=[{"kind": "kd", "steps": 2, "kl_weight": 0.5, "ce_weight": 0.5}],
                            n_generations=0,
                            val_windows=1, test_windows=1, **changes))
        first[name] = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()
                       if '"loss"' in line]
    for a, b in zip(first["online"], first["cached"]):  # float16 targets: equal to a few parts in 10,000
        assert b["ce"] == pytest.approx(a["ce"], rel=1e-4) and b["kl"] == pytest.approx(a["kl"], rel=1e-2, abs=1e-4)


# ------------------------------------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def other_caches(tiny_teacher, tmp_path_factory):
    """Caches a run on the tiny teacher at seq_len 32 must refuse: another teacher, another seq_len, fewer documents."""
    root = tmp_path_factory.mktemp("other")
    other = write_tiny_teacher(root / "teacher_seed1", tiny_teacher["corpus"], seed=1)
    common = ["--data", tiny_teacher["corpus"], "--batch-size", 64]
    proc = ok(wavedistill_here("cache-teacher", "--teacher", other, "--output-dir", root / "other_teacher",
                               "--seq-len", 32, *common))
    assert "bytes per token" in proc.stdout and "tokens/s" in proc.stdout
    ok(wavedistill_here("cache-teacher", "--teacher", tiny_teacher["teacher"], "--output-dir", root / "seq16",
                        "--seq-len", 16, *common))
    ok(wavedistill_here("cache-teacher", "--teacher", tiny_teacher["teacher"], "--output-dir", root / "short",
                        "--seq-len", 32, "--n-samples", 100, *common))
    return root


BAD = {
    "another-teacher": (lambda c, o: [o / "other_teacher"], [], ["was written with teacher", "fingerprint"]),
    "another-seq-len": (lambda c, o: [o / "seq16"], [], ["windows of 16 tokens", "--seq-len 32"]),
    "shorter-than-the-run": (lambda c, o: [o / "short"], [], ["shorter than the run", "--n-samples"]),
    "transfer-stage": (lambda c, o: [c], ["--stages", "transfer:2,kd:2"], ["stage 0 (transfer)", "teacher cache"]),
    "fit-stage": (lambda c, o: [c], ["--stages", "fit,kd:2"], ["stage 0 (fit)"]),
    "temperature": (lambda c, o: [c], ["--temperature", 2.0], ["stage 0 (kd)", "temperature 2.0"]),
    "not-a-cache": (lambda c, o: [o], [], ["not a teacher cache"]),
}


@pytest.mark.parametrize("case", BAD)
def test_a_cache_that_does_not_fit_the_run_is_a_one_line_error_and_the_output_is_untouched(
        tiny_teacher, cache, other_caches, tmp_path, case):
    where, flags, needles = BAD[case]
    out = tmp_path / "run"
    proc = wavedistill_here("distill", "--teacher", tiny_teacher["teacher"], "--data", tiny_teacher["corpus"],
                            "--output-dir", out, "--seq-len", 32, "--batch-size", 4,
                            *([] if "--stages" in flags else ["--max-steps", 2]),
                            "--teacher-cache", *where(cache[0], other_caches), *flags)
    assert_one_line_error(proc, *needles)
    assert not out.exists()  # a run that fails before its first checkpoint leaves nothing


def test_cache_teacher_refuses_a_folder_that_is_not_empty(tiny_teacher, cache, tmp_path):
    before = sorted(p.name for p in cache[0].iterdir())
    proc = wavedistill_here("cache-teacher", "--teacher", tiny_teacher["teacher"], "--data", tiny_teacher["corpus"],
                            "--output-dir", cache[0], "--seq-len", 32)
    assert_one_line_error(proc, "already holds a `wavedistill cache-teacher` run", "--overwrite")
    assert sorted(p.name for p in cache[0].iterdir()) == before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    proc = wavedistill_here("cache-teacher", "--teacher", tiny_teacher["teacher"], "--data", tiny_teacher["corpus"],
                            "--output-dir", notes, "--seq-len", 32)
    assert_one_line_error(proc, "did not write (notes.txt)", "--overwrite")
    assert (notes / "notes.txt").read_text() == "mine"


def test_a_damaged_shard_or_cache_json_is_a_one_line_error(tiny_teacher, cache, tmp_path):
    import shutil

    from wavedistill.errors import WavedistillError
    from wavedistill.training.teacher_cache import CACHE_JSON, TeacherCache

    damaged = tmp_path / "damaged"
    shutil.copytree(cache[0], damaged)
    shard = sorted(damaged.glob("shard_*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-100:] = bytes(100)  # same size, other content: shapes still read fine
    shard.write_bytes(bytes(data))
    with pytest.raises(WavedistillError, match=f"shard {shard.name} does not match the checksum"):
        TeacherCache(str(damaged))
    meta = json.loads((cache[0] / CACHE_JSON).read_text())
    (damaged / CACHE_JSON).write_text(json.dumps({k: v for k, v in meta.items() if k != "seq_len"}))
    with pytest.raises(WavedistillError, match="lacks seq_len"):
        TeacherCache(str(damaged))


def test_an_interrupted_cache_teacher_leaves_nothing(tiny_teacher, tmp_path):
    out = tmp_path / "cache"
    proc = wavedistill_here("cache-teacher", "--teacher", tiny_teacher["teacher"], "--data", tiny_teacher["corpus"],
                            "--output-dir", out, "--seq-len", 32, "--top-k", 100000)
    assert_one_line_error(proc, "exceeds the teacher's vocabulary")
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing beside it either


def test_progressive_and_handoff_train_from_the_cache_too(tiny_teacher, cache, tmp_path):
    from wavedistill.training.distill import run

    metrics = run(tiny_run_config(tiny_teacher, tmp_path / "run", teacher_cache=str(cache[0]), val_windows=2,
                                  stages=[{"kind": "progressive", "order": "easiest_first", "steps_per_swap": 1},
                                          {"kind": "handoff", "steps": 2}]))
    assert metrics["recipe"] == ["progressive", "handoff"] and metrics["steps"] == 4 and math.isfinite(metrics["kl"])


def test_a_hidden_state_loss_with_a_cache_is_refused_before_anything_is_written(tiny_teacher, cache, tmp_path):
    from wavedistill.training.distill import run
    from wavedistill.errors import WavedistillError

    with pytest.raises(WavedistillError, match=r"stage 1 \(kd\) has hidden_weight 0.5"):
        run(tiny_run_config(tiny_teacher, tmp_path / "run", teacher_cache=str(cache[0]),
                            stages=[{"kind": "kd", "steps": 1}, {"kind": "kd", "steps": 1, "hidden_weight": 0.5}]))
    assert not (tmp_path / "run").exists()
