"""Replace self-attention with wave mixers in a Hugging Face decoder, reversibly.

``convert`` swaps ``layers[i].self_attn`` for a :class:`WaveAttention` that keeps the original
module (``base_attn``), forwards unknown attributes to it, speaks HF's attention call contract
(keyword arguments in, ``(output, None)`` out) and returns the list of replaced module paths.
``unconvert`` puts the originals back. Trainable and saved parameters are found by module type.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core.devices import materialized, placement
from ..errors import SurgeryError
from ..mixers import WaveMixer, build_mixer, mixer_kwargs
from .cache import wave_cache_layer
from .families import attention_geometry, decoder_layers, family_of


def padding_mask_from_attention_mask(attention_mask, q_len: int) -> Tensor | None:
    """(B, q_len) bool, True = real token, from the mask a layer receives; None when nothing is padded.

    HF masks pad *keys* for every query, so a left-pad query row attends to nothing: a row with
    no visible key is a pad. This holds for dynamic, static and sliding caches alike.
    """
    if attention_mask is None or not isinstance(attention_mask, Tensor):
        return None
    if attention_mask.dim() == 2:  # flash-attention path passes the 2-D mask
        return attention_mask[:, -q_len:].bool()
    rows = attention_mask[:, 0, -q_len:, :]
    if rows.dtype != torch.bool:
        rows = rows > torch.finfo(rows.dtype).min / 2
    return rows.any(-1)


class WaveAttention(nn.Module):
    """Drop-in for an HF attention module: runs ``mixer`` and keeps ``base_attn`` for ``unconvert``.

    ``handoff`` None (default): the mixer alone. ``handoff = a`` in [0, 1]: the original attention
    runs in parallel and the output is ``(1 - w) * attention + w * mixer`` with ``w = a``, or, with
    a learned gate ``g`` (:func:`add_handoff_gates`), ``w = a + a (1 - a) tanh(g)``: a convex mix the
    model can tilt while the schedule runs, pinned to 0 at a = 0 and to 1 at a = 1. At a = 0 the
    output is the teacher's attention exactly (the mixer is not run); at a = 1 it is the mixer's.
    """

    def __init__(self, base_attn: nn.Module, mixer: WaveMixer, layer_idx: int,
                 mixer_kwargs: dict | None = None) -> None:
        super().__init__()
        self.base_attn = base_attn
        self.mixer = mixer
        self.wave_layer_idx = layer_idx
        self.mixer_kwargs = dict(mixer_kwargs or {})  # what the mixer was built with, for the adapter config
        self.handoff: float | None = None
        self.handoff_logit: nn.Parameter | None = None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_attn", "mixer"):
                raise
            return getattr(self.base_attn, name)

    @property
    def mixer_dtype(self) -> torch.dtype:
        if next(self.mixer.parameters(), None) is None:
            return next(self.base_attn.parameters()).dtype
        return self.mixer.weight_dtype

    def handoff_share(self) -> Tensor | float:
        """The mixer's share w of the output while a hand-off is on."""
        a = self.handoff
        if self.handoff_logit is None:
            return a
        return a + a * (1 - a) * torch.tanh(self.handoff_logit)

    def forward(self, hidden_states: Tensor, position_embeddings=None, attention_mask=None, past_key_values=None,
                cache=None, **kwargs) -> tuple[Tensor, None]:
        # transformers >= 5.24 passes the cache as `cache`, earlier 5.x as `past_key_values`; hand the
        # original attention the name it was given, so either release updates its K/V.
        cache_kw = ({"cache": cache} if cache is not None else
                    {"past_key_values": past_key_values} if past_key_values is not None else {})
        cache = cache if cache is not None else past_key_values
        q_len = hidden_states.shape[1]
        parallel = self.handoff is not None
        if parallel:
            attn_out, attn_weights = self.base_attn(hidden_states=hidden_states,
                                                    position_embeddings=position_embeddings,
                                                    attention_mask=attention_mask, **cache_kw, **kwargs)
            if self.handoff == 0:
                return attn_out, attn_weights  # exactly the teacher; the mixer is not even run
        pad = padding_mask_from_attention_mask(attention_mask, q_len)
        # A float32 mixer inside a bf16 model (master weights beside a shared frozen base) mixes in its own dtype.
        x = hidden_states.to(self.mixer_dtype)
        if cache is None:
            mixed = self.mixer(x, padding_mask=pad, position_embeddings=position_embeddings)
        else:
            layer = wave_cache_layer(cache, self.wave_layer_idx)
            mixed = layer.mix(self.mixer, x, pad, position_embeddings, write_kv=not parallel)
        mixed = mixed.to(hidden_states.dtype)
        if not parallel:
            return mixed, None
        w = self.handoff_share()
        return (1 - w) * attn_out + w * mixed, None


