"""``wavedistill bench --decode``: time per generated token and decoding memory against context length.

Two tables, every cell in its own subprocess (so one cell's memory never inflates the next):

* ``layer``: one mixer layer's :meth:`~wavedistill.mixers.WaveMixer.step` after a prefill of P tokens,
  against the registered ``attention`` mixer's step (its key / value cache) at the same width.
* ``model``: a whole decoder (a random Qwen3 config of ``--d-model`` width and ``--layers`` layers,
  built locally) with every attention layer converted to the mixer, generating through Hugging Face's
  cache after a P-token prompt, against the same model with its attention.

Time is the median over ``--decode-tokens`` single-token steps after one warm-up step; memory is the
bytes the decoding state holds after the prompt (the mixer's state tensors; attention's keys and
values), which is what grows (or not) with P. Mixers without a recurrent form re-run over the history.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
from transformers import DynamicCache

from ..errors import WavedistillError
from ..mixers import build_mixer, list_mixers
from ..surgery import convert
from ..surgery.cache import WaveCacheLayer
from .train import plot_panels, run_cell


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@torch.no_grad()
def measure_layer(name: str, d_model: int, prompt: int, n_tokens: int) -> dict:
    torch.manual_seed(0)
    m = build_mixer(name, d_model).eval()
    if not m.has_state:
        raise WavedistillError(f"{name} has no recurrent form to step")
    x = torch.randn(1, prompt + n_tokens + 1, d_model)
    _, state = m.prefill(x[:, :prompt])
    memory = _bytes(v for k, v in state.items() if k != "pos")
    times = []
    for t in range(prompt, prompt + n_tokens + 1):
        t0 = time.perf_counter()
        _, state = m.step(x[:, t], state)
        times.append((time.perf_counter() - t0) * 1000)
    return {"ms_per_token": sorted(times[1:])[n_tokens // 2], "state_mb": memory / 2**20}


def decode_model(d_model: int, n_layers: int, vocab: int = 1024, max_len: int = 65536):
    # lazy: a model class pulls in transformers' modelling stack (~3 s), which only the model table needs
    from transformers import Qwen3Config, Qwen3ForCausalLM

    head_dim = 64 if d_model % 64 == 0 else 8
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=d_model, intermediate_size=4 * d_model, num_hidden_layers=n_layers,
                      num_attention_heads=d_model // head_dim, num_key_value_heads=d_model // head_dim,
                      head_dim=head_dim, max_position_embeddings=max_len)
    torch.manual_seed(0)
    return Qwen3ForCausalLM(cfg).eval()


@torch.no_grad()
def measure_model(name: str, d_model: int, n_layers: int, prompt: int, n_tokens: int) -> dict:
    model = decode_model(d_model, n_layers)
    if name != "attention_teacher":
        convert(model, name)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, prompt + n_tokens + 1), generator=g)
    cache = DynamicCache(config=model.config)
    t0 = time.perf_counter()
    model(ids[:, :prompt], cache=cache, use_cache=True)
    prefill_s = time.perf_counter() - t0
    memory = 0
    for layer in cache.layers:
        if isinstance(layer, WaveCacheLayer):
            held = list(layer.state.values()) if layer.state is not None else [layer.x]
            memory += _bytes(t for t in held if t is not None and t.is_floating_point())
            layer = layer.inner  # + the width-1 dummy keys that keep HF's length bookkeeping (4 bytes a token)
        memory += _bytes([layer.keys, layer.values])
    times = []
    for t in range(prompt, prompt + n_tokens + 1):
        t0 = time.perf_counter()
        model(ids[:, t: t + 1], cache=cache, use_cache=True)
        times.append((time.perf_counter() - t0) * 1000)
    return {"ms_per_token": sorted(times[1:])[n_tokens // 2], "state_mb": memory / 2**20, "prefill_s": prefill_s}


def run_decode_bench(args) -> list[dict]:
    names = list_mixers() if args.mixers == "all" else [n for n in args.mixers.split(",") if n]
    names = ["attention"] + [n for n in names if n != "attention" and build_mixer(n, args.d_model).has_state]
    prompts = [int(p) for p in args.prompts.split(",")]
    os.makedirs(args.output_dir, exist_ok=True)
    rows = []
    # Prompt length outside the mixer loop: the cells a ratio compares run back to back.
    for table, cells in (("layer", names), ("model", ["attention_teacher"] + names[1:])):
        for P in prompts:
            for name in cells:
                row = {"table": table, "mixer": name, "prompt": P, "d_model": args.d_model}
                row.update(run_cell("wavedistill.bench.decode", table, name, args.d_model, P, args.decode_tokens,
                                    args.layers))
                rows.append(row)
                print(json.dumps(row), flush=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "layers": args.layers,
            "decode_tokens": args.decode_tokens}
    with open(os.path.join(args.output_dir, "decode.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    table = markdown_table(rows, meta)
    with open(os.path.join(args.output_dir, "decode.md"), "w") as f:
        f.write(table)
    plot(rows, os.path.join(args.output_dir, "decode.png"))
    print(table)
    return rows


def markdown_table(rows: list[dict], meta: dict) -> str:
    """One table per kind; each row with its speed-up over attention at the same prompt length."""
    out = [f"torch {meta['torch']}, {meta['threads']} threads, median of {meta['decode_tokens']} tokens; "
           f"model table: {meta['layers']} layers\n"]
    for table, ref in (("layer", "attention"), ("model", "attention_teacher")):
        base = {r["prompt"]: r["ms_per_token"] for r in rows if r["table"] == table and r["mixer"] == ref
                and r["status"] == "ok"}
        out += [f"\n{table}: ms per generated token (× = attention's time / this one's) and decoding state (MB)\n",
                "| mixer | prompt | ms / token | × vs attention | state MB | status |", "|---|---:|---:|---:|---:|---|"]
        order = list(dict.fromkeys(r["mixer"] for r in rows if r["table"] == table))
        for r in sorted((r for r in rows if r["table"] == table), key=lambda r: (order.index(r["mixer"]), r["prompt"])):
            ok = r["status"] == "ok"
            speed = f"{base[r['prompt']] / r['ms_per_token']:.1f}" if ok and r["prompt"] in base else "—"
            cells = [f"{r['ms_per_token']:.2f}", speed, f"{r['state_mb']:.2f}"] if ok else ["—"] * 3
            out.append(f"| {r['mixer']} | {r['prompt']} | {' | '.join(cells)} | {r['status']} |")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: str) -> None:
    layer, model = ([r for r in rows if r["table"] == t] for t in ("layer", "model"))
    plot_panels(path, [("one layer: ms per token", layer, "ms_per_token"),
                       ("whole model: ms per token", model, "ms_per_token"),
                       ("whole model: decoding state (MB)", model, "state_mb")], "prompt", "prompt length")


if __name__ == "__main__":
    table, name, d, P, n, layers = sys.argv[1:7]
    result = (measure_layer(name, int(d), int(P), int(n)) if table == "layer"
              else measure_model(name, int(d), int(layers), int(P), int(n)))
    print(json.dumps(result))
