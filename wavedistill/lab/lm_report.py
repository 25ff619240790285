"""``wavedistill lab lm-report RUN_DIR ...``: the language-model table of finished ``stories`` runs.

One row per run folder (a ``lab compare`` mixer folder with its seeds): parameters with and without the embeddings
and read-out, training tokens and tokens per second, test perplexity (median [min, max] over seeds, every test
token scored), decode milliseconds per token after two context lengths (seed 0's model, batch 1, one thread,
:mod:`wavedistill.lab.decode`), and induction accuracy (:func:`wavedistill.evals.recall.induction`: L random
ordinary tokens after BOS, then the same L again; accuracy on tokens 2..L of the copy, median over seeds).
Beside it: held-out loss against training tokens for every seed of every run, greedy continuations of test
story openings side by side, and for mixers that route (``wda``) how the mixture weights vary across test tokens,
trained against the same model at its initialisation. Files are written only once everything is measured.
"""

from __future__ import annotations

import json
import os
import statistics
from types import SimpleNamespace

import torch
from torch import nn

from ..core.run_folder import check_not_file, contents, describe, write_json_atomic
from ..core.sweep import fmt_spread
from ..errors import WavedistillError
from ..evals.recall import induction
from ..io import write_text
from .analysis import load_seed, plot_compare, read_log
from .config import make_lab_config
from .decode import decode_ms_per_token, greedy
from .model import build_model, param_counts

LENGTHS = (32, 64, 128)
CONTEXTS = (256, 2048)
REPORT_MD, REPORT_JSON, REPORT_PNG = "report.md", "report.json", "loss_vs_tokens.png"
REPORT_FILES = (REPORT_MD, REPORT_JSON, REPORT_PNG)


class CausalLMView(nn.Module):
    """A lab model as the recall probes call a causal LM: ``model(ids, use_cache=False).logits`` (B, T, V)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, use_cache: bool = False):
        return SimpleNamespace(logits=self.model.logits(self.model(input_ids)))


def read_run(run_dir: str, tasks: dict) -> tuple[dict, list[tuple[int, object, object, object]]]:
    """(summary.json, [(seed, cfg, task, model)]) of a finished stories run folder; one-line errors otherwise.
    ``tasks``: :func:`.analysis.load_seed`'s cache, so the corpus is tokenized once for every run read."""
    path = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(path):
        raise WavedistillError(f"{run_dir!r} has no summary.json: pass a finished `lab compare` mixer folder "
                               "(e.g. runs/lab/stories/pure/attention)")
    with open(path) as f:
        summary = json.load(f)
    if summary.get("task") != "stories":
        raise WavedistillError(f"{run_dir!r} is a {summary.get('task')!r} run; lm-report reads stories runs")
    seeds = [(int(s), *load_seed(os.path.join(run_dir, f"seed_{s}"), tasks)) for s in summary["seeds"]]
    return summary, seeds


def routing(model, x: torch.Tensor) -> list[dict] | None:
    """Per routing layer: the mean mixture weight of each mask and their standard deviation over tokens (mean over
    heads and masks), on ``x`` (B, T); None for a model without a router."""
    weights = {}

    def keep(i: int):
        def hook(mod, args, out) -> None:  # a forward hook that returned a value would replace the output
            weights[i] = mod.mixture_weights(args[0]).flatten(0, 1)  # (B * T, H, M)
        return hook

    hooks = [b.mixer.register_forward_hook(keep(i)) for i, b in enumerate(model.blocks)
             if getattr(b.mixer, "router", None) is not None]
    if not hooks:
        return None
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return [{"layer": i, "mean_weight_per_mask": [round(v, 3) for v in pi.mean((0, 1)).tolist()],
             "std_over_tokens": round(pi.std(0).mean().item(), 4)} for i, pi in sorted(weights.items())]


