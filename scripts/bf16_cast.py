"""How far a bf16 cast of each mixer is from its float32 self at 2,048 positions (issue 20, section 5).

For every case of the contract suite (tests/mixers/test_contract.py): relative L2 of the output of the bf16 cast
(weights and input in bf16, parameters kept by ``keep_float32`` aside) against float32, and of float32 on the
bf16-rounded input alone — what any bf16 model pays. The contract test asserts cast <= max(4 x input, 0.01).
usage: python scripts/bf16_cast.py [--length 2048]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tests.mixers.test_contract import CASES, D, make  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=2048)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| mixer (contract case) | bf16 cast | input rounding alone | ratio |\n|---|---:|---:|---:|")
    for case in CASES:
        name, kw = case.values
        m = make(name, kw, dtype=torch.float32)
        m16 = copy.deepcopy(m).to(torch.bfloat16)
        torch.manual_seed(0)
        x = torch.randn(1, args.length, D)
        with torch.no_grad():
            ref = m(x)
            cast = ((m16(x.bfloat16()).float() - ref).norm() / ref.norm()).item()
            rounding = ((m(x.bfloat16().float()) - ref).norm() / ref.norm()).item()
        print(f"| {case.id} | {cast:.4f} | {rounding:.4f} | {cast / rounding:.1f} |")


if __name__ == "__main__":
    main()
