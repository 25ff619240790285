"""A different, smaller student: its shape (teacher config + overrides, or a preset), its initialisation
from the teacher, and the vocabulary check between the two.

Shape. The student is the teacher's Hugging Face config with fewer layers and / or a narrower width.
A preset scales the teacher as the sequence-model presets scale their standard model (model dim 64 /
32 / 24, layers 6 / 4 / 3): ``standard`` keeps the teacher's shape, ``compressed`` halves the width
and keeps 2/3 of the layers, ``tiny`` keeps 3/8 of the width and half the layers. Width scales the
number of attention heads (the head dimension is kept, so RoPE and q/k norms stay as trained), the
KV heads with them, the hidden size and the MLP's intermediate size. Explicit sizes override a preset.
A student is never larger than its teacher in any of these (the initialisation selects weights).

Initialisation (``init="teacher"``): *weight selection* (Xu et al., "Initializing Models with Larger
Ones", ICLR 2024) with a consistent choice -- every matrix keeps its leading rows / columns along each
dimension, the same indices everywhere, so hidden unit j of the student is hidden unit j of the
teacher in the embeddings, every projection and every norm. Along the head axes this keeps the first
heads whole (and under GQA the first KV groups); along the layer axis, student layer i takes teacher
layer ``layer_map[i]`` (:mod:`wavedistill.training.layer_map`). ``init="random"``: the config's own random
initialisation (the control).
"""

from __future__ import annotations

import copy
import os
import re
import shutil

import torch
from torch import nn

from ..errors import WavedistillError
from ..io import base_identity, replace_dir, write_adapter_files
from ..surgery import attach_wave, convert, converted_layers, detach_wave, params_in_use, wave_attention_modules
from .layer_map import layer_map
from .student_spec import PRESETS, StudentSpec, check_choices


def _heads(config) -> tuple[int, int, int]:
    n_heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return n_heads, kv, head_dim


def student_config(teacher_config, spec: StudentSpec):
    """The student's HF config: the teacher's, resized by ``spec``. One-line errors for impossible shapes."""
    check_choices(spec)
    width, depth = PRESETS[spec.preset] if spec.preset else (1.0, 1.0)
    t = teacher_config
    n_heads, n_kv, head_dim = _heads(t)
    heads = spec.heads if spec.heads is not None else max(1, round(n_heads * width))
    kv = spec.kv_heads
    if kv is None:  # the teacher's share of KV heads, lowered to the nearest count that divides the heads
        kv = max(1, round(n_kv * heads / n_heads))
        while heads % kv:
            kv -= 1
    sizes = {
        "num_hidden_layers": (spec.layers, max(1, round(t.num_hidden_layers * depth)), t.num_hidden_layers,
                              "--student-layers"),
        "hidden_size": (spec.hidden_size, max(1, round(t.hidden_size * width)), t.hidden_size,
                        "--student-hidden-size"),
        "num_attention_heads": (heads, heads, n_heads, "--student-heads"),
        "num_key_value_heads": (kv, kv, n_kv, "--student-kv-heads"),
        "intermediate_size": (spec.intermediate_size, max(1, round(t.intermediate_size * width)),
                              t.intermediate_size, "--student-intermediate-size"),
    }
    values = {}
    for key, (given, from_preset, teacher_value, flag) in sizes.items():
        value = from_preset if given is None else given
        if not 1 <= value <= teacher_value:
            raise WavedistillError(f"{flag} {value}: a student has 1 to {teacher_value} (the teacher's {key}); "
                                   "it is initialised by selecting the teacher's weights")
        values[key] = value
    if values["num_attention_heads"] % values["num_key_value_heads"]:
        raise WavedistillError(f"--student-kv-heads {values['num_key_value_heads']} must divide --student-heads "
                               f"{values['num_attention_heads']} (grouped-query attention)")
    config = copy.deepcopy(t)
    for key, value in values.items():
        setattr(config, key, value)
    config.head_dim = head_dim  # kept: RoPE and the q/k norms act per head
    if hasattr(config, "layer_types") and config.layer_types is not None:
        config.layer_types = list(config.layer_types)[: values["num_hidden_layers"]]
    try:  # the model family's own checks (e.g. hidden size a multiple of the heads), now rather than at saving
        type(config)(**config.to_dict())
    except Exception as e:  # transformers / huggingface_hub raise their own validation error classes
        reason = str(getattr(e, "__cause__", None) or e).strip().splitlines()[-1].strip().rstrip(".")
        raise WavedistillError(f"the student's shape is not a valid {t.model_type} config: {reason}; change "
                               "--student-hidden-size / --student-heads") from None
    return config


