from .cache import WaveCacheLayer
from .convert import (WaveAttention, add_handoff_gates, attach_wave, convert, converted_layers, detach_wave,
                      handoff_gate_parameters, mixer_parameters, mixer_state_dict, padding_mask_from_attention_mask,
                      params_in_use, remove_handoff_gates, set_handoff, unconvert, wave_attention_modules)
from .families import FAMILIES, UnsupportedModelError, attention_geometry, decoder_layers, family_of
from .teacher import TeacherView, as_teacher, keep_frozen_mlps

__all__ = ["FAMILIES", "TeacherView", "UnsupportedModelError", "WaveAttention", "WaveCacheLayer",
           "add_handoff_gates", "as_teacher", "attach_wave", "attention_geometry", "convert", "converted_layers",
           "decoder_layers", "detach_wave", "family_of", "handoff_gate_parameters", "keep_frozen_mlps",
           "mixer_parameters", "mixer_state_dict", "padding_mask_from_attention_mask", "params_in_use",
           "remove_handoff_gates",
           "set_handoff", "unconvert", "wave_attention_modules"]
