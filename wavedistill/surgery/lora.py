"""LoRA on the MLP projections (peft), to recover what the frozen MLPs cannot adapt to.

LoRA (Hu et al., 2021) adds a trainable low-rank update ``W + (alpha / r) B A`` beside a frozen
weight; LoLCATs uses it as the recovery stage after attention transfer. Injection goes through
``peft.inject_adapter_in_model`` on the decoder stack, so module names stay HF's
(``layers.3.mlp.up_proj.lora_A.default.weight``). The student keeps LoRA either as adapter
tensors (small; loading re-injects it) or merged into the MLP weights (no peft needed to run it).
"""

from __future__ import annotations

from torch import nn

from ..errors import WavedistillError
from .families import decoder_layers

MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def mlp_targets(model: nn.Module, layers=None) -> list[str]:
    """Decoder-relative names of the MLP projections of ``layers`` (default: every layer)."""
    blocks = decoder_layers(model)
    chosen = range(len(blocks)) if layers is None else layers
    targets = [f"layers.{i}.mlp.{name}" for i in chosen for name in MLP_PROJECTIONS
               if isinstance(getattr(blocks[i].mlp, name, None), nn.Linear)]
    if not targets:
        raise WavedistillError(f"no MLP projections ({', '.join(MLP_PROJECTIONS)}) found for LoRA in "
                               f"{type(model).__name__}")
    return targets


def add_mlp_lora(model: nn.Module, r: int, alpha: float, targets: list[str] | None = None) -> dict:
    """Inject LoRA of rank ``r`` into the MLP projections; return the config that rebuilds it.

    Only the new LoRA tensors become trainable; every other parameter keeps its ``requires_grad``
    (peft would otherwise freeze the mixers too).
    """
    from peft import LoraConfig, inject_adapter_in_model  # lazy: peft adds ~3 s to every start; only LoRA needs it

    if r < 1:
        raise WavedistillError(f"LoRA rank must be >= 1, got {r}")
    targets = list(targets or mlp_targets(model))
    decoder = model.get_decoder()
    flags = {n: p.requires_grad for n, p in decoder.named_parameters()}
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets), decoder)
    for n, p in decoder.named_parameters():
        # LoRA tensors are new and trainable; peft moved each wrapped weight under `.base_layer`.
        p.requires_grad_(".lora_" in n or flags[n.replace(".base_layer.", ".")])
    config = {"r": int(r), "alpha": float(alpha), "targets": targets}
    model.wavedistill_lora = config
    return config


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """LoRA tensors by decoder-relative name, found by module type."""
    from peft.tuners.lora import LoraLayer  # lazy: peft adds ~3 s to every start; only LoRA students need it

    out = {}
    for name, module in model.get_decoder().named_modules():
        if isinstance(module, LoraLayer):
            for pname, p in module.named_parameters():
                if pname.startswith(("lora_A.", "lora_B.")):
                    out[f"{name}.{pname}"] = p
    return out


def merge_mlp_lora(model: nn.Module) -> list[str]:
    """Fold every LoRA update into its base weight and drop the LoRA modules; return the merged weight names."""
    from peft.tuners.lora import LoraLayer  # lazy: peft adds ~3 s to every start; only LoRA students need it

    decoder = model.get_decoder()
    merged = []
    for name, module in list(decoder.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(decoder.get_submodule(parent_name), child, module.base_layer)
            merged.append(f"{name}.weight")
    model.__dict__.pop("wavedistill_lora", None)
    model.wavedistill_merged = sorted(set(getattr(model, "wavedistill_merged", [])) | set(merged))
    return merged
