"""``wavedistill layers``: which layers are hardest to distill?

1. A ``transfer`` run trains a mixer in every layer at once on its layer's attention output
   (an ordinary distill run in ``OUT/transfer``, so it is logged, checkpointed and resumable).
2. On every held-out **val** window (never test: the report is what layers to keep as attention are
   chosen from), for each layer i:
   * ``transfer_loss``: the trained mixer's attention-output loss on the teacher's own inputs;
   * ``kl_only_this_layer``: KL(teacher || student) where *only* layer i is replaced by its mixer;
   * ``kl_attention_zeroed``: the same with layer i's attention output zeroed instead, for scale
     (how much the layer's token mixing matters at all).
3. With ``select_keep = K``: which K layers to keep as softmax attention, chosen greedily on val. From the
   student with every layer converted, each step puts back the teacher's attention in the one converted
   layer that lowers val KL(teacher || student) most, keeping the others converted (KL-guided layer
   selection). The order, the val KL after each choice and the list ``distill --keep-attention`` takes
   (``keep_attention.txt``) are written.
``from_run``: score a finished run's student instead of training the transfer run.
Writes ``layers.json``, ``layers.md`` (a table) and ``layers.png`` (bars per layer).
"""

from __future__ import annotations

import copy
import json
import os


from ..core.configs import to_yaml
from ..core.devices import DTYPES
from ..data import eval_windows, run_splits
from ..errors import WavedistillError
from ..evaluate import attention_zeroed, compare
from ..io import adapter_dir, apply_adapter, load_teacher
from ..surgery import attach_wave, detach_wave, wave_attention_modules
from ..training.config import check_same_run, make_config
from ..training.distill import resumable, run
from ..training.stages.transfer import held_out_layer_losses
from .runs import read_run_config


def run_layer_report(cfg, output_dir: str, select_keep: int | None = None, from_run: str | None = None) -> list[dict]:
    if os.path.exists(os.path.join(output_dir, "layers.json")):
        raise WavedistillError(f"{output_dir!r} already holds a layer report; choose another --output-dir")
    run_cfg, adapter = _student_run(cfg, output_dir, from_run, select_keep)
    teacher, tokenizer = load_teacher(run_cfg.teacher, dtype=DTYPES[run_cfg.dtype], device=run_cfg.device)
    splits = run_splits(run_cfg.data, tokenizer, n_samples=run_cfg.n_samples, val_frac=run_cfg.val_frac,
                        test_frac=run_cfg.test_frac)
    # val, never test: this report is what a user picks the layers to keep as attention from
    windows = eval_windows(splits.val, run_cfg.seq_len)
    student = apply_adapter(copy.deepcopy(teacher), adapter).eval()
    modules = wave_attention_modules(student)
    if select_keep and select_keep >= len(modules):
        raise WavedistillError(f"--select-keep {select_keep}: the student converts {len(modules)} layers "
                               f"({sorted(modules)}); keep fewer than that")
    transfer = held_out_layer_losses(teacher, {i: m.mixer for i, m in modules.items()}, windows, device=run_cfg.device)
    detached = detach_wave(student, sorted(modules))  # the student is the teacher again
    rows = []
    for i in sorted(detached):
        attach_wave(student, {i: detached[i]})
        only = compare(teacher, student, windows, device=run_cfg.device, with_baseline=False)
        detach_wave(student, [i])
        with attention_zeroed(student, [i]):
            zeroed = compare(teacher, student, windows, device=run_cfg.device, with_baseline=False)
        rows.append({"layer": i, "transfer_loss": transfer[i], "kl_only_this_layer": only["kl"],
                     "top5_only_this_layer": only["top5_overlap"], "kl_attention_zeroed": zeroed["kl"],
                     "positions": only["positions"]})
        print(f"layer {i}: transfer loss {transfer[i]:.5f} | KL with only this layer replaced {only['kl']:.4f} | "
              f"KL with its attention zeroed {zeroed['kl']:.4f}")
    report = {"mixer": run_cfg.wave_type, "split": "val", "student": adapter, "rows": rows}
    if select_keep:
        attach_wave(student, detached)
        report["selection"] = select_layers_to_keep(teacher, student, windows, select_keep, run_cfg.device)
        report["keep_attention"] = sorted(report["selection"][-1]["kept"])
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "layers.json"), "w") as f:
        json.dump(report, f, indent=2)
    text = layer_table(rows) + (selection_table(report["selection"]) if select_keep else "")
    with open(os.path.join(output_dir, "layers.md"), "w") as f:
        f.write(text)
    with open(os.path.join(output_dir, "config.yaml"), "w") as f:
        f.write(to_yaml(run_cfg))
    plot_layers(rows, run_cfg.wave_type, os.path.join(output_dir, "layers.png"))
    print(text)
    if select_keep:
        keep = ",".join(map(str, report["keep_attention"]))
        with open(os.path.join(output_dir, "keep_attention.txt"), "w") as f:
            f.write(keep + "\n")
        print(f"keep as attention: {keep} (written to {output_dir}/keep_attention.txt; train the hybrid with "
              f"`wavedistill distill ... --keep-attention {keep}`)")
    return rows


