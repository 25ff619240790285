"""``wavedistill bench --loss``: peak memory and time of the KD loss alone, dense against chunked.

Each cell (one loss at T positions x V vocabulary, bf16 logits as a bf16 model produces them) runs in
its own process. Memory is the resident high-water mark during the loss's forward + backward (the mark
is reset once the inputs exist, :mod:`wavedistill.core.rss`) minus the resident size of those inputs (student
and teacher logits), reported two ways: everything the
loss allocated, and that minus its output, the gradient w.r.t. the student logits (the size of the
logits in their dtype; any loss that takes logits hands one back). A cell that does not fit in memory
is reported as failed; a dense cell whose estimate exceeds ``--memory-limit-gb`` is not attempted.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from ..core.rss import peak_mb, reset_peak, rss_mb
from ..kd.chunked import kd_loss_chunked
from ..kd.losses import kd_loss
from .train import run_cell


def measure(kind: str, T: int, V: int) -> dict:
    g = torch.Generator().manual_seed(0)
    student = _bf16_randn(T, V, g).requires_grad_(True)
    teacher = _bf16_randn(T, V, g)
    ids = torch.randint(0, V, (1, T), generator=g)
    base = rss_mb()
    # Without the reset the high-water mark would include whatever peaked before the loss ran.
    peak_reset = reset_peak()
    t0 = time.perf_counter()
    loss_fn = kd_loss if kind == "dense" else kd_loss_chunked
    (grad,) = torch.autograd.grad(loss_fn(student, teacher, ids)["loss"], student)
    seconds = time.perf_counter() - t0
    peak = peak_mb()
    grad_mb = grad.numel() * grad.element_size() / 2**20
    return {"peak_mb": peak - base, "peak_without_grad_mb": peak - base - grad_mb, "grad_mb": grad_mb,
            "seconds": seconds, "peak_reset": peak_reset}


def _bf16_randn(T: int, V: int, g: torch.Generator, rows: int = 256) -> torch.Tensor:
    """(1, T, V) bf16 normal logits, drawn a few rows at a time (no (T, V) float32 temporary)."""
    out = torch.empty(1, T, V, dtype=torch.bfloat16)
    for i in range(0, T, rows):
        out[0, i:i + rows] = torch.randn(min(rows, T - i), V, generator=g)
    return out


def estimate_dense_gb(T: int, V: int) -> float:
    """The dense loss keeps about six float32 (T, V) tensors alive at its peak (both log-softmaxes, the
    teacher's probabilities, their product, the gradient and its float32 copy)."""
    return 6 * T * V * 4 / 2**30


def run_loss_bench(args) -> list[dict]:
    T, V = args.loss_positions, args.loss_vocab
    os.makedirs(args.output_dir, exist_ok=True)
    rows = []
    for kind in ("dense", "chunked"):
        row = {"loss": kind, "positions": T, "vocab": V}
        if kind == "dense" and estimate_dense_gb(T, V) > args.memory_limit_gb:
            # Not attempted: an out-of-memory kill could take other processes of the machine with it.
            row["status"] = (f"skipped: estimated {estimate_dense_gb(T, V):.0f} GB beyond its inputs > "
                             f"--memory-limit-gb {args.memory_limit_gb:g}")
        else:
            row.update(run_cell("wavedistill.bench.loss", kind, T, V))
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [f"KD loss alone, {T:,} positions x {V:,} vocabulary, bf16 logits (inputs {2 * T * V * 2 / 2**30:.1f} GB "
             "not counted)\n", "| loss | peak MB | peak MB without the logits' gradient | seconds | status |",
             "|---|---:|---:|---:|---|"]
    for r in rows:
        ok = r["status"] == "ok"
        cells = [f"{r[k]:,.0f}" if ok else "—" for k in ("peak_mb", "peak_without_grad_mb")]
        status = r["status"] if r.get("peak_reset", True) else "ok, but the kernel's peak could not be reset: " \
            "it includes building the inputs"
        lines.append(f"| {r['loss']} | {' | '.join(cells)} | {r['seconds']:.1f} | {status} |" if ok else
                     f"| {r['loss']} | — | — | — | {r['status']} |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.output_dir, "loss.md"), "w") as f:
        f.write(table)
    with open(os.path.join(args.output_dir, "loss.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(table)
    return rows


if __name__ == "__main__":
    kind, T, V = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(measure(kind, T, V)))
