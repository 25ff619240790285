"""Adapter round trip: the student reloaded in this (fresh) process reproduces the logits the training
process saved at the end of training (``final_logits.safetensors``, written by ``wavedistill distill``).

usage: python scripts/check_roundtrip.py RUN_DIR [RUN_DIR ...]
"""

import sys

import torch
from safetensors.torch import load_file

from wavedistill import load_student

for run in sys.argv[1:]:
    ref = load_file(f"{run}/final_logits.safetensors")
    student, _ = load_student(f"{run}/checkpoint")  # checkpoint/ = the state at the end of training
    with torch.no_grad():
        out = student(ref["input_ids"], use_cache=False).logits
    delta = (out - ref["logits"]).abs().max().item()
    print(f"{run}: max |dlogit| = {delta:.3g} over {ref['input_ids'].numel()} positions "
          f"({'ok' if delta <= 1e-6 else 'MISMATCH'})")
