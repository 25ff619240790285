"""The ``kd`` stage: end-to-end logit distillation of the whole student against the frozen teacher.

Loss per batch: ``kl_weight * mean(T^2 D_T(teacher, student)) + ce_weight * CE(next token, optionally
label-smoothed) + hidden_weight * feature loss``: the ``hidden_loss`` (MSE or 1 - cosine) between each
student decoder-layer output and its teacher layer's (HF ``hidden_states``; the last one is after the
final norm), through the run's learned projections where the widths differ (:mod:`wavedistill.kd.features`);
``+ attention_weight * attention-map loss``: a separate student's softmax attention maps, or a wave
student's materialised mixing matrices (MOHAWK stage 1), against the teacher's maps, optionally over the
first ``attention_window`` positions only (:mod:`wavedistill.kd.attention_maps`; the models run eager
attention during the stage).
The temperature is constant, follows a linear / cosine schedule to ``temperature_end`` over the
stage, or is ``dynamic``: per position, from the teacher's entropy (confident positions are softened).
D is the stage's ``divergence`` (forward KL by default); the loss runs ``loss_chunk`` positions at a
time and never holds the whole (B, T, V) in float32 (``loss_chunk: 0`` = the dense reference loss).
From a teacher cache (batches carrying ``topk_ids``), D is taken over the teacher's cached top k
tokens plus one rest bucket, at temperature 1, and the teacher does not run
(:mod:`wavedistill.training.teacher_cache`).
"""

from __future__ import annotations

import contextlib

import torch

from ...kd.attention_maps import attention_map_loss, eager_attention, mixer_inputs, mixing_matrices
from ...kd.cached import cached_kd_loss, cached_kd_loss_dense
from ...kd.chunked import kd_loss_chunked
from ...kd.features import feature_loss, matched_hidden
from ...kd.losses import entropy_temperature, kd_loss
from ...surgery import wave_attention_modules
from ..loop import train_steps
from ..schedules import scheduled_temperature


def kd_objective(run, stage, n_steps: int):
    """``loss_fn(batch, stage_step)`` for :func:`wavedistill.training.loop.train_steps`, from a stage's KD fields."""
    cfg = run.cfg
    kl_weight, ce_weight = stage.kl_weight, stage.ce_weight
    start = cfg.temperature if stage.temperature is None else stage.temperature
    hidden = stage.hidden_weight > 0
    maps = stage.attention_weight > 0  # run_kd puts both models in eager attention, which returns the maps
    # A wave student's converted layers give their mixing matrices instead (MOHAWK stage 1).
    wave_maps = maps and bool(wave_attention_modules(run.student))

    def loss_fn(batch: dict, step: int) -> dict:
        losses = cached(batch) if "topk_ids" in batch else online(batch, step)
        # logged under the divergence's own name: "kl" is the forward KL only
        if stage.divergence != "forward_kl":
            losses[stage.divergence] = losses.pop("kl")
        return losses

    def online(batch: dict, step: int) -> dict:
        ids = batch["input_ids"]
        with torch.no_grad():
            t_out = run.teacher(ids, use_cache=False, output_hidden_states=hidden, output_attentions=maps)
        capture = mixer_inputs(run.student) if wave_maps else contextlib.nullcontext({})
        with capture as captured, run.autocast:
            s_out = run.student(ids, use_cache=False, output_hidden_states=hidden,
                                output_attentions=maps and not wave_maps)
        # A separate student with a differently padded vocabulary: the rows both have (checked at the start).
        s_logits, t_logits = s_out.logits[..., :run.shared_vocab], t_out.logits[..., :run.shared_vocab]
        if stage.temperature_schedule == "dynamic":
            temperature = entropy_temperature(t_logits, stage.temperature_max)  # (B, T)
        else:
            temperature = scheduled_temperature(start, stage.temperature_end, stage.temperature_schedule,
                                                step / max(1, n_steps - 1))
        if stage.loss_chunk != 0:
            losses = kd_loss_chunked(s_logits, t_logits, ids, temperature=temperature, kl_weight=kl_weight,
                                     ce_weight=ce_weight, divergence_kind=stage.divergence, chunk=stage.loss_chunk,
                                     label_smoothing=stage.label_smoothing)
        else:
            losses = kd_loss(s_logits, t_logits, ids, temperature=temperature, kl_weight=kl_weight,
                             ce_weight=ce_weight, label_smoothing=stage.label_smoothing)
        if hidden:
            n_layers = len(s_out.hidden_states) - 1
            pairs = matched_hidden(s_out.hidden_states, t_out.hidden_states,
                                   run.student_layer_map or list(range(n_layers)))
            key = f"feature_{stage.hidden_loss}"
            losses[key] = feature_loss(*pairs, stage.hidden_loss, projection=run.features)
            losses["loss"] = losses["loss"] + stage.hidden_weight * losses[key]
            losses[key] = losses[key].detach()
        if maps:
            key = f"attention_{stage.attention_loss}"
            n_layers = len(t_out.attentions) if run.student_layer_map is None else len(run.student_layer_map)
            layer_map = run.student_layer_map or list(range(n_layers))
            if wave_maps:
                s_maps, s_heads, layers = mixing_matrices(run.student, captured, stage.attention_window)
                losses[key] = attention_map_loss(s_maps, t_out.attentions, [layer_map[i] for i in layers],
                                                 stage.attention_loss, stage.attention_heads, student_heads=s_heads,
                                                 window=stage.attention_window)
            else:
                losses[key] = attention_map_loss(s_out.attentions, t_out.attentions, layer_map, stage.attention_loss,
                                                 stage.attention_heads, window=stage.attention_window)
            losses["loss"] = losses["loss"] + stage.attention_weight * losses[key]
            losses[key] = losses[key].detach()
        losses["temperature"] = torch.as_tensor(temperature).float().mean()
        return losses

    def cached(batch: dict) -> dict:
        # distill.run has refused hidden-state losses and temperatures other than 1 for a cached run.
        ids = batch["input_ids"]
        with run.autocast:
            logits = run.student(ids, use_cache=False).logits
        targets = (batch["topk_ids"], batch["topk_logp"], batch["rest_logp"])
        if stage.loss_chunk != 0:
            losses = cached_kd_loss(logits, ids, *targets, kl_weight=kl_weight, ce_weight=ce_weight,
                                    divergence_kind=stage.divergence, chunk=stage.loss_chunk)
        else:
            losses = cached_kd_loss_dense(logits, ids, *targets, kl_weight=kl_weight, ce_weight=ce_weight,
                                          divergence_kind=stage.divergence)
        losses["temperature"] = torch.ones((), device=ids.device)
        return losses

    return loss_fn


def run_kd(run, stage) -> dict:
    params = [p for p in run.student.parameters() if p.requires_grad]
    if stage.hidden_weight > 0 and run.features is not None:
        params += list(run.features.parameters())
    with contextlib.ExitStack() as stack:
        if stage.attention_weight > 0:
            stack.enter_context(eager_attention(run.teacher))
            stack.enter_context(eager_attention(run.student))
        return train_steps(run, 0, params, stage.steps, stage.lr or run.cfg.lr,
                           kd_objective(run, stage, stage.steps))
