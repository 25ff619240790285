"""Seeded task generators for the lab; nothing is downloaded. ``TASKS`` maps a name to its class.

Every task yields ``(inputs, targets, padding_mask)`` batches:
* ``inputs``: (B, T) token ids; ``padding_mask``: (B, T) bool, True = real token, or None;
* ``targets``: (B, T) next-token targets with ``IGNORE`` (-100) where nothing is scored (language
  tasks), or (B,) class labels (``kind == "classify"``);
* ``kind == "regress"``: inputs are (B, T, in_features) real vectors and targets (B, T, out_features).
"""

from __future__ import annotations

import inspect

from ...errors import WavedistillError
from .algorithmic import Copy, Reverse, Sort
from .base import IGNORE, Task
from .charlm import CharLM
from .classify import Classify
from .event_hold import EventHold
from .modular import Modular
from .mqar import MQAR
from .stories import Stories

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (Modular, Copy, Reverse, Sort, MQAR, CharLM, Stories,
                                                               Classify, EventHold)}


def check_task_options(name: str, kwargs: dict) -> type[Task]:
    """The task class, if ``name`` is known and takes every option in ``kwargs``; else a clear error."""
    if name not in TASKS:
        raise WavedistillError(f"unknown lab task {name!r}; known tasks: {', '.join(TASKS)}")
    cls = TASKS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "seed")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise WavedistillError(f"task {name!r} got unknown options {unknown}; it accepts {accepted}")
    return cls


def build_task(name: str, seed: int, **kwargs) -> Task:
    return check_task_options(name, kwargs)(seed=seed, **kwargs)


__all__ = ["IGNORE", "TASKS", "Task", "build_task", "check_task_options"]
