"""Standard errors: the cluster-robust ratio against its textbook forms."""

from __future__ import annotations

import math
import random

import pytest

from wavedistill.evals.stats import mean_se, ratio_se


def test_mean_se_is_the_sample_sd_over_root_n():
    xs = [0.2, 0.5, 0.9, 0.4]
    mean, se = mean_se(xs)
    sd = math.sqrt(sum((x - 0.5) ** 2 for x in xs) / 3)
    assert mean == pytest.approx(0.5) and se == pytest.approx(sd / 2)


def test_ratio_with_equal_cluster_sizes_reduces_to_the_mean_of_cluster_rates():
    rng = random.Random(0)
    hits = [rng.randint(0, 50) for _ in range(12)]
    ratio, se, n = ratio_se(hits, [50] * 12)
    mean, mean_err = mean_se([h / 50 for h in hits])
    assert n == 600 and ratio == pytest.approx(mean) and se == pytest.approx(mean_err)


def test_ratio_weights_clusters_by_size_and_skips_empty_ones():
    ratio, se, n = ratio_se([1, 9, 5], [10, 10, 0])
    assert (ratio, n) == (pytest.approx(0.5), 20)
    # two clusters at 0.1 and 0.9 around 0.5: k / (k - 1) * sum((a - R n)^2) / N^2
    assert se == pytest.approx(math.sqrt(2 * (16 + 16) / 400))


def test_too_little_data_gives_nan_not_an_error():
    assert math.isnan(mean_se([])[0]) and math.isnan(mean_se([1.0])[1])
    assert math.isnan(ratio_se([3], [4])[1]) and ratio_se([3], [4])[0] == 0.75
    assert ratio_se([], [])[2] == 0
