"""A converted model cast to bfloat16 must compute the student it was in float32, not another one.

The reference for "the same model" is the teacher itself: stories260K in bf16 agrees with its fp32 self
on ~98 % of top-5 sets on real text. Every mixer's student must agree with its fp32 self as well,
which fails if a cast rounds a constant (an EMA decay of 1 - 1/741 becomes 1.0 in bf16 and its filter
vanishes) or if an FFT or a running sum runs in bf16.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import SHARED_DIR
from wavedistill.evaluate import compare
from wavedistill.mixers import list_mixers
from wavedistill.surgery import convert

TEXT = SHARED_DIR / "corpora" / "tinystories" / "stories.txt"


@pytest.fixture(scope="module")
def windows():
    from transformers import AutoTokenizer

    if not TEXT.exists():
        pytest.skip("../shared/corpora/tinystories not found: this test runs in CI where ../shared exists")
    tok = AutoTokenizer.from_pretrained(SHARED_DIR / "teachers" / "stories260K")
    ids = tok(TEXT.read_text()[-40_000:], return_tensors="pt").input_ids[0]  # the end of the file
    return ids[: 8 * 256].view(8, 256)


def _top5(a, b, windows) -> float:
    return compare(a, b, windows, with_baseline=False)["top5_overlap"]


@pytest.mark.parametrize("mixer", list_mixers())
def test_bf16_student_agrees_with_its_fp32_self_as_the_teacher_does(stories260k, windows, mixer):
    teacher32 = stories260k
    reference = _top5(teacher32, copy.deepcopy(teacher32).to(torch.bfloat16), windows)
    student32 = copy.deepcopy(teacher32)
    torch.manual_seed(0)  # parts not copied from the teacher (wave_network's second wave) start random
    convert(student32, mixer)
    student16 = copy.deepcopy(student32).to(torch.bfloat16)
    agreement = _top5(student32, student16, windows)
    assert reference >= 0.97, f"the bf16 teacher itself agrees only {reference:.3f}"
    assert agreement >= 0.97, (f"{mixer} in bf16 agrees with its fp32 self on {agreement:.3f} of top-5 sets "
                               f"(the teacher: {reference:.3f})")
