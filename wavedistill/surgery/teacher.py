"""The teacher as a view of the student: one copy of the base model's weights serves both.

A converted model still holds everything its base computes with: each :class:`WaveAttention` keeps
the original attention (``base_attn``) and runs it alone at hand-off ``a = 0``; LoRA can be bypassed;
MLPs unfrozen for training keep a frozen original beside them. :func:`as_teacher` switches all of
that on for the duration of a ``with`` block, so the converted model computes exactly its base model
(tests compare logits bit for bit), and :class:`TeacherView` is an ``nn.Module`` whose ``forward``,
``generate`` and ``get_decoder()`` run inside it. A distillation run therefore holds one copy of
the frozen base (in the teacher's dtype) plus the trainable parts (float32), instead of a teacher
and a float32 deep copy of it.
"""

from __future__ import annotations

import contextlib
import copy

from torch import nn

from .convert import wave_attention_modules
from .families import decoder_layers


def keep_frozen_mlps(model: nn.Module) -> None:
    """Before MLPs are unfrozen for training: keep a frozen copy of each, for the teacher view."""
    model.__dict__["_wavedistill_frozen_mlps"] = {i: copy.deepcopy(b.mlp).requires_grad_(False)
                                                  for i, b in enumerate(decoder_layers(model))}


@contextlib.contextmanager
def as_teacher(model: nn.Module):
    """Within the block, ``model`` computes its base model: original attention, no LoRA, frozen MLPs, eval mode."""
    from peft.tuners.lora import LoraLayer  # lazy: peft adds ~3 s to every start; only LoRA students need it

    modules = wave_attention_modules(model)
    handoff = {i: m.handoff for i, m in modules.items()}
    blocks = decoder_layers(model)
    frozen = model.__dict__.get("_wavedistill_frozen_mlps", {})
    trained_mlps = {i: blocks[i].mlp for i in frozen}
    lora = [m for m in model.modules() if isinstance(m, LoraLayer) and not m.disable_adapters]
    training = model.training
    try:
        for m in modules.values():
            m.handoff = 0.0  # the original attention alone; the mixer is not even run
        for i, mlp in frozen.items():
            blocks[i].mlp = mlp
        for m in lora:
            m.enable_adapters(False)
        model.eval()
        yield model
    finally:
        model.train(training)
        for m in lora:
            m.enable_adapters(True)
        for i, mlp in trained_mlps.items():
            blocks[i].mlp = mlp
        for i, m in modules.items():
            m.handoff = handoff[i]


class _DecoderView(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.__dict__["_model"] = model  # not a submodule: the view owns no parameters

    def __getattr__(self, name: str):
        return getattr(self._model.get_decoder(), name)

    def forward(self, *args, **kwargs):
        with as_teacher(self._model):
            return self._model.get_decoder()(*args, **kwargs)


class TeacherView(nn.Module):
    """``model`` seen as its base (teacher) model; every call runs inside :func:`as_teacher`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.__dict__["_model"] = model

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def forward(self, *args, **kwargs):
        with as_teacher(self._model):
            return self._model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with as_teacher(self._model):
            return self._model.generate(*args, **kwargs)

    def get_decoder(self) -> nn.Module:
        return _DecoderView(self._model)

    def parameters(self, recurse: bool = True):
        return self._model.parameters(recurse)
