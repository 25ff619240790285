"""``wavedistill bench``: forward and forward+backward time and peak memory per mixer vs softmax attention.

The baseline is the registered ``attention`` mixer: q/k/v/o projections, rotary embeddings and PyTorch's
``scaled_dot_product_attention(is_causal=True)``, i.e. what a teacher's attention layer computes.

Each (module, length) cell runs in its own subprocess, so an out-of-memory kill loses one cell,
not the table, and CPU peak memory can be read from the process high-water mark (``ru_maxrss``)
minus the resident size before the measured step. On CUDA, ``torch.cuda.max_memory_allocated``.
Times are the median of ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import torch

from ..core.devices import resolve_device
from ..core.rss import peak_mb, reset_peak, rss_mb
from ..mixers import build_mixer, get_mixer_class, list_mixers


def measure(name: str, d_model: int, T: int, batch: int, device: str, repeats: int) -> dict:
    """One cell, in the current process: {fwd_ms, fwdbwd_ms, peak_mb}."""
    torch.manual_seed(0)
    m = build_mixer(name, d_model).to(device)
    x = torch.randn(batch, T, d_model, device=device, requires_grad=True)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def fwd():
        with torch.no_grad():
            m(x)

    def fwdbwd():
        m(x).square().mean().backward()

    out = {}
    for key, fn in (("fwd_ms", fwd), ("fwdbwd_ms", fwdbwd)):
        if key == "fwdbwd_ms":
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            else:
                base = rss_mb()
                out["peak_reset"] = reset_peak()
        fn()
        sync()
        if key == "fwdbwd_ms":
            if device.startswith("cuda"):
                out["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            else:
                out["peak_mb"] = max(0.0, peak_mb() - base)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - t0) * 1000)
        out[key] = sorted(times)[len(times) // 2]
    return out


def run_cell(module: str, *args) -> dict:
    """``python -m module *args`` in a fresh process (one cell's memory never inflates the next): its last
    printed line (a JSON object) with ``status: ok``, or ``status: failed ...`` and the last error line."""
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, timeout=1800)
    if proc.returncode == 0:
        return {**json.loads(proc.stdout.strip().splitlines()[-1]), "status": "ok"}
    return {"status": f"failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"}


def estimate_gb(name: str, d_model: int, T: int, batch: int) -> float:
    """Rough activation memory, to skip cells that clearly cannot fit. SDPA's fused (flash) kernels keep
    memory linear in T; a cell that still runs out is killed in its own subprocess and reported as failed."""
    return batch * T * d_model * 4 * 40 / 2**30


def run_bench(args) -> list[dict]:
    names = list_mixers() if args.mixers == "all" else args.mixers.split(",")
    names = ["attention"] + [n for n in names if n != "attention"]
    for n in names[1:]:
        get_mixer_class(n)
    resolve_device(args.device)
    seq_lens = [int(t) for t in args.seq_lens.split(",")]
    os.makedirs(args.output_dir, exist_ok=True)
    print(f"bench: {len(names)} mixers x {len(seq_lens)} lengths (up to {max(seq_lens):,} tokens), {args.repeats} "
          f"repeats each, one subprocess per cell; results in {args.output_dir}/bench.md. Long lengths take minutes "
          "on CPU: --seq-lens 256,1024 and --mixers NAME,... make it short", flush=True)
    rows = []
    # Length outermost: the cells a ratio compares run back to back, under the same machine load.
    for T in seq_lens:
        for name in names:
            row = {"mixer": name, "seq_len": T, "d_model": args.d_model, "batch": args.batch_size}
            if estimate_gb(name, args.d_model, T, args.batch_size) > args.memory_limit_gb:
                row["status"] = f"skipped: estimated > {args.memory_limit_gb} GB"
            else:
                row.update(run_cell("wavedistill.bench.train", name, args.d_model, T, args.batch_size, args.device,
                                    args.repeats))
            rows.append(row)
            took = f"fwd+bwd {row['fwdbwd_ms']:.1f} ms" if row.get("status") == "ok" else row["status"]
            print(f"bench: {name} T={T}: {took}", flush=True)
    meta = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    with open(os.path.join(args.output_dir, "bench.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    with open(os.path.join(args.output_dir, "bench.md"), "w") as f:
        f.write(markdown_table(rows, meta))
    plot(rows, os.path.join(args.output_dir, "bench.png"), meta)
    print(markdown_table(rows, meta))
    return rows


def markdown_table(rows: list[dict], meta: dict) -> str:
    names = list(dict.fromkeys(r["mixer"] for r in rows))
    lines = [f"device: {meta['device']} ({meta['gpu'] or meta['cpu']}), torch {meta['torch']}, "
             f"{meta['threads']} threads; d_model {rows[0]['d_model']}, batch {rows[0]['batch']}\n",
             "| mixer | T | fwd ms | fwd+bwd ms | speed-up vs attention (fwd+bwd; > 1 faster) | peak MB (fwd+bwd) "
             "| status |",
             "|---|---:|---:|---:|---:|---:|---|"]
    base = {r["seq_len"]: r["fwdbwd_ms"] for r in rows if r["mixer"] == "attention" and r["status"] == "ok"}
    for r in sorted(rows, key=lambda r: (names.index(r["mixer"]), r["seq_len"])):
        ok = r["status"] == "ok"
        cells = [f"{r[k]:.1f}" if ok else "—" for k in ("fwd_ms", "fwdbwd_ms")]
        cells.append(f"{base[r['seq_len']] / r['fwdbwd_ms']:.1f}" if ok and r["seq_len"] in base else "—")
        cells.append(f"{r['peak_mb']:.1f}" if ok else "—")
        lines.append(f"| {r['mixer']} | {r['seq_len']} | {' | '.join(cells)} | {r['status']} |")
    return "\n".join(lines) + "\n"


def plot_panels(path: str, panels: list[tuple[str, list[dict], str]], x_key: str, xlabel: str,
                suptitle: str | None = None) -> None:
    """Side-by-side log-log panels, one per (title, rows, y key): a line per mixer over ``x_key`` (rows whose status
    is ok), attention dashed; a legend wherever the mixers differ from the panel before. The bench plots' one helper."""
    from matplotlib.figure import Figure  # lazy: matplotlib adds ~0.8 s to every command's start, only plots need it

    fig = Figure(figsize=(5 * len(panels), 4.5))
    axes = fig.subplots(1, len(panels))
    shown = None
    for ax, (title, rows, key) in zip(axes, panels):
        names = list(dict.fromkeys(r["mixer"] for r in rows))
        for name in names:
            pts = [(r[x_key], r[key]) for r in rows if r["mixer"] == name and r["status"] == "ok"]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name, linestyle="--" if name.startswith("attention") else "-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if names != shown:
            ax.legend(fontsize=8)
            shown = names
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot(rows: list[dict], path: str, meta: dict) -> None:
    panels = [("forward (ms)", rows, "fwd_ms"), ("forward + backward (ms)", rows, "fwdbwd_ms"),
              ("peak memory, fwd+bwd (MB)", rows, "peak_mb")]
    plot_panels(path, panels, "seq_len", "sequence length T",
                f"wavedistill bench on {meta['device']} ({meta['gpu'] or meta['cpu']})")


if __name__ == "__main__":
    name, d, T, b, device, reps = sys.argv[1:7]
    print(json.dumps(measure(name, int(d), int(T), int(b), device, int(reps))))
