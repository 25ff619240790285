"""The recipe stages that the three repro students (scripts/stories260k_students.sh) parse to, as JSON: run it on two
checkouts and compare, to show a config change left what they train unchanged. Issue 21: at 41df7c1 and after the
typed-config commit the outputs are equal.

usage: PYTHONPATH=CHECKOUT python scripts/recipe_stages_of_students.py > stages.json   (from the repository root)
"""
import dataclasses
import json

from wavedistill.cli.args import distill_config
from wavedistill.cli.parser import build_parser
from wavedistill.training.config import recipe_stages
T, D = "../shared/teachers/stories260K", "../shared/corpora/tinystories/stories.txt"
cmds = {
 "learned_gate": ["distill", "--recipe", "configs/transfer_kd.yaml", "--wave-type", "learned_gate"],
 "rotary_gla": ["distill", "--recipe", "configs/transfer_kd.yaml", "--wave-type", "rotary_gla", "--mixer-kwargs",
                '{"feature_dim": 64}', "--kl-weight", "1.0", "--ce-weight", "0"],
 "compressed_attention": ["kd", "--student", "compressed", "--batch-size", "16", "--seq-len", "256", "--seed", "0",
                          "--max-steps", "800", "--lr", "3e-3", "--kl-weight", "0.9", "--ce-weight", "0.1",
                          "--eval-every", "100", "--save-every", "200"]}
out = {}
for name, c in cmds.items():
    args = build_parser().parse_args([*c, "--teacher", T, "--data", D, "--output-dir", "/tmp/x_" + name])
    cfg = distill_config(args)
    out[name] = [dataclasses.asdict(s) for s in recipe_stages(cfg, default_steps=123)]
print(json.dumps(out, sort_keys=True))
