"""Replace self-attention with wave mixers in a Hugging Face decoder, reversibly.

``convert`` swaps ``layers[i].self_attn`` for a :class:`WaveAttention` that keeps the original
module (``base_attn``), forwards unknown attributes to it, speaks HF's attention call contract
(keyword arguments in, ``(output, None)`` out) and returns the list of replaced module paths.
``unconvert`` puts the originals back. Trainable and saved parameters are found by module type.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

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
    runs in parallel and the output is ``(1 - a) * attention + a * mixer``; a = 0 is the teacher
    exactly, a = 1 the mixer's output (with the attention still computed, so a cache stays valid).
    """

    def __init__(self, base_attn: nn.Module, mixer: WaveMixer, layer_idx: int) -> None:
        super().__init__()
        self.base_attn = base_attn
        self.mixer = mixer
        self.wave_layer_idx = layer_idx
        self.handoff: float | None = None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("base_attn", "mixer"):
                raise
            return getattr(self.base_attn, name)

    def forward(self, hidden_states: Tensor, position_embeddings=None, attention_mask=None, past_key_values=None,
                cache=None, **kwargs) -> tuple[Tensor, None]:
        # transformers >= 5.24 passes the cache as `cache`, earlier 5.x as `past_key_values`; hand the
        # original attention the name it was given, so either release updates its K/V.
        cache_kw = ({"cache": cache} if cache is not None else
                    {"past_key_values": past_key_values} if past_key_values is not None else {})
        cache = cache if cache is not None else past_key_values
        q_len = hidden_states.shape[1]
        pad = padding_mask_from_attention_mask(attention_mask, q_len)
        parallel = self.handoff is not None
        if parallel:
            attn_out, _ = self.base_attn(hidden_states=hidden_states, position_embeddings=position_embeddings,
                                         attention_mask=attention_mask, **cache_kw, **kwargs)
        if cache is None:
            mixed = self.mixer(hidden_states, padding_mask=pad, position_embeddings=position_embeddings)
        else:
            layer = wave_cache_layer(cache, self.wave_layer_idx)
            x, pad, pe = layer.append(hidden_states, pad, position_embeddings, write_kv=not parallel)
            mixed = self.mixer(x, padding_mask=pad, position_embeddings=pe)[:, -q_len:]
        if not parallel:
            return mixed, None
        if self.handoff == 0:
            return attn_out, None  # exactly the teacher, whatever the mixer computes
        return (1 - self.handoff) * attn_out + self.handoff * mixed, None


def set_handoff(model: nn.Module, a: float | None, layers=None) -> None:
    """Blend the original attention and the mixer in converted ``layers`` (default all); None = mixer only.

    Set the same value for a whole ``generate`` call: the attention's K/V cache is filled only
    while hand-off is on.
    """
    if a is not None and not 0.0 <= a <= 1.0:
        raise SurgeryError(f"hand-off weight must be in [0, 1] or None, got {a}")
    modules = wave_attention_modules(model)
    for i in modules if layers is None else layers:
        if i not in modules:
            raise SurgeryError(f"layer {i} is not converted; converted layers: {sorted(modules)}")
        modules[i].handoff = a


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
        ref = next(attn.parameters())
        m = build_mixer(mixer, model.get_decoder().config.hidden_size, layer_idx=i, **kwargs)
        if init_from_teacher:
            m.init_from_attention(attn)
        m = m.to(device=ref.device, dtype=ref.dtype)
        blocks[i].self_attn = WaveAttention(attn, m, i)
        replaced.append(f"{prefix}layers.{i}.self_attn")
    for p in mixer_parameters(model):
        p.requires_grad_(True)
    per_layer = {**(previous["layer_kwargs"] if previous else {}), **{str(i): kwargs for i in chosen}}
    model.wavedistill_config = {"mixer": mixer, "layers": sorted(int(i) for i in per_layer),
                                "layer_kwargs": dict(sorted(per_layer.items(), key=lambda kv: int(kv[0])))}
    return replaced


def unconvert(model: nn.Module) -> list[str]:
    """Put the original attention modules back; return the restored paths."""
    restored = []
    prefix = _decoder_prefix(model)
    for i, block in enumerate(decoder_layers(model)):
        if isinstance(block.self_attn, WaveAttention):
            block.self_attn = block.self_attn.base_attn
            restored.append(f"{prefix}layers.{i}.self_attn")
    model.__dict__.pop("wavedistill_config", None)
    flags = model.__dict__.pop("_wavedistill_grad_flags", {})
    for n, p in model.named_parameters():
        p.requires_grad_(flags.get(n, p.requires_grad))
    return restored


def converted_layers(model: nn.Module) -> list[int]:
    return [i for i, b in enumerate(decoder_layers(model)) if isinstance(b.self_attn, WaveAttention)]


def wave_attention_modules(model: nn.Module) -> dict[int, WaveAttention]:
    return {i: b.self_attn for i, b in enumerate(decoder_layers(model)) if isinstance(b.self_attn, WaveAttention)}


def mixer_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in wave_attention_modules(model).values() for p in m.mixer.parameters()]


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
