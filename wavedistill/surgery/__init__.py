from .cache import WaveCacheLayer
from .convert import (WaveAttention, convert, converted_layers, mixer_parameters, mixer_state_dict,
                      padding_mask_from_attention_mask, set_handoff, unconvert, wave_attention_modules)
from .families import FAMILIES, UnsupportedModelError, attention_geometry, decoder_layers, family_of

__all__ = ["FAMILIES", "UnsupportedModelError", "WaveAttention", "WaveCacheLayer", "attention_geometry", "convert",
           "converted_layers", "decoder_layers", "family_of", "mixer_parameters", "mixer_state_dict",
           "padding_mask_from_attention_mask", "set_handoff", "unconvert", "wave_attention_modules"]