def measure_run(run_dir: str, summary: dict, seeds: list, lengths, contexts, n_sequences: int) -> dict:
    """Everything the row of one run needs, measured on its seeds' saved models."""
    _, cfg, task, model = seeds[0]
    counts = param_counts(model)
    ind = {}
    for seed, _, _, m in seeds:
        res = induction(SimpleNamespace(student=CausalLMView(m), teacher=None, vocab=task.vocab_size), task.tokenizer,
                        ["student"], lengths, n_sequences=n_sequences, context=m.max_len)
        ind[seed] = {L: res["lengths"][str(L)]["student"]["accuracy"]["value"] for L in lengths}
    torch.set_num_threads(1)  # decode timings of every row under the same single thread
    decode = {P: decode_ms_per_token(model, P) for P in contexts}
    x = task.test_x[:16]
    route = routing(model, x)
    if route is not None:
        torch.manual_seed(seeds[0][0])  # the untrained model: the run's initialisation distribution, same seed
        route = {"trained": route, "untrained": routing(build_model(cfg, task).eval(), x), "tokens": x.numel()}
    first = next(iter(summary["seeds"].values()))
    return {"name": label(cfg), "late_drop": late_drop(run_dir, seeds), "mixer": cfg.mixer, "params": counts["total"],
            "non_embedding_params": counts["non_embedding"], "d_mlp": first["d_mlp"], "lr": summary["config"]["lr"],
            "train_tokens": first["train_tokens"], "train_tokens_per_s": summary["train_tokens_per_s"],
            "test_ppl": summary["final_test_ppl"], "test_tokens": first["test_targets"], "seeds": list(ind),
            "decode_ms_per_token": decode, "induction_accuracy": ind, "induction_chance": res["chance"],
            "routing": route}


def late_drop(run_dir: str, seeds: list, last_tokens_share: float = 1 / 6) -> dict[int, float]:
    """Per seed, how much the test loss fell over the last ``last_tokens_share`` of training (from the last
    evaluation at or before that point to the final one): near 0 = the curve has flattened."""
    out = {}
    for seed, *_ in seeds:
        rows = read_log(os.path.join(run_dir, f"seed_{seed}"))
        cut = rows[-1]["train_tokens"] * (1 - last_tokens_share)
        before = [r for r in rows if r["train_tokens"] <= cut][-1]
        out[seed] = before["test_loss"] - rows[-1]["test_loss"]
    return out


def label(cfg) -> str:
    return cfg.mixer + (" " + json.dumps(cfg.mixer_kwargs) if cfg.mixer_kwargs else "")


def table(rows: list[dict], lengths, contexts) -> str:
    head = ["model", "params (non-emb.)", "d_mlp", "lr", "train tokens", "train tok/s", "train wall s", "test ppl",
            "test loss fall, last 1/6",
            *[f"decode ms/tok @{P}" for P in contexts], *[f"induction L={L}" for L in lengths]]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        ind = [statistics.median(a[L] for a in r["induction_accuracy"].values()) for L in lengths]
        lines.append("| " + " | ".join([f"`{r['name']}`", f"{r['params']:,} ({r['non_embedding_params']:,})",
                                        str(r["d_mlp"]), f"{r['lr']:g}", f"{r['train_tokens']:,}",
                                        fmt_spread(r["train_tokens_per_s"]),
                                        f"{r['train_tokens'] / r['train_tokens_per_s']['median']:.0f}",
                                        fmt_spread(r["test_ppl"], "{:.2f}"),
                                        f"{statistics.median(r['late_drop'].values()):.3f}",
                                        *[f"{r['decode_ms_per_token'][P]:.2f}" for P in contexts],
                                        *[f"{a:.3f}" for a in ind]]) + " |")
    return "\n".join(lines) + "\n"


