"""Layer maps: every strategy's stated mapping, strictly increasing and in range; bad maps are one-line errors."""

from __future__ import annotations

import pytest

from wavedistill.errors import WavedistillError
from wavedistill.training.layer_map import STRATEGIES, layer_map


@pytest.mark.parametrize("strategy,n_t,n_s,expected", [
    ("uniform", 12, 6, [1, 3, 5, 7, 9, 11]),
    ("uniform", 5, 2, [1, 4]),
    ("uniform", 28, 28, list(range(28))),
    ("first", 5, 2, [0, 1]),
    ("last", 5, 2, [3, 4]),
    ("zones", 12, 6, [0, 1, 5, 9, 10, 11]),  # 2 dense early, 2 spread over layers 2..9, 2 dense late
    ("zones", 5, 1, [4]),
    ([0, 2, 4], 5, 3, [0, 2, 4]),
])
def test_each_strategy_gives_its_documented_map(strategy, n_t, n_s, expected):
    assert layer_map(strategy, n_t, n_s) == expected


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("n_t", [1, 2, 5, 12, 28, 36])
def test_every_strategy_is_strictly_increasing_and_in_range_for_every_depth(strategy, n_t):
    for n_s in range(1, n_t + 1):
        m = layer_map(strategy, n_t, n_s)
        assert len(m) == n_s and all(0 <= i < n_t for i in m) and all(b > a for a, b in zip(m, m[1:])), (n_s, m)


@pytest.mark.parametrize("strategy,n_t,n_s,message", [
    ("diagonal", 5, 2, "unknown layer map 'diagonal'; known: first, last, uniform, zones"),
    ("uniform", 2, 3, "the student has 3 layers, the teacher only 2"),
    ([0, 7], 5, 2, r"layer map entries \[7\] out of range: the teacher has layers 0..4"),
    ([0], 5, 2, "names 1 teacher layers for a student of 2 layers"),
    ([3, 1], 5, 2, "must be strictly increasing"),
    ("uniform", 5, 0, "at least one layer"),
])
def test_bad_maps_are_one_line_errors(strategy, n_t, n_s, message):
    with pytest.raises(WavedistillError, match=message):
        layer_map(strategy, n_t, n_s)
