"""A finished run as the evaluation commands read it: its settings, its held-out text, and its models.

``eval``, ``lm-eval`` and ``make-tasks`` take a run folder (with ``adapter/`` and ``config.yaml``), a bare
adapter folder, or -- where it makes sense -- a plain Hugging Face model. They all score the run's own
held-out split: the documents, ``n_samples``, ``val_frac`` / ``test_frac`` and ``seq_len`` of its
``config.yaml`` unless told otherwise, so no evaluation can drift onto the text the student trained on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import torch
import yaml
from torch import nn

from ..core.run_folder import check_not_file, contents, read_manifest
from ..data import run_documents, split_texts, tokenize_documents
from ..errors import WavedistillError
from ..io import ADAPTER_CONFIG, adapter_dir, apply_adapter, load_teacher, read_adapter_config, student_and_teacher
from ..surgery import wave_attention_modules
from ..training.config import DistillConfig, recipe_stages, record_config, upgraded
from ..training.student import shared_vocab

SPLITS = ("test", "val", "all")


def read_run_config(path: str) -> dict | None:
    """The run's ``config.yaml`` as a dict; None for a bare adapter folder or a model."""
    config = os.path.join(path, "config.yaml")
    if not os.path.isfile(config):
        return None
    with open(config) as f:
        return upgraded(yaml.safe_load(f) or {})  # in today's keys, whichever version wrote it


def is_student(path: str) -> bool:
    """Is ``path`` a run folder or an adapter folder (rather than a plain model)?"""
    return os.path.isfile(os.path.join(adapter_dir(path), ADAPTER_CONFIG))


@dataclass
class HeldOut:
    """Which text an evaluation scores: the ``split`` of ``data``'s documents as a run splits them."""

    data: str
    split: str = "test"
    n_samples: int = 0
    val_frac: float = DistillConfig.val_frac
    test_frac: float = DistillConfig.test_frac
    seq_len: int = DistillConfig.seq_len

    def describe(self) -> str:
        return (f"the {self.split} split of {self.data} (documents split {1 - self.val_frac - self.test_frac:.2f} / "
                f"{self.val_frac:.2f} / {self.test_frac:.2f}{f', first {self.n_samples}' if self.n_samples else ''})")

    def documents(self) -> list[str]:
        docs = run_documents(self.data, self.n_samples)
        if self.split == "all":
            return docs
        train, val, test = split_texts(docs, self.val_frac, self.test_frac)
        return {"val": val, "test": test}[self.split]

    def stream(self, tokenizer) -> torch.Tensor:
        """The split's token ids, one stream with each document's BOS (as training saw them)."""
        return tokenize_documents(self.documents(), tokenizer)


def held_out(run: str | None, data: str | None = None, split: str = "test", **given) -> HeldOut:
    """The held-out text of ``run``: every setting not ``given`` (None) from its config.yaml, else the defaults.

    ``n_samples`` comes from the run only when ``data`` is the run's data, so the split is the run's split.
    """
    if split not in SPLITS:
        raise WavedistillError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    trained = (read_run_config(run) if run else None) or {}
    data = data or trained.get("data")
    if not data:
        raise WavedistillError("no --data given and no run config.yaml to take it from; pass --data FILE")
    settings = {k: v for k, v in given.items() if v is not None}
    for key in ("val_frac", "test_frac", "seq_len"):
        if key not in settings and key in trained:
            settings[key] = trained[key]
    if "n_samples" not in settings and data == trained.get("data"):
        settings["n_samples"] = trained.get("n_samples", 0)
    unknown = set(settings) - {f.name for f in dataclasses.fields(HeldOut)}
    if unknown:
        raise TypeError(f"unknown held-out settings {sorted(unknown)}")
    return HeldOut(data=data, split=split, **settings)


@dataclass
class RunModels:
    """A student and its teacher, loaded for scoring. ``vocab``: the logit rows they share (a separate
    student with another padded vocabulary), else None."""

    student: nn.Module
    teacher: nn.Module
    tokenizer: object
    adapter_config: dict
    vocab: int | None = None


