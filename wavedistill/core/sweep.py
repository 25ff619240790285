"""The one sweep helper: a learning rate chosen on a held-out seed, then the reported seeds summarised.

``lab compare --lr-sweep`` and the experiment scripts (``scripts/student_stories260k.py``, ``mohawk_stories260k.py``)
use it; what one trial is (a lab seed, a distillation run) and how it is scored stays theirs."""

from __future__ import annotations

import statistics
from typing import Callable, Hashable, Iterable

from ..errors import WavedistillError


def check_lr_seed(lr_seed: int, seeds: Iterable[int]) -> None:
    """The seed that chooses the lr must not be one of the reported seeds (its choice would be tuned on them)."""
    if lr_seed in list(seeds):
        raise WavedistillError(f"--lr-seed {lr_seed} is also a reported seed; choose a seed outside --seeds")


def choose(results: dict[Hashable, object], badness: Callable[[object], object]) -> Hashable:
    """The key of ``results`` (e.g. an lr) whose result has the lowest ``badness``; the first of equals."""
    if not results:
        raise WavedistillError("nothing to choose from: the sweep has no trials")
    return min(results, key=lambda k: badness(results[k]))


def spread(values: Iterable) -> dict | None:
    """Median and range of the values that exist (None are skipped); None when there are none."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def fmt_spread(s: dict | None, fmt: str = "{:.0f}") -> str:
    """``median [min, max]``, or a dash for None."""
    if s is None:
        return "—"
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}, {fmt.format(s['max'])}]"


def mean_sd(values: Iterable[float], fmt: str = ".3f") -> str:
    """``mean ± sample standard deviation`` of two or more values."""
    xs = list(values)
    if len(xs) < 2:
        raise WavedistillError(f"a mean ± sd needs at least two seeds, got {len(xs)}")
    return f"{statistics.mean(xs):{fmt}} ± {statistics.stdev(xs):{fmt}}"
