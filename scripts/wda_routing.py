"""How a trained `wda` student routes: per layer, the mean mixture weight of each mask and how much the
weights vary from token to token, on the held-out test windows of the run.

usage: python scripts/wda_routing.py RUN_DIR [RUN_DIR ...]     (runs of `wavedistill distill --wave-type wda`)
A router that learned nothing would give every token the same weights (token std 0); the untrained
student's router is random (token std about 0.10 on stories260K, see docs/results.md).
"""

import json
import sys

import torch
import yaml

from wavedistill.data import eval_windows, read_documents, split_documents
from wavedistill.io import load_student
from wavedistill.surgery import wave_attention_modules

for run in sys.argv[1:]:
    cfg = yaml.safe_load(open(f"{run}/config.yaml"))
    model, tok = load_student(run)
    windows = eval_windows(split_documents(read_documents(cfg["data"]), tok, cfg["val_frac"], cfg["test_frac"]).test,
                           cfg["seq_len"])[:16]
    weights = {}
    hooks = [m.mixer.router.register_forward_hook(
        lambda mod, args, out, i=i: weights.setdefault(i, []).append(out.detach()))
        for i, m in wave_attention_modules(model).items()]
    with torch.no_grad():
        model(windows, use_cache=False)
    for h in hooks:
        h.remove()
    report = {}
    for i, logits in weights.items():
        mixer = wave_attention_modules(model)[i].mixer
        pi = torch.cat(logits).view(-1, mixer.n_heads, mixer.n_masks).softmax(-1)  # (tokens, H, M)
        report[f"layer {i}"] = {"mean weight per mask": [round(v, 3) for v in pi.mean((0, 1)).tolist()],
                                "std over tokens (mean over heads, masks)": round(pi.std(0).mean().item(), 4)}
    print(json.dumps({"run": run, "tokens": int(windows.numel()), **report}, indent=2))