def _student_run(cfg, output_dir: str, from_run: str | None, select_keep: int | None):
    """(the config of the run whose student is scored, its adapter folder): ``from_run``'s, or the report's own
    transfer run in ``OUT/transfer``, trained (or finished) here."""

    if from_run is not None:
        saved = read_run_config(from_run)
        if not saved or not os.path.isfile(os.path.join(from_run, "metrics.json")):
            raise WavedistillError(f"--from-run {from_run!r} is not a finished distill run folder (config.yaml and "
                                   "metrics.json); pass the output folder of a `wavedistill distill` run")
        if saved.get("student"):
            raise WavedistillError(f"--from-run {from_run!r} trained a separate student; the layer report scores a "
                                   "teacher converted in place")
        run_cfg = make_config({**saved, "output_dir": from_run, "resume": False, "overwrite": False})
    else:
        run_cfg = make_config({**cfg, "output_dir": os.path.join(output_dir, "transfer")})
    from transformers import AutoConfig  # lazy: transformers' Auto classes add ~0.4 s to every command's start

    if select_keep is not None and not 1 <= select_keep < AutoConfig.from_pretrained(run_cfg.teacher).num_hidden_layers:
        raise WavedistillError(f"--select-keep must be at least 1 and fewer than the teacher's layers, "
                               f"got {select_keep}")
    if from_run is not None:
        return run_cfg, adapter_dir(from_run)
    transfer_dir = run_cfg.output_dir
    if os.path.isfile(os.path.join(transfer_dir, "config.yaml")):
        # an interrupted report is finished from its own transfer run, never from one trained otherwise
        check_same_run(run_cfg, "pass the settings it was started with, or another --output-dir")
    if not os.path.isfile(os.path.join(transfer_dir, "metrics.json")):
        run(make_config({**cfg, "output_dir": transfer_dir, "resume": resumable(transfer_dir)}))
    return run_cfg, os.path.join(transfer_dir, "adapter")


def select_layers_to_keep(teacher, student, windows, k: int, device: str = "cpu") -> list[dict]:
    """Greedy KL-guided choice of ``k`` converted layers to put back as attention, on ``windows``.

    Step 0 is the student as given; each later step restores the layer whose attention lowers
    KL(teacher || student) most with every other choice fixed. Returns one row per step (``kept``: the layers
    restored so far, ``kl`` / ``top5_overlap`` after it, ``candidates``: each tried layer's KL). The student is
    left as it was given.
    """
    def score() -> dict:
        return compare(teacher, student, windows, device=device, with_baseline=False)

    start = score()
    steps = [{"kept": [], "kl": start["kl"], "top5_overlap": start["top5_overlap"], "candidates": {}}]
    print(f"select-keep: every layer converted: val KL {start['kl']:.4f}, top-5 {start['top5_overlap']:.3f}")
    restored = {}
    for _ in range(k):
        tried = {}
        for i in sorted(wave_attention_modules(student)):
            module = detach_wave(student, [i])
            tried[i] = score()
            attach_wave(student, module)
        best = min(tried, key=lambda i: tried[i]["kl"])
        restored.update(detach_wave(student, [best]))
        steps.append({"kept": [*steps[-1]["kept"], best], "kl": tried[best]["kl"],
                      "top5_overlap": tried[best]["top5_overlap"],
                      "candidates": {str(i): r["kl"] for i, r in tried.items()}})
        others = ", ".join(f"{i}: {r['kl']:.4f}" for i, r in tried.items())
        print(f"select-keep: keep layer {best} as attention: val KL {tried[best]['kl']:.4f}, top-5 "
              f"{tried[best]['top5_overlap']:.3f} (KL with each candidate kept: {others})")
    attach_wave(student, restored)
    return steps


def selection_table(steps: list[dict]) -> str:
    lines = ["\n## Layers to keep as attention (greedy, by val KL)\n", "| step | layer kept | kept so far | val KL | "
             "val top-5 overlap |", "|---:|---:|---|---:|---:|"]
    for n, s in enumerate(steps):
        lines.append(f"| {n} | {s['kept'][-1] if s['kept'] else '—'} | {','.join(map(str, s['kept'])) or 'none'} | "
                     f"{s['kl']:.4f} | {s['top5_overlap']:.3f} |")
    return "\n".join(lines) + "\n"


def layer_table(rows: list[dict]) -> str:
    hardest = sorted(rows, key=lambda r: -r["kl_only_this_layer"])
    rank = {r["layer"]: k + 1 for k, r in enumerate(hardest)}
    lines = ["| layer | held-out transfer loss (MSE) | KL, only this layer replaced | top-5 overlap, only this "
             "layer | KL, this layer's attention zeroed | hardness rank (1 = hardest) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['transfer_loss']:.5f} | {r['kl_only_this_layer']:.4f} | "
                     f"{r['top5_only_this_layer']:.3f} | {r['kl_attention_zeroed']:.4f} | {rank[r['layer']]} |")
    return "\n".join(lines) + f"\n\nScored on {rows[0]['positions']:,} held-out val positions per cell.\n"


def plot_layers(rows: list[dict], mixer: str, path: str) -> None:
    import matplotlib  # lazy: ~0.8 s of every command's start, only plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r["layer"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].bar(layers, [r["transfer_loss"] for r in rows], color="tab:blue")
    axes[0].set(title=f"{mixer}: held-out transfer loss", xlabel="layer", ylabel="attention-output MSE")
    w = 0.4
    axes[1].bar([x - w / 2 for x in layers], [r["kl_only_this_layer"] for r in rows], w,
                label="only this layer replaced")
    axes[1].bar([x + w / 2 for x in layers], [r["kl_attention_zeroed"] for r in rows], w, color="tab:gray",
                label="this layer's attention zeroed")
    axes[1].set(title="held-out KL(teacher || student)", xlabel="layer", ylabel="nats / position", yscale="log")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(layers)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