def set_handoff(model: nn.Module, a: float | None, layers=None) -> None:
    """Blend the original attention and the mixer in converted ``layers`` (default all); None = mixer only.

    Set the same value for a whole ``generate`` call: the attention's K/V cache is filled only
    while hand-off is on, and the mixer's history only while a > 0.
    """
    if a is not None and not 0.0 <= a <= 1.0:
        raise SurgeryError(f"hand-off weight must be in [0, 1] or None, got {a}")
    modules = wave_attention_modules(model)
    for i in modules if layers is None else layers:
        if i not in modules:
            raise SurgeryError(f"layer {i} is not converted; converted layers: {sorted(modules)}")
        modules[i].handoff = a


def add_handoff_gates(model: nn.Module) -> list[nn.Parameter]:
    """Give every converted layer a learned hand-off gate logit (starting at 0: w = a); return them."""
    gates = []
    for m in wave_attention_modules(model).values():
        ref = next(m.mixer.parameters())
        m.handoff_logit = nn.Parameter(torch.zeros((), device=ref.device, dtype=m.mixer.weight_dtype))
        gates.append(m.handoff_logit)
    return gates


def remove_handoff_gates(model: nn.Module) -> None:
    for m in wave_attention_modules(model).values():
        m.handoff_logit = None


def handoff_gate_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Learned hand-off gates by decoder path, ``layers.{i}.self_attn.handoff_logit``."""
    return {f"layers.{i}.self_attn.handoff_logit": m.handoff_logit for i, m in wave_attention_modules(model).items()
            if m.handoff_logit is not None}


def resolve_layers(model: nn.Module, layers) -> list[int]:
    n = len(decoder_layers(model))
    chosen = list(range(n)) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise SurgeryError(f"layer indices {bad} out of range: the model has {n} layers (0..{n - 1})")
    if len(set(chosen)) != len(chosen):
        raise SurgeryError(f"duplicate layer indices in {chosen}")
    return sorted(chosen)


def mixer_defaults(model: nn.Module, mixer: str) -> dict:
    """Geometry and context defaults a mixer gets from the teacher, filtered to what it accepts."""
    cfg = model.get_decoder().config
    defaults = dict(attention_geometry(model))
    defaults["qk_norm"] = family_of(model).qk_norm
    max_pos = getattr(cfg, "max_position_embeddings", None)
    if max_pos:
        defaults["kernel_len"] = min(int(max_pos), 2048)
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta")
    if theta:
        defaults["rope_theta"] = float(theta)
    accepted = set(mixer_kwargs(mixer))
    return {k: v for k, v in defaults.items() if k in accepted}


def convert(model: nn.Module, mixer: str = "learned_gate", layers=None, init_from_teacher: bool = True,
            **mixer_kw) -> list[str]:
    """Replace self-attention in ``layers`` (default: all) with ``mixer``; return the replaced paths.

    Only mixer parameters are left trainable. Extra keyword arguments go to the mixer constructor.
    """
    if mixer_kw.get("causal", True) is False:
        raise SurgeryError(f"causal-LM surgery needs a causal mixer; {mixer!r} was asked for with causal=False")
    blocks = decoder_layers(model)
    chosen = resolve_layers(model, layers)
    already = [i for i in chosen if isinstance(blocks[i].self_attn, WaveAttention)]
    if already:
        raise SurgeryError(f"layers {already} are already converted; call unconvert(model) first")
    kwargs = {**mixer_defaults(model, mixer), **mixer_kw}
    previous = getattr(model, "wavedistill_config", None)
    if previous and previous["mixer"] != mixer:
        raise SurgeryError(f"the model already holds {previous['mixer']!r} mixers; adapters record one mixer type per "
                         "model, so call unconvert(model) first")
    if previous is None:
        model._wavedistill_grad_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.requires_grad_(False)
    replaced = []
    prefix = _decoder_prefix(model)
    for i in chosen:
        attn = blocks[i].self_attn
        device, dtype = placement(attn)
        m = build_mixer(mixer, model.get_decoder().config.hidden_size, **kwargs)
        if init_from_teacher:
            with materialized(attn):
                m.init_from_attention(attn)
        m = m.to(device=device, dtype=dtype)
        blocks[i].self_attn = WaveAttention(attn, m, i, kwargs)
        replaced.append(f"{prefix}layers.{i}.self_attn")
    for p in mixer_parameters(model):
        p.requires_grad_(True)
    _record(model, mixer)
    return replaced


def _record(model: nn.Module, mixer: str) -> None:
    """model.wavedistill_config: the mixer, the converted layers and each layer's mixer kwargs."""
    modules = wave_attention_modules(model)
    model.wavedistill_config = {"mixer": mixer, "layers": sorted(modules),
                                "layer_kwargs": {str(i): modules[i].mixer_kwargs for i in sorted(modules)}}


