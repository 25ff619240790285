"""What a separate, smaller student is (:class:`StudentSpec`: the ``student:`` settings of a run), parsed and checked
once when the config loads. Building it from the teacher is :mod:`wavedistill.training.student`."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import WavedistillError
from ..mixers import get_mixer_class

# (width, depth) as fractions of the teacher: the ratios of the sequence-model presets (64 / 32 / 24 wide,
# 6 / 4 / 3 deep).
PRESETS: dict[str, tuple[float, float]] = {"standard": (1.0, 1.0), "compressed": (0.5, 4 / 6), "tiny": (0.375, 0.5)}
INITS = ("teacher", "random")


@dataclass
class StudentSpec:
    """How to build the student; every size None = the preset's (or the teacher's)."""

    preset: str | None = None  # standard | compressed | tiny
    path: str | None = None  # a local Hugging Face model folder instead (its own shape and weights)
    layers: int | None = None
    hidden_size: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    intermediate_size: int | None = None
    mixer: str = "attention"  # attention keeps softmax attention; any other registered mixer replaces it
    init: str = "teacher"  # teacher (weight selection along the layer map) | random
    layer_map: str | list[int] = "uniform"


def check_choices(spec: StudentSpec) -> None:
    """The spec's named choices (preset, init) exist; one-line errors listing the known ones."""
    if spec.preset is not None and spec.preset not in PRESETS:
        raise WavedistillError(f"unknown student preset {spec.preset!r}; known: {', '.join(PRESETS)}")
    if spec.init not in INITS:
        raise WavedistillError(f"unknown student init {spec.init!r}; known: {', '.join(INITS)}")


def parse_student(student) -> StudentSpec:
    """A run's ``student`` mapping as a :class:`StudentSpec`; unknown keys, mixers, presets and inits raise."""
    known = [f.name for f in fields(StudentSpec)]
    if not isinstance(student, dict):
        raise WavedistillError(f"student must be a mapping of {', '.join(known)}")
    unknown = sorted(set(student) - set(known))
    if unknown:
        raise WavedistillError(f"unknown student keys {unknown}; known: {', '.join(known)}")
    spec = StudentSpec(**student)
    if spec.mixer != "attention":
        get_mixer_class(spec.mixer)
    check_choices(spec)
    sizes = [k for k in ("preset", "layers", "hidden_size", "heads", "kv_heads", "intermediate_size")
             if getattr(spec, k) is not None]
    if spec.path is not None and sizes:
        raise WavedistillError(f"a student folder ({spec.path}) has its own shape; drop {', '.join(sizes)}")
    return spec