def sample_block(runs: list[tuple[dict, list]], n_prompts: int, prompt_tokens: int, new_tokens: int) -> str:
    """Greedy continuations of the first ``n_prompts`` test documents' openings, every run's seed-0 model."""
    task = runs[0][1][0][2]
    tok = task.tokenizer
    bos = tok.bos_token_id
    starts = [i for i, t in enumerate(task.splits.test.tolist()) if t == bos][:n_prompts]
    out = []
    for s in starts:
        prompt = task.splits.test[s: s + prompt_tokens][None]
        out.append(f"**prompt** (test story opening): {tok.decode(prompt[0], skip_special_tokens=True)!r}\n")
        for summary, seeds in runs:
            cont = greedy(seeds[0][3], prompt, new_tokens)[0]
            out.append(f"- `{label(seeds[0][1])}`: {tok.decode(cont, skip_special_tokens=True)!r}")
        out.append("")
    return "\n".join(out) + "\n"


def check_report_dir(output_dir: str, run_dirs: list[str]) -> None:
    """Refuse, before anything is measured, a folder holding another report (of other runs) or files lm-report did
    not write; a report of the same runs is replaced."""
    check_not_file(output_dir)
    present = set(contents(output_dir))
    if REPORT_JSON in present:
        with open(os.path.join(output_dir, REPORT_JSON)) as f:
            before = [os.path.realpath(d) for d in json.load(f).get("runs", [])]
        if before != [os.path.realpath(d) for d in run_dirs]:
            raise WavedistillError(f"{output_dir!r} holds the report of other runs; pass another --output-dir")
    foreign = sorted(present - set(REPORT_FILES))
    if foreign or (present and REPORT_JSON not in present):
        raise WavedistillError(f"{output_dir!r} holds files lm-report did not write ({describe(sorted(present))}); "
                               "pass another --output-dir")


def lm_report(run_dirs: list[str], output_dir: str, lengths=LENGTHS, contexts=CONTEXTS, n_sequences: int = 100,
              n_prompts: int = 3, prompt_tokens: int = 12, new_tokens: int = 40) -> str:
    if not run_dirs:
        raise WavedistillError("lm-report needs at least one run folder")
    check_report_dir(output_dir, run_dirs)
    tasks: dict = {}
    runs = [read_run(d, tasks) for d in run_dirs]
    rows = []
    for d, (s, seeds) in zip(run_dirs, runs):
        print(f"lm-report: measuring {d} ({len(seeds)} seeds)", flush=True)
        rows.append(measure_run(d, s, seeds, lengths, contexts, n_sequences))
    info = runs[0][1][0][2].describe()
    text = (f"# Language models from scratch: test perplexity over {info['scored_test_tokens']:,} tokens of "
            f"{info['documents']['test']:,} held-out documents\n\n"
            + table(rows, lengths, contexts)
            + f"\ninduction chance: {rows[0]['induction_chance']:.4f}; {n_sequences} sequences per L and seed; decode: "
            "median of 32 steps after the context, batch 1, one thread\n\n## Greedy samples (seed 0)\n\n"
            + sample_block(runs, n_prompts, prompt_tokens, new_tokens))
    routed = [r for r in rows if r["routing"]]
    for r in routed:
        text += f"\n## Routing of `{r['name']}` ({r['routing']['tokens']:,} test tokens, seed {r['seeds'][0]})\n\n"
        text += ("| layer | trained: std over tokens | untrained | trained: mean weight per mask |\n"
                 "|---:|---:|---:|---|\n")
        for a, b in zip(r["routing"]["trained"], r["routing"]["untrained"]):
            text += f"| {a['layer']} | {a['std_over_tokens']:.3f} | {b['std_over_tokens']:.3f} | " \
                    f"{a['mean_weight_per_mask']} |\n"
    os.makedirs(output_dir, exist_ok=True)
    cfgs = [make_lab_config({**s["config"], "seeds": [int(k) for k in s["seeds"]], "output_dir": d})
            for d, (s, _) in zip(run_dirs, runs)]
    plot_compare(cfgs, os.path.join(output_dir, REPORT_PNG))
    write_json_atomic(os.path.join(output_dir, REPORT_JSON), {"runs": run_dirs, "rows": rows})
    write_text(os.path.join(output_dir, REPORT_MD), text)
    print(text)
    print(f"written to {output_dir}: {', '.join(REPORT_FILES)}")
    return text
