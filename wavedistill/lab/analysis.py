"""Plots and spectra of lab runs, regenerated from what a run folder saved (``wavedistill analyze RUN_DIR``).

Per seed, in ``plots/``:
* ``curves_seed<k>.png``: train / test accuracy (log steps) with the memorisation and grok steps marked;
* ``embedding_spectrum_seed<k>.png`` (modular): power of the token embeddings over Z_p per
  frequency k (the DFT over the token index a, folding k and p - k), which Nanda et al. found
  concentrated on a few key frequencies once a model groks;
* ``mixer_spectrum_seed<k>.png`` (mixers with a ``spectrum()``): per layer, the filter's magnitude and
  phase per frequency bin, channel by channel, with "dead" bins (magnitude below ``dead_threshold``
  of the layer's largest) counted.
Numbers behind the plots go to ``analysis.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os

import torch
import yaml
from safetensors.torch import load_file

from ..errors import WavedistillError
from .config import LabConfig
from .model import build_model
from .tasks import TASKS, build_task

DEAD_THRESHOLD = 0.01


def _plt():
    import matplotlib  # lazy: ~0.8 s of every command's start, only plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_log(folder: str) -> list[dict]:
    with open(os.path.join(folder, "train_log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_seed(folder: str, tasks: dict | None = None):
    """(config, task, model) of a finished seed folder, rebuilt from its config.yaml and model.safetensors.

    ``tasks``: a cache of the tasks already built, shared by the seeds and runs read together; a task whose data
    the seed does not draw (``seeded_data`` False: a tokenized corpus) is built once for all of them."""
    with open(os.path.join(folder, "config.yaml")) as f:
        saved = yaml.safe_load(f)
    names = {f.name for f in dataclasses.fields(LabConfig)}
    cfg = LabConfig(**{k: v for k, v in saved.items() if k in names})
    data_seed = saved.get("task_data_seed", saved["seed"])
    key = (cfg.task, json.dumps(cfg.task_kwargs, sort_keys=True), data_seed if TASKS[cfg.task].seeded_data else None)
    tasks = {} if tasks is None else tasks
    if key not in tasks:
        tasks[key] = build_task(cfg.task, data_seed, **cfg.task_kwargs)
    task = tasks[key]
    model = build_model(cfg, task)
    model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
    return cfg, task, model.eval()


def embedding_spectrum(table: torch.Tensor, p: int) -> dict:
    """Fourier power of a (>= p, D) embedding table over Z_p: folded per frequency 1..(p-1)/2, plus DC."""
    w = table[:p].detach().double()
    power = torch.fft.fft(w, dim=0).abs().pow(2).sum(-1)  # (p,)
    half = (p - 1) // 2
    folded = power[1: half + 1] + power[p - half:].flip(0)  # k and p - k are conjugates for a real table
    share = (folded / folded.sum()).tolist()
    order = sorted(range(half), key=lambda i: -share[i])
    cumulative, need90 = 0.0, 0
    for i in order:
        cumulative += share[i]
        need90 += 1
        if cumulative >= 0.9:
            break
    return {"frequencies": list(range(1, half + 1)), "power_share": share, "dc_share": float(power[0] / power.sum()),
            "key_frequencies": [i + 1 for i in order[:5]], "top5_share": sum(share[i] for i in order[:5]),
            "n_frequencies_for_90pct": need90}


def mixer_spectra(model) -> list[dict]:
    out = []
    for i, block in enumerate(model.blocks):
        if not hasattr(block.mixer, "spectrum"):
            continue
        spec = block.mixer.spectrum()
        mag, phase = spec["magnitude"].float(), spec["phase"].float()  # (C, F)
        dead = mag < DEAD_THRESHOLD * mag.max()
        out.append({"layer": i, "magnitude": mag, "phase": phase, "dead_bins": int(dead.sum()),
                    "bins": int(mag.numel()), "all_dead_frequencies": int(dead.all(0).sum())})
    return out


def plot_curves(rows: list[dict], summary: dict, title: str, path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["train_acc"] for r in rows], label="train")
    ax.plot(steps, [r["test_acc"] for r in rows], label="test (held out)")
    for key, style, name in (("memorization_step", ":", "memorised"), ("grok_step", "--", "grokked")):
        if summary.get(key):
            ax.axvline(summary[key], color="gray", linestyle=style, label=f"{name} @ {summary[key]}")
    ax.set(xscale="log", xlabel="step", ylabel="accuracy", ylim=(-0.02, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_embedding_spectrum(spec: dict, title: str, path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.bar(spec["frequencies"], spec["power_share"], color="tab:purple")
    # two title lines: the key frequencies do not fit beside a long run title
    ax.set(xlabel="frequency k over Z_p", ylabel="share of non-DC power")
    ax.set_title(f"{title}\nkey freqs {spec['key_frequencies']}, top-5 share {spec['top5_share']:.2f}", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_mixer_spectra(spectra: list[dict], title: str, path: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(len(spectra), 2, figsize=(9, 2.8 * len(spectra)), squeeze=False)
    for row, s in zip(axes, spectra):
        freq = torch.linspace(0, 0.5, s["magnitude"].shape[1])
        row[0].plot(freq, s["magnitude"].T, color="tab:blue", alpha=0.15, linewidth=0.7)
        row[0].plot(freq, s["magnitude"].mean(0), color="black", linewidth=1.5, label="mean over channels")
        row[0].set(title=f"layer {s['layer']}: |H|, {s['dead_bins']}/{s['bins']} (channel, bin) dead",
                   xlabel="frequency (cycles / token)", yscale="log")
        row[0].legend(fontsize=7)
        row[1].plot(freq, s["phase"].T, color="tab:orange", alpha=0.15, linewidth=0.7)
        row[1].set(title=f"layer {s['layer']}: phase", xlabel="frequency (cycles / token)", ylabel="radians")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def analyze(run_dir: str) -> dict:
    """Regenerate every plot of a run folder (one with seed_<k>/ folders) and write analysis.json."""
    seeds = sorted((d for d in os.listdir(run_dir) if d.startswith("seed_")), key=lambda d: int(d.split("_")[1])) \
        if os.path.isdir(run_dir) else []
    seeds = [d for d in seeds if os.path.isfile(os.path.join(run_dir, d, "model.safetensors"))]
    if not seeds:
        raise WavedistillError(f"{run_dir!r} holds no finished seed_<k>/ folder; run `wavedistill lab` into it first")
    plots = os.path.join(run_dir, "plots")
    os.makedirs(plots, exist_ok=True)
    out = {}
    for d in seeds:
        folder, k = os.path.join(run_dir, d), d.split("_")[1]
        with open(os.path.join(folder, "summary.json")) as f:
            summary = json.load(f)
        cfg, task, model = load_seed(folder)
        title = f"{cfg.task} / {cfg.mixer}{' + phase emb.' if cfg.phase_embedding else ''} / seed {k}"
        plot_curves(read_log(folder), summary, title, os.path.join(plots, f"curves_seed{k}.png"))
        entry = {}
        if cfg.task == "modular":
            spec = embedding_spectrum(model.embedding_table(), task.p)
            plot_embedding_spectrum(spec, title, os.path.join(plots, f"embedding_spectrum_seed{k}.png"))
            entry["embedding"] = {k2: spec[k2] for k2 in ("key_frequencies", "top5_share", "n_frequencies_for_90pct",
                                                          "dc_share")}
        spectra = mixer_spectra(model)
        if spectra:
            plot_mixer_spectra(spectra, title, os.path.join(plots, f"mixer_spectrum_seed{k}.png"))
            entry["mixer_spectra"] = [{k2: s[k2] for k2 in ("layer", "dead_bins", "bins", "all_dead_frequencies")}
                                      for s in spectra]
        out[k] = entry
    with open(os.path.join(run_dir, "analysis.json"), "w") as f:
        json.dump({"dead_threshold": DEAD_THRESHOLD, "seeds": out}, f, indent=2)
    return out


def plot_compare(cfgs: list[LabConfig], path: str) -> None:
    """Every seed of every mixer against training: test accuracy per step (log), val bits per character per step
    for charlm, held-out (test) loss per training token for stories (with a second panel on the second half of
    training, where the curves sit too close together to tell apart on the first)."""
    plt = _plt()
    task = cfgs[0].task
    key = {"charlm": "test_bpc", "stories": "test_loss"}.get(task, "test_acc")
    fig, axes = plt.subplots(1, 2 if task == "stories" else 1, figsize=(12 if task == "stories" else 7, 4.2),
                             squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ylabel = {"test_bpc": "val bits / char", "test_loss": "held-out (test) loss, nats / token"}.get(
        key, "test accuracy (held out)")
    for panel, ax in enumerate(axes[0]):
        for cfg, color in zip(cfgs, colors * 3):
            for j, seed in enumerate(cfg.seeds):
                rows = read_log(os.path.join(cfg.output_dir, f"seed_{seed}"))
                if panel:  # the second half of training only
                    rows = [r for r in rows if r["train_tokens"] >= rows[-1]["train_tokens"] / 2]
                label = (cfg.mixer + (f" {cfg.mixer_kwargs}" if cfg.mixer_kwargs else "")) if j == 0 else None
                x = [r["train_tokens"] if task == "stories" else r["step"] for r in rows]
                ax.plot(x, [r[key] for r in rows], color=color, alpha=0.7, linewidth=1, label=label,
                        marker="." if panel else None)
        ax.set(xscale="linear" if task == "stories" else "log",
               xlabel="training tokens" if task == "stories" else "step", ylabel=ylabel,
               title=f"{task}: every seed" + (", second half of training" if panel else ""))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
