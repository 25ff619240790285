"""Distillation config: dataclass defaults that run small, YAML files holding only changes, strict keys."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import yaml

from ..core.configs import build, read_changes, to_yaml
from ..core.devices import DTYPES
from ..data import DataSplit
from ..errors import WavedistillError
from ..mixers import get_mixer_class
from ..mixers.base import mixers_with_matrix
from .recipes import LOSS_KINDS, KDLoss, KDStage, Stage, parse_recipe
from .student_spec import StudentSpec, parse_student


TRACKERS = ("tensorboard", "wandb", "aim", "mlflow")
# keys of earlier versions -> what replaced them (a one-line error, never a silent alias)
RENAMED = {"alpha": "alpha was replaced by the kd loss's kl_weight and ce_weight (alpha A = kl_weight A, ce_weight "
                    "1 - A): set them under loss: or on a stage, or pass --kl-weight / --ce-weight"}


@dataclass
class DistillConfig:
    teacher: str = "Qwen/Qwen3-0.6B"
    wave_type: str = "learned_gate"
    layers: list[int] | None = None  # None = every layer
    keep_attention: list[int] | None = None  # hybrid: these layers stay softmax attention
    keep_attention_every: int = 0  # hybrid: keep layers 0, N, 2N, ... as attention
    mixer_kwargs: dict = field(default_factory=dict)
    reinit: list[str] | None = None  # mixer submodules re-initialised at random after the teacher init (ablations)
    data: str = "HuggingFaceFW/fineweb-edu:sample-10BT"
    n_samples: int = 0  # documents to read; 0 = all (hub datasets: 20000)
    val_frac: float = DataSplit.val_frac
    test_frac: float = DataSplit.test_frac
    seq_len: int = 256
    batch_size: int = 16
    train_windows: str = "random"  # random: windows at random offsets; fixed: rows of the consecutive windows
    teacher_dtype: str | None = None  # dtype the base (teacher) loads in; None = dtype
    teacher_device_map: str | dict | None = None  # auto | balanced | sequential | a device | {module: device}
    teacher_max_memory: dict | None = None  # with a device map: per-device caps, e.g. {"cpu": "2GB"}; beyond: disk
    student: StudentSpec | None = None  # a separate, smaller student; None = convert the teacher in place
    teacher_cache: str | None = None  # folder of `wavedistill cache-teacher`: train on its targets, no teacher forward
    epochs: float = 1.0
    max_steps: int = 0  # > 0 overrides epochs
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1  # micro-batches per optimizer step (the global batch is batch_size)
    grad_checkpointing: bool = False  # recompute the decoder layers' activations in backward (less memory)
    temperature: float = 1.0
    stages: list[Stage] | None = None  # the recipe (training.recipes); None = one kd stage of max_steps / epochs
    loss: KDLoss | None = None  # without stages: that kd stage's loss; given with stages, set on every kd-loss stage
    unfreeze_mlps: bool = False
    lora_mlp: int = 0  # > 0: LoRA of this rank on every MLP projection, trained in the end-to-end stages
    lora_alpha: float = 0.0  # LoRA scale numerator; 0 = 2 * lora_mlp
    lora_merge: bool = False  # fold LoRA into the MLP weights of the final adapter (else keep LoRA tensors)
    train: bool = True  # False: score the teacher-initialised student without any training step
    eval_every: int = 200
    val_windows: int = 32
    test_windows: int = 0  # 0 = every held-out window
    save_every: int = 200
    n_generations: int = 4
    tracker: str = "tensorboard"  # TensorBoard always; wandb | aim | mlflow also log there (accelerate's trackers)
    grad_norm_every: int = 0  # > 0: log each decoder layer's gradient norm every N steps
    output_dir: str = "runs/distill"
    resume: bool = False
    overwrite: bool = False  # delete what output_dir holds and start again (never implied)
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    num_processes: int = 1  # recorded by the run: the processes it trained with (launchers set it, not this key)

    def __post_init__(self) -> None:
        # The YAML mappings are parsed here, once (strict keys, one-line errors): everything downstream reads
        # dataclasses. A parsed value passes through unchanged (dataclasses.replace builds the config again).
        if self.student is not None and not isinstance(self.student, StudentSpec):
            self.student = parse_student(self.student)
        self.stages, self.loss = parse_recipe(self.stages, self.loss)


# What a resume may change: where and how the run is watched, not what it trains (max_steps only upward: see
# check_resume). Every other setting must equal the run's config.yaml.
RESUME_MAY_CHANGE = {"resume": "", "overwrite": "", "output_dir": "", "num_processes": "",
                     "max_steps": "larger: train on to the new total (the cosine schedule stretches to it)",
                     "save_every": "checkpoints from here on", "device": "where it trains from here on",
                     "tracker": "where it logs from here on", "grad_norm_every": "logging only"}


def saved_config(output_dir: str) -> dict:
    """The settings a run recorded in its ``config.yaml``."""
    path = os.path.join(output_dir, "config.yaml")
    try:
        with open(path) as f:
            saved = yaml.safe_load(f)
    except FileNotFoundError:
        raise WavedistillError(f"{output_dir!r} has no config.yaml, so there is no run to resume; drop --resume to "
                               "start one") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise WavedistillError(f"{path!r} is unreadable ({e}); it records the run's settings: restore it") from None
    if not isinstance(saved, dict):
        raise WavedistillError(f"{path!r} does not hold a run's settings; restore it")
    return upgraded(saved)


def upgraded(saved: dict) -> dict:
    """Settings recorded before ``alpha`` became the kd stages' ``kl_weight`` / ``ce_weight`` (wavedistill 0.1), in
    today's keys: alpha A was the weight of every kd stage's divergence that did not set its own, 1 - A its CE's."""
    if "alpha" not in saved:
        return saved
    saved = dict(saved)
    a = saved.pop("alpha")
    if saved.get("stages"):
        saved["stages"] = [{"kl_weight": a, "ce_weight": 1.0 - a, **s} if s.get("kind") in LOSS_KINDS else s
                           for s in saved["stages"]]
    else:
        saved["loss"] = {"kl_weight": a, "ce_weight": 1.0 - a, **(saved.get("loss") or {})}
    return saved