def load_run_models(path: str, base: str | None = None, teacher: str | None = None,
                    dtype: torch.dtype = torch.float32, device: str = "cpu",
                    mixer_attrs: dict | None = None) -> RunModels:
    """The student of a run (or adapter) folder and its teacher, in eval mode.

    A converted student and its teacher share one copy of the base (the teacher is a view of it); a separate
    student's teacher is loaded beside it (``teacher`` overrides the one its adapter names).
    """
    adapter = adapter_dir(path)
    config = read_adapter_config(adapter)
    if teacher and not config.get("teacher_model"):
        raise WavedistillError(f"--teacher is for a separate student; {path!r} converts its base in place, so its "
                               "teacher is that base (pass it with --base)")
    model, tokenizer = load_teacher(base or config["base_model"], dtype=dtype, device=device)
    vocab = None
    if config.get("teacher_model"):  # a separate student: its base is its own initial state, not the teacher
        student = apply_adapter(model, adapter)
        teacher_model, teacher_tokenizer = load_teacher(teacher or config["teacher_model"], dtype=dtype,
                                                        device=device)
        rows_t, rows_s = teacher_model.config.vocab_size, student.config.vocab_size
        vocab = shared_vocab(teacher_tokenizer, tokenizer, rows_t, rows_s) if rows_t != rows_s else None
    else:
        student, teacher_model = student_and_teacher(model, adapter)
    student.eval()
    if mixer_attrs:
        set_mixer_attrs(student, mixer_attrs)
    return RunModels(student, teacher_model, tokenizer, config, vocab)


def teacher_name(path: str) -> str:
    """The model a student run was distilled from (its adapter's teacher, else its base)."""
    config = read_adapter_config(adapter_dir(path))
    return config.get("teacher_model") or config["base_model"]


def set_mixer_attrs(model: nn.Module, attrs: dict) -> None:
    """Set attributes on every converted layer's mixer (branch switches of a hybrid, for ablations)."""
    for i, m in wave_attention_modules(model).items():
        for name, value in attrs.items():
            if not hasattr(m.mixer, name) or callable(getattr(m.mixer, name)):
                raise WavedistillError(f"--mixer-attrs: the {m.mixer.name} mixer of layer {i} has no setting {name!r}")
            setattr(m.mixer, name, value)


def eval_destination(student: str, output_dir: str | None, mixer_attrs: dict | None) -> tuple[str, str]:
    """(folder, file prefix) for ``eval``'s metrics.json / samples.md, compared as resolved paths, never strings.

    Next to its own student the files are ``eval_*`` (the run's own metrics.json stays); elsewhere the folder is the
    eval's own (its manifest is written with the results): a folder holding another run, another student's eval or
    foreign files is refused in one line.
    """
    out = output_dir or student
    if os.path.realpath(out) == os.path.realpath(student):
        return out, "eval_"
    check_not_file(out)
    manifest, present = read_manifest(out), set(contents(out))
    identity = eval_identity(student, mixer_attrs)
    if manifest.get("command", "eval") != "eval" or (not manifest and present & {"config.yaml", "adapter",
                                                                                  "checkpoint", "metrics.json"}):
        raise WavedistillError(f"--output-dir {out!r} holds another run; eval writes next to its own student "
                               f"({os.path.join(student, 'eval_metrics.json')}) without --output-dir, or into a new "
                               "--output-dir")
    if manifest and manifest.get("settings") != identity:
        raise WavedistillError(f"--output-dir {out!r} holds the eval of {manifest.get('settings', {}).get('student')} "
                               f"with mixer settings {manifest.get('settings', {}).get('mixer_attrs')}; pass a new "
                               "--output-dir")
    if not manifest and present - {"suite"}:
        raise WavedistillError(f"--output-dir {out!r} holds files eval did not write ({', '.join(sorted(present))}); "
                               "pass a new --output-dir")
    return out, ""


def eval_identity(student: str, mixer_attrs: dict | None) -> dict:
    """What an eval folder's manifest records: whose results it holds."""
    return {"student": os.path.realpath(student), "mixer_attrs": mixer_attrs or None}


