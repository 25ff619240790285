"""``wavedistill make-tasks``: lm-evaluation-harness tasks from the held-out documents of the user's own text.

A distiller often has only its domain corpus, and CI has no hub; these tasks need neither. Both are drawn
from one split of the run's document split (``test`` by default: the documents no run trains on or selects
with), and each file says which data file and split produced it.

* ``story_ending`` -- HellaSwag's form: the first sentences of a document as context, the true next
  sentence and ``n_choices - 1`` sentences drawn (seeded) from *other* documents as endings; lm-eval scores
  ``acc`` and ``acc_norm`` (log-likelihood per byte). Chance is ``1 / n_choices``.
* ``final_word`` -- LAMBADA's form: a passage (a document up to one of its words) whose last word occurs
  earlier in the passage; the targets are content words (3+ letters, not a function word), so the
  passage itself holds the answer. lm-eval scores the word's ``perplexity`` and ``acc`` (every token of
  the word is the greedy choice: greedy exact match). A recall test on natural text.

The folder holds ``<task>.jsonl``, ``<task>.yaml`` (``dataset_path: json`` over the local file) and
``wavedistill_tasks.json``, which records the source, the split, the counts and the tokenizer the
examples were fitted to (every example fits the model's context in its tokens), so ``lm-eval`` can
refuse a folder made for another tokenizer or from another run's training text.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re

from ..errors import WavedistillError
from ..io import write_text
from ..version import __version__

MANIFEST = "wavedistill_tasks.json"
TASKS = ("story_ending", "final_word")
TAG = "wavedistill_tasks"
# A sentence ends at . ! or ?, possibly inside a closing quote, before white space.
SENTENCE_END = re.compile(r'(?:(?<=[.!?])|(?<=[.!?]["\u201d]))\s+')
WORD = re.compile(r"[A-Za-z]+")


def sentences(document: str) -> list[str]:
    return [s for s in SENTENCE_END.split(" ".join(document.split())) if s]


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the tokenizer's vocabulary: tasks fitted to one tokenizer are refused by another."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def story_endings(docs: list[str], n_choices: int, seed: int, fits) -> list[dict]:
    """One example per sentence boundary of each document (context: the sentences before it)."""
    rng = random.Random(seed)
    per_doc = [sentences(d) for d in docs]
    pool = [(i, s) for i, ss in enumerate(per_doc) for s in ss]
    if len({i for i, _ in pool}) < 2:
        raise WavedistillError("story_ending needs sentences from at least two held-out documents; pass more text")
    examples = []
    for i, ss in enumerate(per_doc):
        for k in range(1, len(ss)):
            context, ending = " ".join(ss[:k]), ss[k]
            others: list[str] = []
            for _ in range(100 * n_choices):  # rejection sampling: other documents, other text
                j, s = pool[rng.randrange(len(pool))]
                if j != i and s != ending and s not in others:
                    others.append(s)
                if len(others) == n_choices - 1:
                    break
            if len(others) < n_choices - 1:
                continue
            endings = others + [ending]
            rng.shuffle(endings)
            if fits(context, max(endings, key=len)):
                examples.append({"doc": i, "ctx": context, "endings": endings, "label": endings.index(ending)})
    return examples


# Function words are predictable without recall; a final-word target is a content word seen before.
FUNCTION_WORDS = frozenset("""the and was were she her hers his him they them their you your with for that this
these those but had has have not are said from all one day there then than what who when where which very can could
did does out its our too into onto upon once time some any just also will would should been being after before
""".split())


def final_words(docs: list[str], fits) -> list[dict]:
    """One example per repeated content word: a document up to a word of 3+ letters (not a function word)
    that occurs earlier in the same document."""
    examples = []
    for i, doc in enumerate(docs):
        text = " ".join(doc.split())
        seen: set[str] = set()
        for match in WORD.finditer(text):
            word = match.group().lower()
            if word in seen and len(word) >= 3 and word not in FUNCTION_WORDS:
                context = text[: match.start()].rstrip()
                target = " " + match.group()
                if text[match.start() - 1: match.start()] == " " and fits(context, target):
                    examples.append({"doc": i, "context": context, "target": target})
            seen.add(word)
    return examples


YAML = {
    "story_ending": """\