def recorded_settings(cfg) -> dict:
    """The config as config.yaml records it (the same YAML normalisation), for comparisons and manifests."""
    return yaml.safe_load(to_yaml(cfg))


def record_config(saved: dict, output_dir: str) -> DistillConfig:
    """A run's recorded settings (any version's config.yaml, :func:`upgraded`) parsed as a config."""
    known = {f.name for f in dataclasses.fields(DistillConfig)}
    try:
        return DistillConfig(**{k: v for k, v in saved.items() if k in known})
    except (WavedistillError, TypeError) as e:
        raise WavedistillError(f"{output_dir}/config.yaml no longer parses as a run's settings ({e}); start a new "
                               "run in another --output-dir") from None


def parsed_record(saved: dict, output_dir: str) -> dict:
    """A run's recorded settings parsed and recorded again, so that a record with partial stage or student mappings
    compares equal to the same settings written out in full."""
    return recorded_settings(record_config(saved, output_dir))


def check_same_run(cfg: DistillConfig, remedy: str) -> None:
    """A folder's run is reused or resumed by compare / layers only for the very same settings."""
    saved = parsed_record(saved_config(cfg.output_dir), cfg.output_dir)
    wanted = recorded_settings(cfg)
    differ = sorted(k for k in set(saved) | set(wanted) if k not in ("resume", "overwrite", "num_processes")
                    and saved.get(k) != wanted.get(k))
    if differ:
        raise WavedistillError(f"{cfg.output_dir!r} holds a run with other settings ({', '.join(differ)}); {remedy}")


