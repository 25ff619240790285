"""The lm-eval wrapper's own logic: limits, task names, paired differences, the table, missing lm-eval."""

from __future__ import annotations

import math
import sys

import pytest

from wavedistill.errors import WavedistillError
from wavedistill.evals import harness
from wavedistill.evals.tasks import make_tasks
from wavedistill.evals.runs import HeldOut


def test_limit_zero_or_negative_is_refused_not_read_as_all():
    assert harness.check_limit(None) is None
    assert harness.check_limit(5.0) == 5 and isinstance(harness.check_limit(5.0), int)
    assert harness.check_limit(0.25) == 0.25
    for bad in (0, -3):
        with pytest.raises(WavedistillError, match="--limit"):
            harness.check_limit(bad)


def test_missing_lm_eval_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    with pytest.raises(WavedistillError, match=r'pip install -e "\.\[eval\]"'):
        harness.require_lm_eval()
    with pytest.raises(WavedistillError, match="lm-eval is not installed"):
        harness.run_lm_eval("no/such/run", ["story_ending"])


@pytest.fixture(scope="module")
def task_dir(tiny_teacher, tmp_path_factory):
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("harness") / "tasks"
    tok = AutoTokenizer.from_pretrained(tiny_teacher["teacher"])
    make_tasks(HeldOut(data=str(tiny_teacher["corpus"])), tok, str(out), model="tiny", max_context=128)
    return out, tok


def test_unknown_task_lists_the_local_ones_and_names_hub_tasks(task_dir):
    pytest.importorskip("lm_eval")
    out, _ = task_dir
    manager = harness.task_manager(str(out), ["story_ending"])
    assert harness.local_tasks(manager, str(out)) == ["final_word", "story_ending"]
    harness.check_tasks(["story_ending", "final_word"], manager, str(out))
    with pytest.raises(WavedistillError, match="'stroy_ending'.*final_word, story_ending.*hellaswag"):
        harness.check_tasks(["stroy_ending"], manager, str(out))


def test_task_folder_of_another_tokenizer_or_the_runs_training_text_is_refused(task_dir, tiny_teacher):
    out, tok = task_dir
    harness.check_task_folder(str(out), tok, "tiny", None)

    class Other:
        def get_vocab(self):
            return {"a": 0}

    with pytest.raises(WavedistillError, match="made for the tokenizer of tiny"):
        harness.check_task_folder(str(out), Other(), "other", None)
    run = {"data": str(tiny_teacher["corpus"]), "val_frac": 0.05, "test_frac": 0.2, "n_samples": 0}
    with pytest.raises(WavedistillError, match="may hold its training text"):
        harness.check_task_folder(str(out), tok, "run", run)
    harness.check_task_folder(str(out), tok, "run", {**run, "test_frac": 0.10})


def test_paired_difference_is_the_mean_and_se_of_per_example_differences():
    teacher = [{"doc_id": i, "acc": a} for i, a in enumerate([1, 0, 1, 1, 0])]
    student = [{"doc_id": i, "acc": a} for i, a in enumerate([1, 1, 0, 0, 0])]
    mean, se, n = harness.paired_difference(teacher, student, "acc")
    diffs = [0, 1, -1, -1, 0]
    sd = math.sqrt(sum((d + 0.2) ** 2 for d in diffs) / 4)
    assert (n, mean, se) == (5, pytest.approx(-0.2), pytest.approx(sd / math.sqrt(5)))


def result(acc: float, ppl: float) -> dict:
    return {"results": {"story_ending": {"acc,none": acc, "acc_stderr,none": 0.01, "alias": "story_ending"},
                        "final_word": {"perplexity,none": ppl, "perplexity_stderr,none": 2.0}},
            "higher_is_better": {"story_ending": {"acc": True}, "final_word": {"perplexity": False}},
            "n-samples": {"story_ending": {"effective": 4}, "final_word": {"effective": 4}},
            "configs": {"story_ending": {"metric_list": [{"metric": "acc", "aggregation": "mean"}]},
                        "final_word": {"metric_list": [{"metric": "perplexity", "aggregation": "perplexity"}]}}}


def test_table_has_every_model_retention_and_the_paired_difference():
    samples = {"teacher": {"story_ending": [{"doc_id": i, "acc": 1.0} for i in range(4)]},
               "student": {"story_ending": [{"doc_id": i, "acc": float(i % 2)} for i in range(4)]}}
    table = harness.table_markdown({"teacher": result(0.8, 10.0), "no_mixing": result(0.3, 99.0),
                                    "student": result(0.6, 12.0)}, samples)
    lines = table.splitlines()
    assert lines[0] == ("| task | metric | n | teacher | no mixing | student | retention (student / teacher) | "
                        "student − teacher (paired) |")
    assert "| story_ending | acc ↑ | 4 | 0.8000 ± 0.0100 | 0.3000 ± 0.0100 | 0.6000 ± 0.0100 | 0.750 | " \
           "-0.5000 ± 0.2887 |" in lines
    assert "| final_word | perplexity ↓ | 4 | 10.0000 ± 2.0000 | 99.0000 ± 2.0000 | 12.0000 ± 2.0000 | 1.200 | — |" \
        in lines
