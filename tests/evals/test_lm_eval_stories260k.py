"""lm-eval for real on the stories260K teacher and a converted student, on a tiny task from held-out text.

The teacher's scores from ``wavedistill lm-eval`` must equal what lm-eval's own ``hf`` model gives for the
same folder, tasks and examples: the teacher here is the converted model inside ``as_teacher``, so this
also checks that the shared-base teacher is the base model exactly.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import STORIES260K, SHARED_DIR

pytest.importorskip("lm_eval")
if not (STORIES260K / "config.json").exists():
    pytest.skip("../shared/teachers/stories260K not found: this test runs in CI where ../shared exists",
                allow_module_level=True)

DATA = SHARED_DIR / "corpora" / "tinystories" / "stories.txt"
TASKS = ["story_ending", "final_word"]
LIMIT = 6


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    from wavedistill.evals.harness import run_lm_eval
    from wavedistill.evals.tasks import make_tasks
    from wavedistill.io import load_teacher, save_adapter
    from wavedistill.evals.runs import HeldOut
    from wavedistill.surgery import convert

    root = tmp_path_factory.mktemp("lm_eval_stories260k")
    model, tok = load_teacher(str(STORIES260K))
    convert(model, "learned_gate")  # the teacher-initialised student: a converted model unlike its teacher
    save_adapter(model, str(root / "student"), str(STORIES260K))
    make_tasks(HeldOut(data=str(DATA)), tok, str(root / "tasks"), model=str(STORIES260K), max_context=512,
               max_examples=40)
    out = run_lm_eval(str(root / "student"), TASKS, include_path=str(root / "tasks"), limit=LIMIT, batch_size=4,
                      with_teacher=True, with_no_mixing=True, output_dir=str(root / "results"))
    return root, out


def test_teacher_and_converted_student_both_get_scores(scored):
    root, out = scored
    head = out["headline"]
    for name in ("teacher", "no_mixing", "student"):
        assert head[name]["story_ending"]["n"] == LIMIT
        assert 0 <= head[name]["story_ending"]["acc_norm"] <= 1 and head[name]["final_word"]["perplexity"] > 1
        assert json.loads((root / "results" / f"{name}.json").read_text())["results"].keys() == set(TASKS)
        assert len((root / "results" / f"{name}_samples.jsonl").read_text().splitlines()) == 2 * LIMIT
    # the untrained student and the no-mixing baseline are not the teacher
    assert head["student"]["final_word"]["perplexity"] != head["teacher"]["final_word"]["perplexity"]
    table = (root / "results" / "table.md").read_text()
    assert "| story_ending | acc_norm ↑ | 6 |" in table and "retention" in table


def test_teacher_scores_equal_lm_evals_own_hf_model(scored):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    root, out = scored
    own = simple_evaluate(model="hf", model_args=f"pretrained={STORIES260K},dtype=float32", tasks=TASKS,
                          limit=LIMIT, batch_size=4, device="cpu",
                          task_manager=TaskManager(include_path=str(root / "tasks"), include_defaults=False))
    ours = json.loads((root / "results" / "teacher.json").read_text())["results"]
    for task in TASKS:
        for key, value in own["results"][task].items():
            if isinstance(value, float) and "stderr" not in key:
                assert ours[task][key] == pytest.approx(value, rel=1e-6), (task, key)
