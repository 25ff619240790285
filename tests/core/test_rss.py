"""The resident-memory high-water mark can be reset, so a measurement counts only what it allocated."""

from __future__ import annotations

import sys

import pytest
import torch

from wavedistill.core.rss import peak_mb, reset_peak, rss_mb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/clear_refs is Linux's")
def test_the_peak_after_a_reset_excludes_an_earlier_larger_allocation():
    big = torch.ones(64 * 2**20)  # 256 MiB, touched
    del big
    assert peak_mb() - rss_mb() > 200, "the earlier 256 MiB is in the high-water mark"
    assert reset_peak()
    base = rss_mb()
    small = torch.ones(16 * 2**20)  # 64 MiB
    assert 50 < peak_mb() - base < 150, "only the 64 MiB allocated after the reset"
    del small
