"""Lab run config: dataclass defaults, YAML holding only changes, strict keys.

Model and optimiser fields left at ``None`` take the task's usual values (``Task.defaults``, e.g.
Nanda et al.'s setup for ``modular``), then :data:`GENERIC`; :func:`resolve` returns the filled-in
values that a run actually uses, and that is what ``config.yaml`` and ``summary.json`` record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..core.configs import build
from ..errors import WavedistillError
from ..mixers import get_mixer_class, mixer_kwargs
from .tasks import TASKS, check_task_options

#: Student sizes for lab distillation (the issue's sequence-model presets): width, depth, heads and the state
#: size of mixers that take ``state_dim``; the MLP is 4 x the width. Explicit fields win over a preset.
PRESETS = {"standard": dict(d_model=64, n_layers=6, n_heads=4, d_mlp=256, state_dim=540),
           "compressed": dict(d_model=32, n_layers=4, n_heads=4, d_mlp=128, state_dim=256),
           "tiny": dict(d_model=24, n_layers=3, n_heads=3, d_mlp=96, state_dim=128)}
#: Loss weights (ground truth, teacher outputs, teacher features) with and without a teacher.
DISTILL_WEIGHTS = dict(task_weight=0.3, output_weight=0.5, hidden_weight=0.2)
PLAIN_WEIGHTS = dict(task_weight=1.0, output_weight=0.0, hidden_weight=0.0)
FEATURE_LOSSES = ("relative_mse", "mse")
#: keys of earlier versions -> their names now; a config or flag with an old key is a one-line error, and a run
#: folder that recorded one is read with the new name
RENAMED = {"alpha": "task_weight", "beta": "output_weight", "gamma": "hidden_weight"}
RENAMED_MESSAGES = {old: f"{old} was renamed {new} (--{new.replace('_', '-')})" for old, new in RENAMED.items()}


def upgraded(saved: dict) -> dict:
    """Settings a lab run recorded before the loss weights were renamed (wavedistill 0.1), in today's keys."""
    return {RENAMED.get(k, k): v for k, v in saved.items()}


GENERIC = dict(d_model=64, n_layers=2, n_heads=4, d_mlp=256, activation="gelu", norm="rms", positions="learned",
               steps=1000, batch_size=32, lr=1e-3, weight_decay=0.1, beta2=0.98, warmup_steps=50, grad_clip=1.0,
               eval_every=100)


@dataclass
class LabConfig:
    task: str = "modular"
    task_kwargs: dict = field(default_factory=dict)  # e.g. {p: 97, op: "+", train_frac: 0.5}; see the task's class
    mixer: str = "attention"
    mixer_kwargs: dict = field(default_factory=dict)
    phase_embedding: bool = False  # modular only: tokens of Z_p as fixed waves (an inductive bias, off by default)
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    d_mlp: int | None = None
    activation: str | None = None  # relu | gelu
    norm: str | None = None  # rms | none
    positions: str | None = None  # learned: absolute position table | none: the mixer alone orders tokens (RoPE, ...)
    # a reference mixer: d_mlp is chosen so the model's parameters besides the embeddings and read-out match that
    # mixer's model of the same other settings within 5 % (lab/model.py matched_d_mlp); None = d_mlp as given
    match_params: str | None = None
    steps: int | None = None
    batch_size: int | None = None  # 0 = full batch
    lr: float | None = None
    weight_decay: float | None = None
    beta1: float = 0.9
    beta2: float | None = None
    warmup_steps: int | None = None  # linear warm-up, then constant
    grad_clip: float | None = None  # 0 = off
    eval_every: int | None = None
    grok_threshold: float = 0.99
    stop_after_grok: int = 0  # > 0: stop once test accuracy has stayed >= grok_threshold for this many steps
    preset: str | None = None  # standard | compressed | tiny: student sizes (PRESETS); explicit fields win
    # Distillation from a trained lab model: total = task_weight * task loss (ground truth: CE, or MSE for
    # regression) + output_weight * output loss (MSE to the teacher's predictions for regression, T^2 KL at
    # `temperature` otherwise) + hidden_weight * feature loss (block outputs of layer-mapped teacher blocks,
    # through a learned projection where widths differ; distill's `hidden_weight` is the same term).
    teacher: str | None = None  # a finished lab seed folder (config.yaml + model.safetensors)
    task_weight: float | None = None  # None: 0.3 / 0.5 / 0.2 with a teacher, 1 / 0 / 0 without
    output_weight: float | None = None
    hidden_weight: float | None = None
    temperature: float = 4.0
    layer_map: str = "uniform"  # student block i matches teacher block layer_map[i] (wavedistill.training.layer_map)
    feature_loss: str = "relative_mse"  # relative_mse (MSE / the teacher block's mean square) | mse
    data_seed: int | None = None  # the task's data; None = the run seed, or the teacher's data seed with a teacher
    seeds: list[int] = field(default_factory=lambda: [0])
    jobs: int = 1  # seeds (and mixers, for `lab compare`) run in this many processes at once
    output_dir: str = "runs/lab"
    device: str = "cpu"


