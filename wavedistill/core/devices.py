"""Devices and dtypes by name, and where a (possibly offloaded) module computes."""

from __future__ import annotations

import contextlib

import torch
from accelerate.utils import align_module_device
from torch import nn

from ..errors import WavedistillError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}  # accelerate's names for DTYPES


def resolve_device(name: str) -> str:
    """``name`` if this machine has it; a CUDA device without CUDA is an error, never a silent switch to the CPU."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise WavedistillError(f"--device {name} asked for, but CUDA is not available; pass --device cpu")
    return name


def placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where ``module`` computes and in what dtype; for a module offloaded by accelerate's big-model loading
    (weights on "meta", moved in by a hook for each forward) that is the hook's execution device."""
    ref = next(module.parameters())
    for m in module.modules():
        hook = getattr(m, "_hf_hook", None)
        if getattr(hook, "execution_device", None) is not None:
            return torch.device(hook.execution_device), ref.dtype
    return ref.device, ref.dtype


@contextlib.contextmanager
def materialized(module: nn.Module):
    """Within the block, an offloaded module's weights are real tensors on its execution device."""
    with contextlib.ExitStack() as stack:
        for m in module.modules():
            if hasattr(m, "_hf_hook"):
                stack.enter_context(align_module_device(m))
        yield module