def unconvert(model: nn.Module, layers=None) -> list[str]:
    """Put the original attention back in ``layers`` (default: every converted layer); return the restored paths.

    Once no layer is converted, the model's original ``requires_grad`` flags are restored too.
    """
    modules = wave_attention_modules(model)
    chosen = sorted(modules) if layers is None else sorted(int(i) for i in layers)
    missing = [i for i in chosen if i not in modules]
    if missing:
        raise SurgeryError(f"layers {missing} are not converted; converted layers: {sorted(modules)}")
    blocks = decoder_layers(model)
    prefix = _decoder_prefix(model)
    for i in chosen:
        blocks[i].self_attn = modules[i].base_attn
    if len(chosen) < len(modules):
        _record(model, model.wavedistill_config["mixer"])
    else:
        model.__dict__.pop("wavedistill_config", None)
        flags = model.__dict__.pop("_wavedistill_grad_flags", {})
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, p.requires_grad))
    return [f"{prefix}layers.{i}.self_attn" for i in chosen]


def detach_wave(model: nn.Module, layers) -> dict[int, WaveAttention]:
    """Unconvert ``layers`` but hand back their :class:`WaveAttention` modules (mixers and all) for
    :func:`attach_wave`."""
    modules = wave_attention_modules(model)
    kept = {int(i): modules[int(i)] for i in layers if int(i) in modules}
    unconvert(model, list(layers))
    return kept


def attach_wave(model: nn.Module, modules: dict[int, WaveAttention]) -> list[str]:
    """Put detached :class:`WaveAttention` modules back in their layers; return the replaced paths."""
    blocks = decoder_layers(model)
    mixers = {m.mixer.name for m in modules.values()} | {m.mixer.name for m in wave_attention_modules(model).values()}
    if len(mixers) > 1:
        raise SurgeryError(f"one mixer type per model, got {sorted(mixers)}")
    for i, m in modules.items():
        if blocks[i].self_attn is not m.base_attn:
            raise SurgeryError(f"layer {i} no longer holds the attention this wave module was built on")
        blocks[i].self_attn = m
    if modules:
        _record(model, mixers.pop())
    prefix = _decoder_prefix(model)
    return [f"{prefix}layers.{i}.self_attn" for i in sorted(modules)]


def converted_layers(model: nn.Module) -> list[int]:
    return [i for i, b in enumerate(decoder_layers(model)) if isinstance(b.self_attn, WaveAttention)]


def wave_attention_modules(model: nn.Module) -> dict[int, WaveAttention]:
    return {i: b.self_attn for i, b in enumerate(decoder_layers(model)) if isinstance(b.self_attn, WaveAttention)}


def mixer_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in wave_attention_modules(model).values() for p in m.mixer.parameters()]


def params_in_use(model: nn.Module) -> int:
    """Parameters the model computes with: a converted layer's replaced attention (kept for unconvert) excluded."""
    replaced = {id(p) for m in wave_attention_modules(model).values() for p in m.base_attn.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in replaced)


def mixer_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Mixer weights keyed by their path in the decoder stack: ``layers.{i}.self_attn.mixer.{name}``."""
    return {f"layers.{i}.self_attn.mixer.{k}": v for i, m in wave_attention_modules(model).items()
            for k, v in m.mixer.state_dict(keep_vars=True).items()}


def _decoder_prefix(model: nn.Module) -> str:
    decoder = model.get_decoder()
    for name, module in model.named_modules():
        if module is decoder:
            return f"{name}." if name else ""
    return ""
