"""Lab run config: dataclass defaults, YAML holding only changes, strict keys.

Model and optimiser fields left at ``None`` take the task's usual values (``Task.defaults``, e.g.
Nanda et al.'s setup for ``modular``), then :data:`GENERIC`; :func:`resolve` returns the filled-in
values that a run actually uses, and that is what ``config.yaml`` and ``summary.json`` record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import WavedistillError

GENERIC = dict(d_model=64, n_layers=2, n_heads=4, d_mlp=256, activation="gelu", norm="rms", steps=1000,
               batch_size=32, lr=1e-3, weight_decay=0.1, beta2=0.98, warmup_steps=50, grad_clip=1.0, eval_every=100)


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
    seeds: list[int] = field(default_factory=lambda: [0])
    jobs: int = 1  # seeds (and mixers, for `lab compare`) run in this many processes at once
    output_dir: str = "runs/lab"
    device: str = "cpu"


def resolve(cfg: LabConfig) -> dict:
    """Every field with the task's defaults filled in."""
    from .tasks import TASKS

    if cfg.task not in TASKS:
        raise WavedistillError(f"unknown lab task {cfg.task!r}; known tasks: {', '.join(TASKS)}")
    values = dataclasses.asdict(cfg)
    for k, v in {**GENERIC, **TASKS[cfg.task].defaults}.items():
        if values.get(k) is None:
            values[k] = v
    return values


def check(cfg: LabConfig) -> None:
    from ..mixers import get_mixer_class
    from .tasks import check_task_options

    get_mixer_class(cfg.mixer)
    check_task_options(cfg.task, cfg.task_kwargs)
    r = resolve(cfg)
    checks = [
        (r["steps"] >= 1, "steps must be >= 1"),
        (r["batch_size"] >= 0, "batch_size must be >= 0 (0 = full batch)"),
        (r["lr"] > 0 and r["weight_decay"] >= 0, "lr must be > 0 and weight_decay >= 0"),
        (r["eval_every"] >= 1, "eval_every must be >= 1"),
        (r["activation"] in ("relu", "gelu"), "activation must be relu or gelu"),
        (r["norm"] in ("rms", "none"), "norm must be rms or none"),
        (bool(cfg.seeds) and len(set(cfg.seeds)) == len(cfg.seeds), "seeds must be a non-empty list without repeats"),
        (cfg.jobs >= 1, "jobs must be >= 1"),
        (not cfg.phase_embedding or cfg.task == "modular", "phase_embedding is for the modular task (tokens of Z_p)"),
        (0 < cfg.grok_threshold <= 1, "grok_threshold must be in (0, 1]"),
    ]
    for ok, message in checks:
        if not ok:
            raise WavedistillError(message)


def make_lab_config(changes: dict) -> LabConfig:
    from ..config import make_config

    return make_config(changes, cls=LabConfig, check=check)
