"""The sweep helper: the lr seed kept apart from the reported seeds, the choice, and the summaries over seeds."""

import pytest

from wavedistill.core.sweep import check_lr_seed, choose, fmt_spread, mean_sd, spread
from wavedistill.errors import WavedistillError


def test_the_lr_seed_must_not_be_a_reported_seed():
    check_lr_seed(100, [0, 1, 2])
    with pytest.raises(WavedistillError, match="--lr-seed 1 is also a reported seed"):
        check_lr_seed(1, [0, 1, 2])


def test_choose_takes_the_lowest_badness_and_the_first_of_equals():
    assert choose({1e-3: 0.30, 3e-3: 0.20, 1e-2: 0.25}, lambda kl: kl) == 3e-3
    assert choose({"a": (1, 0.5), "b": (1, 0.5)}, lambda r: r) == "a"
    with pytest.raises(WavedistillError, match="no trials"):
        choose({}, lambda r: r)


def test_spread_and_mean_sd():
    assert spread([3, None, 1, 2]) == {"median": 2, "min": 1, "max": 3}
    assert spread([None]) is None and fmt_spread(None) == "—"
    assert fmt_spread(spread([0.5, 0.25, 1.0]), "{:.2f}") == "0.50 [0.25, 1.00]"
    assert mean_sd([1.0, 2.0, 3.0], ".2f") == "2.00 ± 1.00"
    with pytest.raises(WavedistillError, match="at least two seeds"):
        mean_sd([1.0])