def resolve(cfg: LabConfig) -> LabConfig:
    """``cfg`` with every unset field filled in: the preset's, the task's, the generic defaults and the loss weights."""
    if cfg.task not in TASKS:
        raise WavedistillError(f"unknown lab task {cfg.task!r}; known tasks: {', '.join(TASKS)}")
    values = dataclasses.asdict(cfg)
    if cfg.preset is not None:
        if cfg.preset not in PRESETS:
            raise WavedistillError(f"unknown preset {cfg.preset!r}; known presets: {', '.join(PRESETS)}")
        preset = dict(PRESETS[cfg.preset])
        state_dim = preset.pop("state_dim")
        if "state_dim" in mixer_kwargs(cfg.mixer) and "state_dim" not in values["mixer_kwargs"]:
            values["mixer_kwargs"] = {**values["mixer_kwargs"], "state_dim": state_dim}
        for k, v in preset.items():
            if values.get(k) is None:
                values[k] = v
    for k, v in {**GENERIC, **TASKS[cfg.task].defaults, **(DISTILL_WEIGHTS if cfg.teacher else PLAIN_WEIGHTS)}.items():
        if values.get(k) is None:
            values[k] = v
    return dataclasses.replace(cfg, **values)


def check(cfg: LabConfig) -> None:
    get_mixer_class(cfg.mixer)
    if cfg.match_params is not None:
        get_mixer_class(cfg.match_params)
    check_task_options(cfg.task, cfg.task_kwargs)
    r = resolve(cfg)
    checks = [
        (r.steps >= 1, "steps must be >= 1"),
        (r.batch_size >= 0, "batch_size must be >= 0 (0 = full batch)"),
        (r.lr > 0 and r.weight_decay >= 0, "lr must be > 0 and weight_decay >= 0"),
        (r.eval_every >= 1, "eval_every must be >= 1"),
        (r.activation in ("relu", "gelu"), "activation must be relu or gelu"),
        (r.norm in ("rms", "none"), "norm must be rms or none"),
        (r.positions in ("learned", "none"), "positions must be learned or none"),
        (bool(cfg.seeds) and len(set(cfg.seeds)) == len(cfg.seeds), "seeds must be a non-empty list without repeats"),
        (cfg.jobs >= 1, "jobs must be >= 1"),
        (not cfg.phase_embedding or cfg.task == "modular", "phase_embedding is for the modular task (tokens of Z_p)"),
        (0 < cfg.grok_threshold <= 1, "grok_threshold must be in (0, 1]"),
        (min(r.task_weight, r.output_weight, r.hidden_weight) >= 0
         and r.task_weight + r.output_weight + r.hidden_weight > 0,
         "task_weight, output_weight and hidden_weight must be >= 0 with a positive sum"),
        (bool(cfg.teacher) or r.output_weight == r.hidden_weight == 0,
         "output_weight and hidden_weight weigh losses against a teacher; pass --teacher SEED_FOLDER (a trained lab "
         "run's seed_<k>)"),
        (cfg.temperature > 0, "temperature must be > 0"),
        (cfg.feature_loss in FEATURE_LOSSES, f"feature_loss must be one of {', '.join(FEATURE_LOSSES)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise WavedistillError(message)


def make_lab_config(changes: dict) -> LabConfig:
    return build(changes, LabConfig, check, RENAMED_MESSAGES)