def build_student_model(teacher: nn.Module, spec: StudentSpec, layer_map: list[int]) -> nn.Module:
    """A float32 student of the teacher's class and ``student_config``'s shape, initialised per ``spec.init``."""
    config = student_config(teacher.config, spec)
    if len(layer_map) != config.num_hidden_layers:
        raise WavedistillError(f"the layer map has {len(layer_map)} entries for {config.num_hidden_layers} "
                               "student layers")
    config.dtype = torch.float32
    student = type(teacher)(config).float()
    if spec.init == "teacher":
        select_teacher_weights(student, teacher, layer_map)
    return student.requires_grad_(True).train()


_LAYER = re.compile(r"(^|\.)layers\.(\d+)\.")


def teacher_name(student_name: str, layer_map: list[int]) -> str:
    """The teacher parameter a student parameter is selected from: its layer index through the map."""
    return _LAYER.sub(lambda m: f"{m.group(1)}layers.{layer_map[int(m.group(2))]}.", student_name, count=1)


@torch.no_grad()
def select_teacher_weights(student: nn.Module, teacher: nn.Module, layer_map: list[int]) -> list[str]:
    """Copy each student tensor from its mapped teacher tensor, keeping the leading indices of every
    dimension (consistent weight selection). Returns the student names copied; a student tensor without
    a teacher counterpart, or larger than it, is an error."""
    t_params = dict(teacher.named_parameters())
    t_params.update(dict(teacher.named_buffers()))
    copied = []
    for name, p in list(student.named_parameters()) + list(student.named_buffers()):
        source = t_params.get(teacher_name(name, layer_map))
        if source is None:
            if name.endswith("inv_freq") or "rotary_emb" in name:
                continue  # recomputed from the config
            raise WavedistillError(f"student weight {name} has no teacher counterpart "
                                   f"{teacher_name(name, layer_map)}")
        if source.dim() != p.dim() or any(s > t for s, t in zip(p.shape, source.shape)):
            raise WavedistillError(f"student weight {name} {tuple(p.shape)} cannot be selected from the teacher's "
                                   f"{tuple(source.shape)}")
        p.copy_(source[tuple(slice(0, s) for s in p.shape)].to(p.dtype))
        copied.append(name)
    return copied


def shared_vocab(teacher_tokenizer, student_tokenizer, teacher_rows: int, student_rows: int) -> int:
    """How many logit rows teacher and student share: equal tokenizers pass, and the rows beyond the tokenizer
    (a vocabulary padded for speed, e.g. 152,064 vs 151,936) are cut to the shorter; other tokenizers are an
    error (a logit loss would compare different tokens)."""
    if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise WavedistillError(f"the student's tokenizer ({len(student_tokenizer):,} tokens) differs from the "
                               f"teacher's ({len(teacher_tokenizer):,}); logit distillation needs the same tokenizer")
    n = len(teacher_tokenizer)
    if min(teacher_rows, student_rows) < n:
        raise WavedistillError(f"a model has fewer output rows ({min(teacher_rows, student_rows):,}) than its "
                               f"tokenizer has tokens ({n:,})")
    return min(teacher_rows, student_rows)


