"""Registered token mixers. Each module registers itself on import; import order is the listing order."""

from . import (attention, fnet, frequency_band, gated_delta_net, learned_gate, phase_attention,  # noqa: F401
               phase_shift, rotary_gla, s4d, selective_s4d, wave_network, wda)
from .base import WaveMixer
from .registry import MIXERS, build_mixer, get_mixer_class, list_mixers, mixer_kwargs, register_mixer

__all__ = ["MIXERS", "WaveMixer", "build_mixer", "get_mixer_class", "list_mixers", "mixer_kwargs", "register_mixer"]
