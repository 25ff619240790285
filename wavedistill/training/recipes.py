"""Distillation recipes: an ordered list of stages, each a small dataclass with strict keys.

A recipe is the ``stages`` list of a run config (YAML ``stages: [{kind: transfer, steps: 500}, ...]``)
or the ``--stages transfer:500,kd:1500`` flag (kind:steps, every other field at its default).
Stage fields left at ``None`` take the run-wide value (``lr``, ``temperature``); the run's loss flags
(``loss:``) are set on every stage trained on the kd loss (:func:`parse_recipe`).

* ``fit``: closed-form start for Toeplitz mixers (``learned_gate``): each head's kernel is the
  least-squares Toeplitz fit of the teacher's attention maps, the mean of each diagonal.
* ``transfer``: every converted layer learns to reproduce its teacher attention *output* from
  the teacher's own layer inputs (LoLCATs / MOHAWK stage 2); no LM head, one teacher forward.
* ``kd``: end-to-end logit distillation, ``kl_weight * T^2 * divergence + ce_weight * CE
  + hidden_weight * feature loss + attention_weight * attention-map loss`` (MSE or cosine of mapped layer
  outputs, :mod:`wavedistill.kd.features`; KL or MSE of attention maps, :mod:`wavedistill.kd.attention_maps`);
  the divergence (forward KL by default, reverse KL or JSD) and CE run a chunk of positions at a time
  (:mod:`wavedistill.kd`).
* ``progressive``: swap layers in one group at a time in ``order``, fine-tuning with the kd loss
  for ``steps_per_swap`` after each swap; stop (and undo the last swap) once val KL exceeds
  ``kl_budget``.
* ``handoff``: converted layers output ``(1 - a) * attention + a * mixer`` with ``a`` rising
  0 -> 1 on a schedule, then fine-tune mixer-only; the result is teacher-free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..core.configs import check_types
from ..errors import WavedistillError
from ..kd.attention_maps import HEAD_MATCHING, MAP_LOSSES
from ..kd.engine import DIVERGENCES
from ..kd.features import FEATURE_LOSSES

TRANSFER_LOSSES = FEATURE_LOSSES  # transfer and feature matching share one hidden-state loss
TEMPERATURE_SCHEDULES = ("constant", "linear", "cosine", "dynamic")
ORDERS = ("first_to_last", "last_to_first", "even_then_odd", "easiest_first")
HANDOFF_SCHEDULES = ("linear", "cosine")
HANDOFF_MODES = ("together", "sequential")


@dataclass
class FitStage:
    kind: str = "fit"
    batches: int = 8  # training batches whose attention maps are averaged


@dataclass
class TransferStage:
    kind: str = "transfer"
    steps: int = 0
    lr: float | None = None
    loss: str = "mse"  # "mse" or "cosine" (1 - cosine similarity), per position, over the width


@dataclass
class KDLoss:
    """The end-to-end loss shared by kd, progressive and handoff: a run's loss flags (``loss:`` in YAML,
    ``--kl-weight`` ...) are these fields, set on every such stage."""

    kl_weight: float = 0.9  # weight of the divergence to the teacher (a KL unless `divergence` says otherwise)
    ce_weight: float = 0.1  # weight of next-token cross-entropy on the data
    hidden_weight: float = 0.0  # weight of the feature loss between student and (mapped) teacher layer outputs
    hidden_loss: str = "mse"  # mse | cosine, after a learned projection where the widths differ
    label_smoothing: float = 0.0  # of the CE term: target (1 - e) one-hot + e uniform
    attention_weight: float = 0.0  # weight of the attention-map loss (attention maps, or wave mixing matrices)
    attention_loss: str = "kl"  # kl | mse, per query row
    attention_heads: str = "head"  # head: student head h <-> teacher head h | group: <-> mean of teacher group h
    attention_window: int = 0  # > 0: match the maps of the first N positions only (MOHAWK's short windows)
    temperature_schedule: str = "constant"  # constant | linear | cosine (to temperature_end) | dynamic
    temperature_end: float = 1.0
    temperature_max: float = 4.0  # dynamic: a fully confident teacher position gets this temperature
    divergence: str = "forward_kl"  # forward_kl = KL(teacher || student) | reverse_kl | jsd
    loss_chunk: int | None = None  # positions per chunk of the KD loss; None = ~128 MB of float32 per chunk; 0 = dense


@dataclass
class LossStage(KDLoss):
    """A stage trained on the kd loss, with the two settings a stage may take apart from the run's."""

    lr: float | None = None  # None: the run's lr
    temperature: float | None = None  # None: the run's temperature; the start value of a schedule


