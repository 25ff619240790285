"""Decoder families whose self-attention can be replaced, and the facts surgery needs from each."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import WavedistillError


class UnsupportedModelError(WavedistillError, ValueError):
    pass


@dataclass(frozen=True)
class Family:
    """What differs between supported families, as far as a mixer is concerned."""

    qk_norm: bool  # attention normalises q and k per head (q_norm / k_norm)


FAMILIES: dict[str, Family] = {
    "llama": Family(qk_norm=False),
    "mistral": Family(qk_norm=False),
    "qwen2": Family(qk_norm=False),
    "qwen3": Family(qk_norm=True),
    "gemma3_text": Family(qk_norm=True),
    "gemma3": Family(qk_norm=True),
}


def family_of(model: nn.Module) -> Family:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"unsupported architecture {model_type!r}; supported families: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    family_of(model)
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None or not all(hasattr(layer, "self_attn") for layer in layers):
        raise UnsupportedModelError(f"{type(decoder).__name__} has no `layers[i].self_attn` to replace")
    return layers


def attention_geometry(model: nn.Module) -> dict:
    """Mixer keyword arguments that describe the teacher's attention shape."""
    cfg = model.get_decoder().config
    n_heads = cfg.num_attention_heads
    return {
        "n_heads": n_heads,
        "n_kv_heads": getattr(cfg, "num_key_value_heads", None) or n_heads,
        "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads,
        # Read off the module: Qwen2 has q/k/v biases but no `attention_bias` config field.
        "bias": decoder_layers(model)[0].self_attn.v_proj.bias is not None,
    }