# {note}
task: story_ending
tag: [{tag}]
dataset_path: json
dataset_kwargs:
  data_files: {{test: {file}}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{ctx}}}}"
doc_to_choice: "{{{{endings}}}}"
doc_to_target: label
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
metadata: {metadata}
""",
    "final_word": """\
# {note}
task: final_word
tag: [{tag}]
dataset_path: json
dataset_kwargs:
  data_files: {{test: {file}}}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{target}}}}"
target_delimiter: ""
metric_list:
  - {{metric: perplexity, aggregation: perplexity, higher_is_better: false}}
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
metadata: {metadata}
""",
}


def make_tasks(held, tokenizer, output_dir: str, model: str, max_context: int | None, n_choices: int = 4,
               seed: int = 0, max_examples: int = 0) -> dict:
    """Write both tasks for ``held`` (a :class:`wavedistill.evals.runs.HeldOut`) into ``output_dir``; the manifest.

    ``max_context``: examples whose context + longest continuation exceed it (in ``tokenizer``'s tokens,
    with its special tokens) are left out. ``max_examples`` > 0 keeps a seeded sample of that many per task.
    """
    if n_choices < 2:
        raise WavedistillError(f"--choices must be at least 2, got {n_choices}")
    if max_examples < 0:
        raise WavedistillError(f"--max-examples must be 0 (all) or more, got {max_examples}")
    check_task_folder(output_dir)
    docs = held.documents()

    def fits(context: str, continuation: str) -> bool:
        n = len(tokenizer(context + " " + continuation)["input_ids"])
        return max_context is None or n <= max_context

    examples = {"story_ending": story_endings(docs, n_choices, seed, fits), "final_word": final_words(docs, fits)}
    rng = random.Random(seed)
    for name, rows in examples.items():
        if not rows:
            raise WavedistillError(f"the {held.split} split of {held.data} ({len(docs)} documents) gives no "
                                   f"{name} example; pass more text (documents of several sentences)")
        if max_examples and len(rows) > max_examples:
            examples[name] = sorted(rng.sample(rows, max_examples), key=lambda r: r["doc"])
    manifest = {"created_by": f"wavedistill {__version__} make-tasks", "data": os.path.abspath(held.data)
                if os.path.exists(held.data) else held.data, "split": held.split, "n_samples": held.n_samples,
                "val_frac": held.val_frac, "test_frac": held.test_frac, "documents": len(docs), "model": model,
                "tokenizer": tokenizer_fingerprint(tokenizer), "max_context": max_context, "seed": seed,
                "choices": n_choices, "tasks": {k: len(v) for k, v in examples.items()}}
    os.makedirs(output_dir, exist_ok=True)
    for name, rows in examples.items():
        path = os.path.join(output_dir, f"{name}.jsonl")
        write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
        note = (f"made by `wavedistill make-tasks` from {held.describe()}: {len(rows)} examples from "
                f"{len(docs)} documents, fitted to the tokenizer of {model}")
        metadata = json.dumps({"version": 1, **{k: manifest[k] for k in ("data", "split", "documents", "model",
                                                                          "tokenizer")}})
        write_text(os.path.join(output_dir, f"{name}.yaml"),
               YAML[name].format(note=note, tag=TAG, file=json.dumps(os.path.abspath(path)), metadata=metadata))
    write_text(os.path.join(output_dir, MANIFEST), json.dumps(manifest, indent=2))
    return manifest


def check_task_folder(output_dir: str) -> None:
    """Refuse a folder that holds anything but an earlier make-tasks output (which is replaced)."""
    if not os.path.isdir(output_dir):
        if os.path.exists(output_dir):
            raise WavedistillError(f"--output-dir {output_dir!r} is a file; pass a folder")
        return
    ours = {MANIFEST, *(f"{t}.{ext}" for t in TASKS for ext in ("jsonl", "yaml"))}
    foreign = sorted(set(os.listdir(output_dir)) - ours)
    if foreign or (os.listdir(output_dir) and MANIFEST not in os.listdir(output_dir)):
        raise WavedistillError(f"{output_dir!r} holds other files ({', '.join(foreign[:3]) or 'no manifest'}); "
                               "make-tasks writes only into an empty folder or its own earlier output")


def read_manifest(folder: str) -> dict | None:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