@dataclass
class KDStage(LossStage):
    kind: str = "kd"
    steps: int = 0


@dataclass
class ProgressiveStage(LossStage):
    kind: str = "progressive"
    order: str = "first_to_last"
    group_size: int = 1
    steps_per_swap: int = 200
    kl_budget: float = 0.0  # > 0: stop once val KL after a group's fine-tuning exceeds it (0 = no budget)


@dataclass
class HandoffStage(LossStage):
    kind: str = "handoff"
    steps: int = 0
    schedule: str = "linear"  # shape of a(step) from 0 to 1
    mode: str = "together"  # together: every layer on one ramp; sequential: one layer after another
    order: str = "first_to_last"  # layer order of the sequential mode
    ramp_frac: float = 0.8  # a reaches 1 after this share of the steps; the rest trains the mixers alone
    learned_gate: bool = False  # per-layer gate w = a + a (1 - a) tanh(g): learned, but 0 at a = 0 and 1 at a = 1


STAGES = {cls().kind: cls for cls in (FitStage, TransferStage, KDStage, ProgressiveStage, HandoffStage)}
LOSS_KINDS = tuple(kind for kind, cls in STAGES.items() if issubclass(cls, KDLoss))  # stages trained on the kd loss
LOSS_FIELDS = tuple(f.name for f in dataclasses.fields(KDLoss))  # what a run sets once for all of them
Stage = FitStage | TransferStage | KDStage | ProgressiveStage | HandoffStage


