"""Schedules: hand-off weights, temperatures and layer orders are pure functions of the step."""

import pytest

from wavedistill.errors import WavedistillError
from wavedistill.training.schedules import handoff_weights, layer_groups, layer_order, ramp, scheduled_temperature


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_ramp_goes_from_zero_to_one_monotonically_and_clips(shape):
    values = [ramp(p / 20, shape) for p in range(-2, 23)]
    assert values[0] == 0.0 and values[-1] == 1.0
    assert ramp(0.0, shape) == 0.0 and ramp(1.0, shape) == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert 0.0 < ramp(0.25, shape) < ramp(0.5, shape) < 1.0


def test_cosine_ramp_starts_slower_than_linear():
    assert ramp(0.1, "cosine") < ramp(0.1, "linear") and ramp(0.5, "cosine") == pytest.approx(0.5)


def test_together_handoff_rises_for_every_layer_and_holds_one_after_the_ramp():
    layers = [0, 2, 4]
    n = 100
    first = handoff_weights(0, n, layers)  # the first update already uses a > 0 (a = 0 trains nothing)
    assert set(first) == set(layers) and all(0 < a < 0.05 for a in first.values())
    assert handoff_weights(79, n, layers, ramp_frac=0.8) == {0: 1.0, 2: 1.0, 4: 1.0}
    assert all(a == 1.0 for a in handoff_weights(n - 1, n, layers).values())
    series = [handoff_weights(s, n, layers)[2] for s in range(n)]
    assert all(a <= b for a, b in zip(series, series[1:]))


def test_sequential_handoff_moves_one_layer_at_a_time_in_the_given_order():
    layers = [3, 1, 2]  # the order of hand-off, not sorted
    n = 90  # ramp 72 steps: 24 per layer
    for s in range(n):
        a = handoff_weights(s, n, layers, mode="sequential", ramp_frac=0.8)
        # A layer only starts once the one before it has fully handed over.
        assert a[1] == 0.0 or a[3] == 1.0, s
        assert a[2] == 0.0 or a[1] == 1.0, s
    assert handoff_weights(11, n, layers, mode="sequential")[3] == pytest.approx(0.5)
    assert handoff_weights(n - 1, n, layers, mode="sequential") == {3: 1.0, 1: 1.0, 2: 1.0}


def test_unknown_schedule_names_are_refused():
    with pytest.raises(WavedistillError, match="linear, cosine"):
        ramp(0.5, "step")
    with pytest.raises(WavedistillError, match="together, sequential"):
        handoff_weights(0, 10, [0], mode="random")


def test_temperature_schedules():
    assert scheduled_temperature(2.0, 1.0, "constant", 0.7) == 2.0
    assert scheduled_temperature(2.0, 1.0, "linear", 0.0) == 2.0
    assert scheduled_temperature(2.0, 1.0, "linear", 0.5) == pytest.approx(1.5)
    assert scheduled_temperature(2.0, 1.0, "cosine", 1.0) == pytest.approx(1.0)


@pytest.mark.parametrize("order,expected", [
    ("first_to_last", [0, 1, 2, 3, 4]),
    ("last_to_first", [4, 3, 2, 1, 0]),
    ("even_then_odd", [0, 2, 4, 1, 3]),
    ("easiest_first", [3, 0, 4, 1, 2]),
])
def test_layer_orders(order, expected):
    losses = {0: 0.2, 1: 0.5, 2: 0.9, 3: 0.1, 4: 0.2}  # 0 and 4 tie: the lower index first
    assert layer_order([4, 2, 0, 3, 1], order, losses) == expected


def test_easiest_first_needs_a_loss_for_every_layer_and_unknown_orders_fail():
    with pytest.raises(WavedistillError, match="transfer loss for every layer"):
        layer_order([0, 1], "easiest_first", {0: 1.0})
    with pytest.raises(WavedistillError, match="first_to_last"):
        layer_order([0, 1], "middle_out")


def test_layer_groups_cover_the_order_once():
    assert layer_groups([4, 3, 2, 1, 0], 2) == [[4, 3], [2, 1], [0]]
    assert layer_groups([0, 1], 5) == [[0, 1]]