def folder_mb(path: str) -> float | None:
    """Bytes of the files in ``path`` (not recursive), in MB; None when it does not exist."""
    if not os.path.isdir(path):
        return None
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
               if os.path.isfile(os.path.join(path, f))) / 1e6


def _ce_only(run_dir: str) -> bool:
    """Did the run train on next-token CE alone (its kd stages' KL weight 0)? From its config.yaml."""
    cfg = read_run_config(run_dir)
    if cfg is None:
        return False
    weights = [s.kl_weight for s in recipe_stages(record_config(cfg, run_dir)) if s.kind == "kd"]
    return bool(weights) and all(w == 0 for w in weights)


def report_table(rows: list[tuple[str, dict]]) -> str:
    """One Markdown row per run, from each run's metrics.json (and the size of what it ships).

    ``params``: the student's parameters in use (a converted model's replaced attention excluded); ``MB``:
    a separate student's ``student/`` folder, else the ``adapter/`` folder (the base model not counted);
    ``train tok/s``: tokens trained on / training wall time, over the stages; ``gen tok/s``: greedy generation of the
    side-by-side samples, student (teacher), batch 1.
    """
    head = ("| run | mixer | recipe | attention kept | params | MB | T | steps | tokens seen | train wall s | "
            "train tok/s | gen tok/s student (teacher) | positions | top-1 | top-5 overlap | T-top1 in S-top5 | KL | "
            "ppl teacher | ppl student | ppl no-mixing | gap closed |")
    lines = [head, "|" + "---|" * 4 + "---:|" * 17]
    for run_dir, m in rows:
        recipe = " → ".join(m.get("recipe") or []) or ("kd" if m.get("steps") else "untrained")
        if m.get("mixer_attrs"):  # `eval --mixer-attrs` of a trained student: an ablation, not a run of its own
            recipe = f"eval of {m.get('student_run', 'a student')} with mixers set to {json.dumps(m['mixer_attrs'])}"
        if m.get("lora"):
            recipe += f" + LoRA r{m['lora']['r']}{' (merged)' if m['lora']['merged'] else ''}"
        elif (m.get("trainable_params") or {}).get("mlp") and not m.get("student"):
            recipe += " + MLPs"
        if _ce_only(run_dir):
            recipe += " (CE only)"
        kept = ",".join(str(i) for i in m.get("kept_attention_layers") or []) or "—"
        if m.get("student"):
            recipe = f"{recipe} (student {m['student']['layers']}L x {m['student']['hidden_size']})"
        size = folder_mb(os.path.join(run_dir, "student" if m.get("student") else "adapter"))
        # From the stages' own counts: the run's total wall time is rounded to 0.1 s.
        stages = [x for x in m.get("stages") or [] if x.get("train_wall_s")]
        wall = sum(x["train_wall_s"] for x in stages)
        trained_tokens = sum(x.get("tokens", 0) for x in stages)
        gen_s, gen_t = m.get("generate_tokens_per_s_student"), m.get("generate_tokens_per_s_teacher")
        cells = [os.path.basename(os.path.normpath(run_dir)), m.get("mixer", "?"), recipe, kept,
                 f"{m['params']:,}" if m.get("params") else "?", f"{size:.2f}" if size is not None else "—",
                 m.get("seq_len", "?"), m.get("steps", "?"), f"{m.get('tokens_seen', 0):,}", m.get("train_wall_s", "?"),
                 f"{trained_tokens / wall:,.0f}" if wall else "—",
                 f"{gen_s:,.0f} ({gen_t:,.0f})" if gen_s and gen_t else "—", m["positions"],
                 f"{m['top1_agreement']:.3f}", f"{m['top5_overlap']:.3f}", f"{m['teacher_top1_in_student_top5']:.3f}",
                 f"{m['kl']:.3f}", f"{m['ppl_teacher']:.2f}", f"{m['ppl_student']:.2f}",
                 f"{m.get('ppl_no_mixing', float('nan')):.2f}", f"{m.get('gap_closed', float('nan')):.3f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