# Settings of in-place conversion that have no meaning for a separate student (the default of each).
def student_for_run(teacher: nn.Module, teacher_tokenizer, cfg) -> tuple[nn.Module, list[int], int | None]:
    """(student, layer map, shared logit rows) of a run with ``cfg.student``: built (or loaded) in float32,
    its layers converted to ``mixer`` unless it keeps attention, everything but replaced attention trainable.
    The shared rows are None when teacher and student have the same number of output rows."""
    spec = cfg.student
    n_teacher = teacher.config.num_hidden_layers
    if spec.path is not None:
        from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: transformers' Auto classes add ~0.4 s to every command's start

        try:
            student = AutoModelForCausalLM.from_pretrained(spec.path, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(spec.path)
        except (OSError, ValueError) as e:
            raise WavedistillError(f"could not load the student {spec.path!r}: {str(e).splitlines()[0][:300]}") \
                from None
        rows = shared_vocab(teacher_tokenizer, tokenizer, teacher.config.vocab_size, student.config.vocab_size)
        if rows == teacher.config.vocab_size == student.config.vocab_size:
            rows = None
        lmap = layer_map(spec.layer_map, n_teacher, student.config.num_hidden_layers)
    else:
        lmap = layer_map(spec.layer_map, n_teacher, student_config(teacher.config, spec).num_hidden_layers)
        student = build_student_model(teacher, spec, lmap)
        rows = None
    # Recorded before training: the adapters of this run apply to the student's initial state.
    student.__dict__["_wavedistill_base_identity"] = base_identity(student)
    if spec.mixer != "attention":
        convert(student, spec.mixer, **cfg.mixer_kwargs)
        for m in wave_attention_modules(student).values():
            m.mixer.float()
    train_all_but_replaced_attention(student)
    return student.train(), lmap, rows


def train_all_but_replaced_attention(student: nn.Module) -> None:
    """A separate student trains every weight, except the attention its mixers replaced (kept, unused, so
    that :func:`unconvert` could restore it)."""
    replaced = {id(p) for m in wave_attention_modules(student).values() for p in m.base_attn.parameters()}
    for p in student.parameters():
        p.requires_grad_(id(p) not in replaced)


def save_student_folder(student: nn.Module, tokenizer, directory: str, teacher_model: str | None = None,
                        adapter: bool = False) -> None:
    """``directory`` = the student as a Hugging Face model folder (``from_pretrained`` loads it). A converted
    student's mixers are not HF modules: with ``adapter`` they go into ``directory/adapter/``, an adapter whose
    base is the folder itself, so ``load_student(directory)`` gives the whole student (the subfolder also keeps
    transformers from taking ``adapter_config.json`` for a PEFT adapter). Written to a temporary folder, then
    swapped in."""
    tmp = directory.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    wave = detach_wave(student, converted_layers(student))
    try:
        student.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    finally:
        attach_wave(student, wave)
        train_all_but_replaced_attention(student)
    if wave and adapter:
        # The folder's own weights are this adapter's base, not the student's initial state.
        initial = student.__dict__.pop("_wavedistill_base_identity", None)
        try:
            os.makedirs(os.path.join(tmp, "adapter"))
            # Absolute: the folder does not exist under its final name yet, so the adapter cannot find that out.
            write_adapter_files(student, os.path.join(tmp, "adapter"), os.path.abspath(directory), teacher_model)
        finally:
            if initial is not None:
                student.__dict__["_wavedistill_base_identity"] = initial
    replace_dir(tmp, directory)


def student_summary(student: nn.Module, layer_map: list[int], mixer: str) -> dict:
    """The student's shape, map, mixer and parameters in use (a converted layer's replaced attention excluded)."""

    c = student.config
    return {"layers": c.num_hidden_layers, "hidden_size": c.hidden_size, "heads": c.num_attention_heads,
            "kv_heads": c.num_key_value_heads, "intermediate_size": c.intermediate_size, "layer_map": layer_map,
            "mixer": mixer, "params": params_in_use(student)}
