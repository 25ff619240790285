"""``wavedistill layers``: which layers are hardest to distill?

1. A ``transfer`` run trains a mixer in every layer at once on its layer's attention output
   (an ordinary distill run in ``OUT/transfer``, so it is logged, checkpointed and resumable).
2. On every held-out **val** window (never test: the report is what layers to keep as attention are
   chosen from), for each layer i:
   * ``transfer_loss``: the trained mixer's attention-output loss on the teacher's own inputs;
   * ``kl_only_this_layer``: KL(teacher || student) where *only* layer i is replaced by its mixer;
   * ``kl_attention_zeroed``: the same with layer i's attention output zeroed instead, for scale
     (how much the layer's token mixing matters at all).
Writes ``layers.json``, ``layers.md`` (a table) and ``layers.png`` (bars per layer).
"""

from __future__ import annotations

import copy
import json
import os


from .errors import WavedistillError


def run_layer_report(cfg, output_dir: str) -> list[dict]:
    from .config import check_same_run, make_config, to_yaml
    from .data import eval_windows, run_splits
    from .distill import run
    from .evaluate import attention_zeroed, compare
    from .io import apply_adapter, load_teacher
    from .loop import DTYPES
    from .stages.transfer import held_out_layer_losses
    from .surgery import attach_wave, detach_wave, wave_attention_modules

    if os.path.exists(os.path.join(output_dir, "layers.json")):
        raise WavedistillError(f"{output_dir!r} already holds a layer report; choose another --output-dir")
    transfer_dir = os.path.join(output_dir, "transfer")
    run_cfg = make_config({**cfg, "output_dir": transfer_dir})
    if os.path.isfile(os.path.join(transfer_dir, "config.yaml")):
        # an interrupted report is finished from its own transfer run, never from one trained otherwise
        check_same_run(run_cfg, "pass the settings it was started with, or another --output-dir")
    if not os.path.isfile(os.path.join(transfer_dir, "metrics.json")):
        run(make_config({**cfg, "output_dir": transfer_dir, "resume": os.path.isdir(os.path.join(transfer_dir,
                                                                                             "checkpoint"))}))
    teacher, tokenizer = load_teacher(run_cfg.teacher, dtype=DTYPES[run_cfg.dtype], device=run_cfg.device)
    splits = run_splits(run_cfg.data, tokenizer, n_samples=run_cfg.n_samples, val_frac=run_cfg.val_frac,
                        test_frac=run_cfg.test_frac)
    # val, never test: this report is what a user picks the layers to keep as attention from
    windows = eval_windows(splits.val, run_cfg.seq_len)
    student = apply_adapter(copy.deepcopy(teacher), os.path.join(transfer_dir, "adapter")).eval()
    modules = wave_attention_modules(student)
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
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "layers.json"), "w") as f:
        json.dump({"mixer": run_cfg.wave_type, "split": "val", "rows": rows}, f, indent=2)
    with open(os.path.join(output_dir, "layers.md"), "w") as f:
        f.write(layer_table(rows))
    with open(os.path.join(output_dir, "config.yaml"), "w") as f:
        f.write(to_yaml(run_cfg))
    plot_layers(rows, run_cfg.wave_type, os.path.join(output_dir, "layers.png"))
    print(layer_table(rows))
    return rows


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
    import matplotlib

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