def make_stage(spec: dict) -> Stage:
    """A stage from a mapping with a ``kind`` key; unknown kinds and keys raise, listing the known ones."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise WavedistillError(f"each stage is a mapping with a 'kind' key (one of {', '.join(STAGES)}), got {spec!r}")
    kind = spec["kind"]
    if kind not in STAGES:
        raise WavedistillError(f"unknown stage kind {kind!r}; known kinds: {', '.join(STAGES)}")
    cls = STAGES[kind]
    known = [f.name for f in dataclasses.fields(cls)]
    spec = {k.replace("-", "_"): v for k, v in spec.items()}
    unknown = sorted(set(spec) - set(known))
    if unknown:
        raise WavedistillError(f"unknown keys {unknown} for a {kind!r} stage; known keys: {', '.join(known)}")
    check_types(spec, cls, where=f"a {kind!r} stage's ")
    stage = cls(**spec)
    validate_stage(stage)
    return stage


def parse_recipe(stages, loss) -> tuple[list[Stage] | None, KDLoss | None]:
    """A run's ``stages`` and ``loss`` settings (YAML mappings, or what an earlier parse returned) as dataclasses.

    The loss flags are set on every stage whose objective is the kd loss; a stage that sets one of those fields to
    another value is an error, not silently overridden either way. With stages the flags are consumed by them
    (``loss`` None); without, they stay a :class:`KDLoss` for the one kd stage the run's budget decides.
    """
    if isinstance(loss, KDLoss) and stages and not all(isinstance(s, Stage) for s in stages):
        raise WavedistillError("stages given as mappings take loss flags as a mapping too")
    if stages and all(isinstance(s, Stage) for s in stages):
        if loss is not None:
            raise WavedistillError("stages given as dataclasses carry their own loss fields; set loss: None")
        return list(stages), None
    if not (loss is None or isinstance(loss, (dict, KDLoss))):
        raise WavedistillError(f"loss must be a mapping of kd-loss fields ({', '.join(LOSS_FIELDS)})")
    flags = dataclasses.asdict(loss) if isinstance(loss, KDLoss) else dict(loss or {})
    unknown = sorted(set(flags) - set(LOSS_FIELDS))
    if unknown:
        raise WavedistillError(f"unknown loss settings {unknown}; known: {', '.join(LOSS_FIELDS)}")
    check_types(flags, KDLoss, where="the loss setting ")
    if not stages:
        if not flags:
            return None, None
        validate_stage(KDStage(steps=1, **flags))
        return None, KDLoss(**flags)
    if not isinstance(stages, list):
        raise WavedistillError("stages must be a list of stage mappings")
    specs = [dict(s) if isinstance(s, dict) else s for s in stages]
    if flags and not any(isinstance(s, dict) and s.get("kind") in LOSS_KINDS for s in specs):
        raise WavedistillError(f"loss settings ({', '.join(flags)}) apply to {' / '.join(LOSS_KINDS)} stages; the "
                               f"recipe has none")
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or spec.get("kind") not in LOSS_KINDS:
            continue
        clash = sorted(k for k in flags if k in spec and spec[k] != flags[k])
        if clash:
            raise WavedistillError(f"stage {i} ({spec['kind']}) sets {', '.join(f'{k}={spec[k]!r}' for k in clash)}, "
                                   f"the loss flags {', '.join(f'{k}={flags[k]!r}' for k in clash)}: keep one")
        spec.update(flags)
    return [make_stage(s) for s in specs], None


def validate_stage(stage: Stage) -> None:
    k = stage.kind
    checks = []
    if hasattr(stage, "steps"):
        checks.append((isinstance(stage.steps, int) and stage.steps > 0, f"a {k!r} stage needs steps > 0"))
    if isinstance(stage, FitStage):
        checks.append((stage.batches >= 1, "a 'fit' stage needs batches >= 1"))
    if isinstance(stage, TransferStage):
        checks.append((stage.loss in TRANSFER_LOSSES, f"transfer loss must be one of {TRANSFER_LOSSES}"))
    if isinstance(stage, KDLoss):
        checks += [
            (stage.temperature_schedule in TEMPERATURE_SCHEDULES,
             f"temperature_schedule must be one of {TEMPERATURE_SCHEDULES}"),
            (stage.temperature is None or stage.temperature > 0, "temperature must be > 0"),
            (stage.temperature_end > 0 and stage.temperature_max >= 1, "temperature_end > 0, temperature_max >= 1"),
            (all(w >= 0 for w in (stage.kl_weight, stage.ce_weight, stage.hidden_weight)),
             "loss weights must be >= 0"),
            (stage.divergence in DIVERGENCES, f"divergence must be one of {DIVERGENCES}"),
            (stage.hidden_loss in FEATURE_LOSSES, f"hidden_loss must be one of {FEATURE_LOSSES}"),
            (0.0 <= stage.label_smoothing < 1.0, "label_smoothing must be in [0, 1)"),
            (stage.attention_weight >= 0, "attention_weight must be >= 0"),
            (stage.attention_loss in MAP_LOSSES, f"attention_loss must be one of {MAP_LOSSES}"),
            (stage.attention_heads in HEAD_MATCHING, f"attention_heads must be one of {HEAD_MATCHING}"),
            (stage.attention_window >= 0, "attention_window must be >= 0 (0 = the whole sequence)"),
            (stage.loss_chunk is None or stage.loss_chunk >= 0, "loss_chunk must be >= 0 (0 = the dense loss)"),
            (stage.loss_chunk != 0 or stage.divergence == "forward_kl",
             "reverse_kl and jsd run in the chunked loss: leave loss_chunk unset or > 0"),
        ]
    if isinstance(stage, ProgressiveStage):
        checks += [(stage.order in ORDERS, f"order must be one of {ORDERS}"),
                   (stage.group_size >= 1 and stage.steps_per_swap >= 1, "group_size and steps_per_swap must be >= 1"),
                   (stage.kl_budget >= 0, "kl_budget must be >= 0 (0 = no budget)")]
    if isinstance(stage, HandoffStage):
        checks += [(stage.schedule in HANDOFF_SCHEDULES, f"hand-off schedule must be one of {HANDOFF_SCHEDULES}"),
                   (stage.mode in HANDOFF_MODES, f"hand-off mode must be one of {HANDOFF_MODES}"),
                   (stage.order in ORDERS[:3], f"hand-off order must be one of {ORDERS[:3]}"),
                   (0 < stage.ramp_frac <= 1, "ramp_frac must be in (0, 1]")]
    for ok, message in checks:
        if not ok:
            raise WavedistillError(message)


def parse_stages_flag(text: str) -> list[dict]:
    """``"transfer:500,kd:1500"`` -> ``[{"kind": "transfer", "steps": 500}, {"kind": "kd", "steps": 1500}]``.

    ``fit`` takes no step count; ``progressive:N`` sets ``steps_per_swap``.
    """
    stages = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        kind, _, steps = item.partition(":")
        spec: dict = {"kind": kind}
        if steps:
            try:
                n = int(steps)
            except ValueError:
                raise WavedistillError(f"--stages: {item!r} is not KIND:STEPS (e.g. transfer:500)") from None
            spec["steps_per_swap" if kind == "progressive" else "batches" if kind == "fit" else "steps"] = n
        stages.append(spec)
    if not stages:
        raise WavedistillError("--stages is empty; give e.g. transfer:500,kd:1500")
    return stages


def stage_steps(stage: Stage, n_groups: int = 0) -> int:
    """Optimizer steps a stage takes (progressive: upper bound, all groups swapped)."""
    if isinstance(stage, ProgressiveStage):
        return stage.steps_per_swap * n_groups
    return getattr(stage, "steps", 0)
