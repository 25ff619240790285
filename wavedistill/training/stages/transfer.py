"""Per-layer attention-output transfer (LoLCATs "attention transfer", MOHAWK stage 2).

One teacher forward records, for every chosen layer, what its self-attention received (the
normed hidden states, rotary tables and mask) and what it returned. Each student mixer is then
trained to reproduce that output from the *teacher's* inputs, all layers at once, with no LM
head and no vocabulary softmax: a cheap first stage before end-to-end logit distillation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...errors import WavedistillError
from ...kd.features import hidden_state_loss
from ...surgery import decoder_layers, padding_mask_from_attention_mask, wave_attention_modules
from ..loop import train_steps
from ..recipes import TRANSFER_LOSSES


@dataclass
class AttentionRecord:
    hidden_states: Tensor  # (B, T, D) input of self_attn
    position_embeddings: tuple[Tensor, Tensor] | None
    attention_mask: Tensor | None
    output: Tensor  # (B, T, D) attention output


@contextlib.contextmanager
def record_attention(model: nn.Module, layers: list[int]):
    """Yield a dict layer -> :class:`AttentionRecord`, filled by the next forward of ``model``."""
    records: dict[int, AttentionRecord] = {}
    blocks = decoder_layers(model)

    def hook(i):
        def fn(module, args, kwargs, output):
            records[i] = AttentionRecord(kwargs["hidden_states"].detach(), kwargs.get("position_embeddings"),
                                         kwargs.get("attention_mask"), output[0].detach())
        return fn

    handles = [blocks[i].self_attn.register_forward_hook(hook(i), with_kwargs=True) for i in layers]
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


def transfer_loss(pred: Tensor, target: Tensor, kind: str = "mse", mask: Tensor | None = None) -> Tensor:
    """Mean over real positions of the squared error, or of 1 - cosine similarity, over the width D."""
    if kind not in TRANSFER_LOSSES:
        raise WavedistillError(f"unknown transfer loss {kind!r}; known: {', '.join(TRANSFER_LOSSES)}")
    return hidden_state_loss(pred, target, kind, mask)


def layer_losses(teacher: nn.Module, mixers: dict[int, nn.Module], input_ids: Tensor, kind: str = "mse",
                 autocast=contextlib.nullcontext()) -> dict[int, Tensor]:
    """Transfer loss of each ``mixers[i]`` against teacher layer i's attention output, on the teacher's inputs."""
    with torch.no_grad(), record_attention(teacher, sorted(mixers)) as records:
        teacher.get_decoder()(input_ids=input_ids, use_cache=False)  # no LM head: only layer outputs are needed
    out = {}
    with autocast:
        for i, mixer in mixers.items():
            r = records[i]
            pad = padding_mask_from_attention_mask(r.attention_mask, r.hidden_states.shape[1])
            # float32 mixers on a low-precision teacher's activations: mix in the mixer's dtype
            x = r.hidden_states.to(mixer.weight_dtype)
            pred = mixer(x, padding_mask=pad, position_embeddings=r.position_embeddings)
            out[i] = transfer_loss(pred, r.output, kind, None if pad is None else pad.float())
    return out


def transfer_step(teacher: nn.Module, student: nn.Module, input_ids: Tensor, kind: str = "mse",
                  autocast=contextlib.nullcontext()) -> dict[str, Tensor]:
    """Loss of every converted student layer against the teacher's attention output on the teacher's inputs.

    Returns {"loss": sum over layers (differentiable), "layer_{i}": detached per-layer losses}.
    """
    mixers = {i: m.mixer for i, m in wave_attention_modules(student).items()}
    if not mixers:
        raise WavedistillError("the student has no converted layers to transfer into")
    losses = layer_losses(teacher, mixers, input_ids, kind, autocast)
    return {"loss": sum(losses.values()), **{f"layer_{i}": v.detach() for i, v in losses.items()}}


@torch.no_grad()
def held_out_layer_losses(teacher: nn.Module, mixers: dict[int, nn.Module], windows: Tensor, kind: str = "mse",
                          batch_size: int = 8, device: str = "cpu") -> dict[int, float]:
    """Per-layer transfer loss averaged over every position of held-out (N, T) windows."""
    sums = dict.fromkeys(mixers, 0.0)
    for b in range(0, len(windows), batch_size):
        ids = windows[b: b + batch_size].to(device)
        for i, loss in layer_losses(teacher, mixers, ids, kind).items():
            sums[i] += loss.item() * len(ids)
    return {i: v / len(windows) for i, v in sums.items()}


def run_transfer(run, stage) -> dict:
    """The ``transfer`` stage: train every converted mixer on its layer's attention output, all at once."""

    modules = wave_attention_modules(run.student)
    params = [p for m in modules.values() for p in m.mixer.parameters()]
    summary = train_steps(run, 0, params, stage.steps, stage.lr or run.cfg.lr,
                          lambda batch, s: transfer_step(run.teacher, run.student, batch["input_ids"], stage.loss,
                                                         run.autocast))
    losses = held_out_layer_losses(run.teacher, {i: m.mixer for i, m in modules.items()}, run.val_windows,
                                   stage.loss, device=run.device)
    return {**summary, "val_layer_transfer_loss": {str(i): v for i, v in losses.items()}}
