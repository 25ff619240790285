"""make-tasks: lm-eval tasks drawn from the held-out documents only, in lm-eval's own formats."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from wavedistill.data import read_documents, split_texts
from wavedistill.errors import WavedistillError
from wavedistill.evals.tasks import MANIFEST, final_words, make_tasks, sentences, story_endings
from wavedistill.evals.runs import HeldOut


@pytest.fixture(scope="module")
def made(tiny_teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks") / "tasks"
    held = HeldOut(data=str(tiny_teacher["corpus"]))
    tok = AutoTokenizer.from_pretrained(tiny_teacher["teacher"])
    manifest = make_tasks(held, tok, str(out), model="tiny", max_context=128, seed=3)
    rows = {t: [json.loads(line) for line in (out / f"{t}.jsonl").read_text().splitlines()] for t in manifest["tasks"]}
    return held, tok, out, manifest, rows


def test_sentences_split_at_end_punctuation_and_quotes():
    assert sentences('She said "Hi!" Then he left.  The end.') == ['She said "Hi!"', "Then he left.", "The end."]


def test_examples_come_from_the_test_documents_only(made):
    held, _, _, manifest, rows = made
    docs = read_documents(held.data)
    train, val, test = split_texts(docs, held.val_frac, held.test_frac)
    assert manifest["documents"] == len(test) and manifest["split"] == "test"
    normalised = [" ".join(d.split()) for d in test]
    for r in rows["story_ending"]:
        assert normalised[r["doc"]].startswith(r["ctx"] + " " + r["endings"][r["label"]])
    for r in rows["final_word"]:
        assert normalised[r["doc"]].startswith(r["context"] + r["target"])


def test_story_endings_hold_the_true_next_sentence_and_distractors_from_other_documents():
    docs = ["A one. A two. A three.", "B one. B two.", "C one. C two. C three."]
    rows = story_endings(docs, n_choices=3, seed=0, fits=lambda c, e: True)
    assert len(rows) == 2 + 1 + 2  # one per sentence boundary
    for r in rows:
        letter = docs[r["doc"]][0]
        assert len(r["endings"]) == 3 and len(set(r["endings"])) == 3
        assert r["endings"][r["label"]].startswith(letter)
        assert all(not e.startswith(letter) for i, e in enumerate(r["endings"]) if i != r["label"])
    assert rows == story_endings(docs, n_choices=3, seed=0, fits=lambda c, e: True)  # seeded
    assert story_endings(docs, 3, 0, fits=lambda c, e: len(c) < 3) == []  # nothing over the context


def test_final_words_are_repeated_content_words():
    rows = final_words(["The cat saw the dog. The dog ran to the cat and the dog slept."], fits=lambda c, t: True)
    assert [r["target"] for r in rows] == [" dog", " cat", " dog"]  # "the" is a function word: never a target
    for r in rows:
        assert r["target"].strip().lower() in r["context"].lower()


def test_task_folder_loads_in_lm_eval_and_records_its_source(made):
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    held, tok, out, manifest, rows = made
    assert json.loads((out / MANIFEST).read_text()) == manifest
    assert manifest["tasks"] == {k: len(v) for k, v in rows.items()} and all(manifest["tasks"].values())
    assert held.data in (out / "story_ending.yaml").read_text()  # the YAML says which file and split
    tasks = TaskManager(include_path=str(out), include_defaults=False).load(["story_ending", "final_word"])["tasks"]
    docs = list(tasks["story_ending"].test_docs())
    assert len(docs) == manifest["tasks"]["story_ending"] and docs[0]["endings"][docs[0]["label"]]


def test_refuses_a_folder_with_other_files_and_a_split_without_sentences(tiny_teacher, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_teacher["teacher"])
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(WavedistillError, match="holds other files"):
        make_tasks(HeldOut(data=str(tiny_teacher["corpus"])), tok, str(tmp_path), "tiny", 128)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    one = tmp_path / "one.txt"
    one.write_text("\n\n".join(["only one sentence here"] * 30))
    with pytest.raises(WavedistillError, match="no story_ending example"):
        make_tasks(HeldOut(data=str(one)), tok, str(tmp_path / "new"), "tiny", 128)
    assert not (tmp_path / "new").exists()
