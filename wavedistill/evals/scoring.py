"""The models a suite scores side by side: the teacher, the no-mixing baseline and the student.

"No mixing" is the teacher with every attention output zeroed (each token sees only itself): the floor
a mixer must beat. A converted student shares one copy of its base with the teacher; the teacher is that
model inside :func:`wavedistill.surgery.as_teacher`, which computes the base bit for bit.
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import WavedistillError
from ..evaluate import attention_zeroed
from ..surgery import TeacherView, as_teacher

MODELS = ("teacher", "no_mixing", "student")


@contextlib.contextmanager
def as_model(name: str, student, teacher):
    """The plain ``PreTrainedModel`` that computes ``name`` (teacher / no_mixing / student) inside the block."""
    if name not in MODELS:
        raise WavedistillError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if name == "student":
        yield student
        return
    with contextlib.ExitStack() as stack:
        model = teacher
        if isinstance(teacher, TeacherView):  # the base the student shares: run it as the teacher
            model = teacher._model
            stack.enter_context(as_teacher(model))
        if name == "no_mixing":
            stack.enter_context(attention_zeroed(model))
        yield model


@torch.no_grad()
def logits(models, name: str, ids: torch.Tensor) -> torch.Tensor:
    """(B, T, V) float32 next-token logits of model ``name`` over (B, T) ids, cut to the shared vocabulary."""
    with as_model(name, models.student, models.teacher) as model:
        device = next(model.parameters()).device
        return model(ids.to(device), use_cache=False).logits.float()[..., : models.vocab].cpu()
