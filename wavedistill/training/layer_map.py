"""Layer maps: which teacher layer each layer of a shallower student is initialised from and matched to.

A map is a list ``m`` of length ``n_student``: student layer ``i`` corresponds to teacher layer ``m[i]``
(its weights initialise it where shapes allow; its output is the target of a feature loss; its
attention pattern the target of an attention-map loss). Every map is strictly increasing, so the
student keeps the teacher's order of processing.

Strategies (a registry: unknown names raise with the list):

* ``uniform`` -- evenly spaced, ending on the teacher's last layer: ``m[i] = round((i + 1) n_t / n_s) - 1``
  (DistilBERT / TinyBERT's "every k-th layer").
* ``first`` / ``last`` -- the first / last ``n_s`` teacher layers.
* ``zones`` -- the three-zone scheme of LLM distillation pipelines: the first third of the student's
  layers map one to one onto the teacher's first layers (dense: early features are the most generic),
  the last third onto the teacher's last layers (they shape the output distribution and attention
  patterns that the attention-map loss matches), and the middle third is spread evenly (progressive)
  over the teacher layers in between.
* an explicit list of teacher layers, e.g. ``[0, 3, 5]``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import WavedistillError

STRATEGIES: dict[str, Callable[[int, int], list[int]]] = {}


def register_strategy(name: str):
    def add(fn):
        STRATEGIES[name] = fn
        return fn
    return add


def _spread(lo: int, hi: int, n: int) -> list[int]:
    """``n`` strictly increasing layers in [lo, hi), evenly spaced, the last at hi - 1 (n <= hi - lo)."""
    width = hi - lo
    return [lo + round((i + 1) * width / n) - 1 for i in range(n)]


@register_strategy("uniform")
def uniform(n_teacher: int, n_student: int) -> list[int]:
    return _spread(0, n_teacher, n_student)


@register_strategy("first")
def first(n_teacher: int, n_student: int) -> list[int]:
    return list(range(n_student))


@register_strategy("last")
def last(n_teacher: int, n_student: int) -> list[int]:
    return list(range(n_teacher - n_student, n_teacher))


@register_strategy("zones")
def zones(n_teacher: int, n_student: int) -> list[int]:
    n_early = n_student // 3
    n_late = n_student // 3
    n_mid = n_student - n_early - n_late
    early = list(range(n_early))
    late = list(range(n_teacher - n_late, n_teacher))
    return early + _spread(n_early, n_teacher - n_late, n_mid) + late


def layer_map(strategy: str | list[int], n_teacher: int, n_student: int) -> list[int]:
    """The teacher layer of each student layer (see the module docstring); a one-line error for bad input."""
    if n_student < 1:
        raise WavedistillError(f"the student needs at least one layer, got {n_student}")
    if n_student > n_teacher:
        raise WavedistillError(f"a layer map pairs each student layer with a distinct teacher layer: the student has "
                               f"{n_student} layers, the teacher only {n_teacher}")
    if isinstance(strategy, str):
        if strategy not in STRATEGIES:
            raise WavedistillError(f"unknown layer map {strategy!r}; known: {', '.join(sorted(STRATEGIES))} or a "
                                   "list of teacher layers such as [0, 3, 5]")
        chosen = STRATEGIES[strategy](n_teacher, n_student)
    else:
        chosen = [int(i) for i in strategy]
        if len(chosen) != n_student:
            raise WavedistillError(f"the layer map {chosen} names {len(chosen)} teacher layers for a student of "
                                   f"{n_student} layers; give one per student layer")
        bad = [i for i in chosen if not 0 <= i < n_teacher]
        if bad:
            raise WavedistillError(f"layer map entries {bad} out of range: the teacher has layers 0..{n_teacher - 1}")
        if any(b <= a for a, b in zip(chosen, chosen[1:])):
            raise WavedistillError(f"the layer map {chosen} must be strictly increasing (the student keeps the "
                                   "teacher's order of layers)")
    return chosen
