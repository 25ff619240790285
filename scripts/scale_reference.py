"""Reference points for the results table: the teacher against itself in bfloat16, and no mixing.

usage: python scripts/scale_reference.py TEACHER DATA [--seq-len 256]
Scores on the same test split `wavedistill distill` reports on (default fractions).
"""

import argparse
import json

import torch

from wavedistill.data import eval_windows, read_documents, split_documents
from wavedistill.evaluate import compare
from wavedistill.io import load_teacher

p = argparse.ArgumentParser()
p.add_argument("teacher")
p.add_argument("data")
p.add_argument("--seq-len", type=int, default=256)
args = p.parse_args()

teacher, tok = load_teacher(args.teacher)
bf16, _ = load_teacher(args.teacher, dtype=torch.bfloat16)
splits = split_documents(read_documents(args.data), tok, 0.05, 0.10)
windows = eval_windows(splits.test, args.seq_len)
m = compare(teacher, bf16, windows)
keys = ["positions", "top1_agreement", "top5_overlap", "teacher_top1_in_student_top5", "kl", "ppl_teacher",
        "ppl_student", "ppl_no_mixing", "no_mixing_top5_overlap", "no_mixing_kl"]
print(json.dumps({"student": "teacher in bfloat16", "seq_len": args.seq_len, **{k: m[k] for k in keys}}, indent=2))