def check_resume(cfg: DistillConfig) -> None:
    """Refuse, in one line, a resume whose settings differ from the run's ``config.yaml`` where they shape it."""
    saved = parsed_record(saved_config(cfg.output_dir), cfg.output_dir)
    wanted = recorded_settings(cfg)
    if isinstance(saved.get("student"), dict) and isinstance(wanted.get("student"), dict):
        # config.yaml records a separate student's layer map as the teacher layers it resolved to
        if isinstance(saved["student"].get("layer_map"), list) and not isinstance(wanted["student"].get("layer_map"),
                                                                                  list):
            wanted["student"]["layer_map"] = saved["student"]["layer_map"]
    differ = [k for k in wanted if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != wanted[k]]
    if differ:
        said = "; ".join(f"{k} {wanted[k]!r} (the run has {saved[k]!r})" for k in differ[:4])
        raise WavedistillError(f"--resume with other settings than {cfg.output_dir}/config.yaml: {said}. A resumed run "
                               f"keeps its settings (only {', '.join(k for k, v in RESUME_MAY_CHANGE.items() if v)} "
                               "may change); drop those flags, or start a new run in another --output-dir")
    old = saved.get("max_steps") or 0
    if cfg.max_steps and cfg.max_steps < old:
        raise WavedistillError(f"--resume --max-steps {cfg.max_steps}: max_steps may only grow on resume (the run was "
                               f"set to {old})")


def load_yaml(path: str) -> dict:
    """The changes to :class:`DistillConfig` in a YAML file (strict keys, :func:`.core.configs.read_changes`)."""
    return read_changes(path, DistillConfig, RENAMED)


def make_config(changes: dict) -> DistillConfig:
    """A validated :class:`DistillConfig` from a mapping of changes."""
    return build(changes, DistillConfig, validate, RENAMED)


def _exact_budget(cfg: DistillConfig) -> int:
    """Tokens a hybrid with attention sinks weighs exactly (window + sinks); 0 without sinks."""
    kw = cfg.mixer_kwargs or {}
    sinks = kw.get("sinks", 0)
    return (kw.get("window", 0) + sinks) if isinstance(sinks, int) and sinks > 0 else 0


