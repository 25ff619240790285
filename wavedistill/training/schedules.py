"""Pure schedule functions: hand-off weights, temperatures and layer orders, from (step, config) alone.

Nothing here holds state, so a resumed run recomputes exactly the values the killed run used.
"""

from __future__ import annotations

import math

from ..errors import WavedistillError


def ramp(progress: float, shape: str) -> float:
    """0 -> 1 as ``progress`` goes 0 -> 1 (clipped): ``linear`` or ``cosine`` (slow start and end)."""
    p = min(max(progress, 0.0), 1.0)
    if shape == "linear":
        return p
    if shape == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * p))
    raise WavedistillError(f"unknown ramp shape {shape!r}; known: linear, cosine")


def handoff_weights(step: int, n_steps: int, layers: list[int], shape: str = "linear", mode: str = "together",
                    ramp_frac: float = 0.8) -> dict[int, float]:
    """Mixer share ``a`` per layer for the update at ``step`` (0-based) of an ``n_steps`` hand-off.

    The ramp starts from a = 0 (the teacher exactly) before the first update, so update s uses
    progress ``(s + 1) / (ramp_frac * n_steps)``; a is 1 from update ``ramp_frac * n_steps - 1`` on.
    ``together``: every layer on the same ramp. ``sequential``: the ramp period is cut into one
    slice per layer, in the order of ``layers``; a layer ramps in its slice, after the ones before it.
    """
    ramp_steps = max(1.0, ramp_frac * n_steps)
    done = step + 1
    if mode == "together":
        a = ramp(done / ramp_steps, shape)
        return {i: a for i in layers}
    if mode == "sequential":
        width = ramp_steps / len(layers)
        return {i: ramp((done - j * width) / width, shape) for j, i in enumerate(layers)}
    raise WavedistillError(f"unknown hand-off mode {mode!r}; known: together, sequential")


def scheduled_temperature(start: float, end: float, shape: str, progress: float) -> float:
    """Temperature at ``progress`` in [0, 1]: ``constant`` = start; ``linear`` / ``cosine`` go start -> end."""
    if shape == "constant":
        return start
    return start + (end - start) * ramp(progress, shape)


def layer_order(layers: list[int], order: str, losses: dict[int, float] | None = None) -> list[int]:
    """The order in which layers are converted or handed off.

    ``easiest_first`` sorts by ``losses`` (per-layer transfer loss, lowest first; ties by index).
    """
    layers = sorted(layers)
    if order == "first_to_last":
        return layers
    if order == "last_to_first":
        return layers[::-1]
    if order == "even_then_odd":
        return [i for i in layers if i % 2 == 0] + [i for i in layers if i % 2 == 1]
    if order == "easiest_first":
        if losses is None or set(losses) < set(layers):
            raise WavedistillError("easiest_first needs a transfer loss for every layer")
        return sorted(layers, key=lambda i: (losses[i], i))
    raise WavedistillError(f"unknown layer order {order!r}; known: first_to_last, last_to_first, even_then_odd, "
                           "easiest_first")


def layer_groups(ordered: list[int], group_size: int) -> list[list[int]]:
    """Consecutive groups of ``group_size`` layers (the last one may be shorter)."""
    return [ordered[i: i + group_size] for i in range(0, len(ordered), group_size)]
