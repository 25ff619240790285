"""The ``fit`` stage: closed-form Toeplitz initialisation of convolution mixers from the teacher's attention maps.

A causal attention map A[t, s] (each row a distribution over s <= t) is approximated by a
Toeplitz matrix K[t - s], the form a long convolution can express. The least-squares Toeplitz fit
of a set of maps is the mean of each diagonal: ``K[tau] = mean over t (and batches) of A[t, t - tau]``
(MOHAWK's "matrix orientation" in closed form, per head). Mixers that can take such a kernel
implement ``fit_toeplitz(head_kernels)`` (``learned_gate``); others are refused.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import WavedistillError
from ...kd.attention_maps import eager_attention
from ...surgery import wave_attention_modules
from ..loop import log_candidate


def toeplitz_fit(maps: Tensor) -> Tensor:
    """Mean of each sub-diagonal of (B, H, T, T) causal attention maps: the (H, T) least-squares Toeplitz kernel."""
    T = maps.shape[-1]
    return torch.stack([maps.diagonal(offset=-tau, dim1=-2, dim2=-1).mean(dim=(0, 2)) for tau in range(T)], dim=-1)


@torch.no_grad()
def attention_kernels(teacher: nn.Module, layers: list[int], batches: list[Tensor]) -> dict[int, Tensor]:
    """Per layer, the (H, T) Toeplitz fit of the teacher's attention maps averaged over ``batches`` of ids."""
    sums: dict[int, Tensor] = {}
    with eager_attention(teacher):
        for ids in batches:
            maps = teacher(ids, use_cache=False, output_attentions=True).attentions
            for i in layers:
                k = toeplitz_fit(maps[i].double())
                sums[i] = k if i not in sums else sums[i] + k
    return {i: (s / len(batches)).float() for i, s in sums.items()}


def run_fit(run, stage) -> dict:
    modules = wave_attention_modules(run.student)
    unable = sorted(m.mixer.name for m in modules.values() if not hasattr(m.mixer, "fit_toeplitz"))
    if unable:
        raise WavedistillError(f"the fit stage needs a mixer with a Toeplitz kernel (learned_gate); "
                               f"{', '.join(sorted(set(unable)))} has none: drop the fit stage from the recipe")
    batches = []
    for _ in range(stage.batches):
        batches.append(run.batch(run.batches)["input_ids"].to(run.device))
        run.batches += 1
    kernels = attention_kernels(run.teacher, sorted(modules), batches)
    for i, m in modules.items():
        m.mixer.fit_toeplitz(kernels[i])
    tokens = sum(b.numel() for b in batches)
    run.tokens_seen += tokens
    row = log_candidate(run) if run.final_stage else {}
    return {"steps": 0, "tokens": tokens, "val_kl": row.get("val_kl")}