def validate(cfg: DistillConfig) -> None:
    get_mixer_class(cfg.wave_type)
    budget = _exact_budget(cfg)
    checks = [
        (cfg.seq_len >= 2, "seq_len must be >= 2"),
        (cfg.batch_size >= 1, "batch_size must be >= 1"),
        (cfg.grad_accum >= 1, "grad_accum must be >= 1 (micro-batches per optimizer step)"),
        (cfg.lr > 0, "lr must be > 0"),
        (cfg.temperature > 0, "temperature must be > 0"),
        (cfg.epochs > 0 or cfg.max_steps > 0 or not cfg.train, "set epochs > 0 or max_steps > 0"),
        (cfg.dtype in DTYPES, "dtype must be float32, bfloat16 or float16"),
        (cfg.lora_mlp >= 0 and cfg.lora_alpha >= 0, "lora_mlp and lora_alpha must be >= 0"),
        (not (cfg.lora_mlp and cfg.unfreeze_mlps), "choose one recovery: lora_mlp or unfreeze_mlps, not both"),
        (not cfg.lora_merge or cfg.lora_mlp > 0, "lora_merge needs lora_mlp > 0"),
        # each stage sets its own steps, so a max_steps beside them would be silently ignored
        (not (cfg.stages and cfg.max_steps > 0), f"max_steps {cfg.max_steps} has no effect on a run with stages (each "
         "stage sets its own steps): drop --max-steps, or change the stages' steps"),
        (cfg.train_windows in ("random", "fixed"), "train_windows must be random or fixed"),
        (cfg.teacher_dtype is None or cfg.teacher_dtype in DTYPES,
         "teacher_dtype must be float32, bfloat16 or float16"),
        (cfg.teacher_max_memory is None or cfg.teacher_device_map is not None,
         "teacher_max_memory needs teacher_device_map (e.g. auto)"),
        (cfg.teacher_cache is None or isinstance(cfg.teacher_cache, str), "teacher_cache must be a folder path"),
        (cfg.tracker in TRACKERS, f"tracker must be one of {', '.join(TRACKERS)}"),
        (cfg.grad_norm_every >= 0, "grad_norm_every must be >= 0 (0 = off)"),
        (cfg.save_every >= 1 and cfg.eval_every >= 1, "save_every and eval_every must be >= 1 (steps between "
         "checkpoints / val scores)"),
        (cfg.val_windows >= 1 and cfg.test_windows >= 0 and cfg.n_samples >= 0 and cfg.warmup_steps >= 0,
         "val_windows must be >= 1; test_windows, n_samples and warmup_steps >= 0"),
        (cfg.max_steps >= 0, "max_steps must be >= 0 (0 = use epochs)"),
        (0 <= cfg.val_frac < 1 and 0 <= cfg.test_frac < 1 and cfg.val_frac + cfg.test_frac < 1,
         "val_frac and test_frac must be in [0, 1) and leave a training share"),
        (budget < cfg.seq_len,
         f"an exact cache of window + sinks = {budget} tokens would hold all {cfg.seq_len} of a training "
         "window: that is attention itself; choose a budget below --seq-len"),
    ]
    for ok, message in checks:
        if not ok:
            raise WavedistillError(message)
    stages = recipe_stages(cfg)
    mixer = cfg.wave_type
    if cfg.student is not None:
        check_student(cfg)
        mixer = cfg.student.mixer
    matched = [s for s in stages if getattr(s, "attention_weight", 0) > 0]
    if matched and mixer != "attention":
        if mixer not in mixers_with_matrix():
            raise WavedistillError(f"attention_weight > 0 matches attention maps or a wave mixer's materialised mixing "
                                   f"matrix; {mixer!r} has none. Mixers with one: {', '.join(mixers_with_matrix())} "
                                   "(or a separate student with --student-mixer attention)")
        if not get_mixer_class(mixer).mixing_rows_are_distributions and any(s.attention_loss == "kl" for s in matched):
            raise WavedistillError(f"the rows of {mixer!r}'s mixing matrix are not distributions over keys, so a KL "
                                   "to attention rows is undefined; set attention_loss: mse")


# settings of a conversion in place, at their defaults: a separate student refuses any other value
_CONVERSION_ONLY = {"wave_type": "learned_gate", "layers": None, "keep_attention": None, "keep_attention_every": 0,
                    "reinit": None, "unfreeze_mlps": False, "lora_mlp": 0}


def check_student(cfg: DistillConfig) -> None:
    """A separate student (``cfg.student``) leaves the in-place conversion settings alone and trains with kd
    stages only (one-line errors)."""
    clash = [k for k, default in _CONVERSION_ONLY.items() if getattr(cfg, k) != default]
    if clash:
        raise WavedistillError(f"{', '.join(clash)} convert the teacher in place; a separate student takes "
                               "--student-* settings instead (its mixer: --student-mixer, with --mixer-kwargs)")
    other = sorted({s.kind for s in recipe_stages(cfg)} - {"kd"})
    if other:
        raise WavedistillError(f"stages {other} train mixers inside the teacher; a separate student trains with kd "
                               "stages only")


def recipe_stages(cfg: DistillConfig, default_steps: int = 1) -> list[Stage]:
    """The run's stages; without ``stages``, one kd stage of ``max_steps`` (else ``default_steps``) with the run's
    loss flags (``cfg.loss``)."""
    if not cfg.train:
        return []
    if cfg.stages:
        return list(cfg.stages)
    return [KDStage(steps=cfg.max_steps or default_steps, **dataclasses.asdict(cfg.loss or KDLoss()))]
