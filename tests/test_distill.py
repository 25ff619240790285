"""Unit tests of the distill loop's pieces that need no model: hybrid layer choice and the lr schedule."""

import pytest

from wavedistill.config import DistillConfig
from wavedistill.distill import lr_lambda, wave_layers
from wavedistill.errors import WavedistillError


@pytest.mark.parametrize("changes,expected", [
    ({}, [0, 1, 2, 3, 4]),
    ({"keep_attention": [0, 3]}, [1, 2, 4]),
    ({"keep_attention_every": 2}, [1, 3]),  # keeps 0, 2, 4
    ({"keep_attention": [1], "keep_attention_every": 4}, [2, 3]),  # keeps 0, 1, 4
    ({"layers": [1, 2]}, [1, 2]),
], ids=["all", "keep-0-3", "every-2", "both", "explicit-layers"])
def test_wave_layers_removes_the_layers_kept_as_attention(changes, expected):
    assert wave_layers(DistillConfig(**changes), n_layers=5) == expected


@pytest.mark.parametrize("changes,needle", [
    ({"keep_attention": [7]}, "out of range"),
    ({"layers": [1, 2], "keep_attention": [2]}, "both in --layers and kept"),
    ({"keep_attention_every": 1}, "nothing to convert"),
], ids=["out-of-range", "conflict", "all-kept"])
def test_wave_layers_refuses_contradictions(changes, needle):
    with pytest.raises(WavedistillError, match=needle):
        wave_layers(DistillConfig(**changes), n_layers=5)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = DistillConfig(warmup_steps=10, min_lr_ratio=0.1)
    f = lr_lambda(cfg, total_steps=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(110) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone after warm-up
