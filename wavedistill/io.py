"""Load teachers, and save / load student adapters (safetensors mixer weights + a JSON config).

An adapter folder holds ``adapter_model.safetensors`` (only the new or unfrozen weights, keyed
relative to the decoder stack, e.g. ``layers.3.self_attn.mixer.kernel``) and ``adapter_config.json`` naming
the base model, a fingerprint of its weights, the converted layers and the mixer with its kwargs.
Loading refuses an adapter whose base does not match, and any missing or unexpected key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .core.devices import materialized
from .core.run_folder import umask, verify_checksums, write_checksums
from .errors import AdapterError, ModelLoadError
from .surgery import TeacherView, convert, decoder_layers, handoff_gate_parameters, keep_frozen_mlps, mixer_state_dict
from .surgery.lora import add_mlp_lora, lora_parameters
from .version import __version__

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT_VERSION = 1


def load_teacher(name_or_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu",
                 device_map: str | dict | None = None, max_memory: dict | None = None,
                 offload_folder: str | None = None):
    """(model, tokenizer) from a local folder or a hub id; frozen, in eval mode.

    ``device_map`` ("auto", "balanced", "sequential", a device, or a module -> device mapping) loads it
    through accelerate's big-model loading across devices, with CPU / disk offload beyond ``max_memory``
    (e.g. ``{"cpu": "2GB"}``) into ``offload_folder``; ``device`` is then ignored.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: transformers' Auto classes add ~0.4 s to every command's start

    _check_local(name_or_path)
    placed = {} if device_map is None else {"device_map": device_map, "max_memory": max_memory,
                                            "offload_folder": offload_folder}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **placed)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load teacher {name_or_path!r}: {str(e).splitlines()[0][:300]}") from None
    if device_map is None:
        model = model.to(device)
    return model.eval().requires_grad_(False), tokenizer


def _check_local(name_or_path: str) -> None:
    looks_local = os.path.isabs(name_or_path) or name_or_path.startswith(".") or os.path.exists(name_or_path)
    if looks_local and not os.path.isdir(name_or_path):
        raise ModelLoadError(f"model path {name_or_path!r} does not exist; pass a model folder or a hub id")


def load_tokenizer(name_or_path: str):
    """(tokenizer, context length or None) of a model folder or hub id, without loading its weights."""
    from transformers import AutoConfig, AutoTokenizer  # lazy: transformers' Auto classes add ~0.4 s to every command's start

    _check_local(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load {name_or_path!r}: {str(e).splitlines()[0][:300]}") from None
    return tokenizer, context_length(config)


def context_length(config) -> int | None:
    """The context a model was trained for, from its HF config (a VLM's text config); None when it names none."""
    config = getattr(config, "text_config", None) or config
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    return None


def check_device_map(device_map) -> None:
    """Refuse a device map that names a device this machine does not have, in one line."""
    strategies = {"auto", "balanced", "balanced_low_0", "sequential"}
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    have = ["cpu", "disk", *(f"cuda:{i}" for i in range(n_cuda))]
    for v in [device_map] if isinstance(device_map, (str, int)) else list(device_map.values()):
        name = f"cuda:{v}" if isinstance(v, int) or str(v).isdigit() else "cuda:0" if v == "cuda" else str(v)
        if name not in strategies and name not in have:
            raise ModelLoadError(f"--teacher-device-map names device {v!r}, which this machine does not have; "
                                 f"available: {', '.join(have)} (or {', '.join(sorted(strategies))})")


def architecture(model: nn.Module) -> str:
    cfg = model.get_decoder().config
    return f"{cfg.model_type}|{cfg.hidden_size}|{len(decoder_layers(model))}|{cfg.vocab_size}"


def _embeddings(model: nn.Module) -> torch.Tensor:
    with materialized(model.get_input_embeddings()) as emb:  # offloaded by a device map: read it in
        return emb.weight.detach().float().flatten().cpu()


def base_fingerprint(model: nn.Module) -> str:
    """A short hash of the architecture and a strided sample of the input embeddings (exact dtype)."""
    emb = _embeddings(model)
    h = hashlib.sha256()
    h.update(architecture(model).encode())
    h.update(emb[:: max(1, emb.numel() // 65536)].numpy().tobytes())
    return h.hexdigest()[:16]


def embedding_sample(model: nn.Module, n: int = 256) -> list[float]:
    """n evenly strided input-embedding values, to recognise the same base loaded in another dtype."""
    emb = _embeddings(model)
    return emb[:: max(1, emb.numel() // n)][:n].tolist()


def same_base(model: nn.Module, config: dict, fingerprint: str) -> bool:
    """Is ``model`` (whose :func:`base_fingerprint` is ``fingerprint``) the base the adapter was trained on?"""
    if fingerprint == config["base_fingerprint"]:
        return True
    if "embedding_sample" not in config or config.get("base_architecture") != architecture(model):
        return False
    # bf16 / fp16 round embeddings to ~3 significant digits; a different base differs far more.
    stored = torch.tensor(config["embedding_sample"])
    return torch.allclose(torch.tensor(embedding_sample(model, len(stored))), stored, rtol=2e-2, atol=1e-3)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a student adds to its base: mixer weights, LoRA tensors, and any other decoder weight that
    was trained (MLPs unfrozen for recovery) or changed (LoRA merged into an MLP). Hand-off gates
    are training-time state and never part of an adapter."""
    sd = mixer_state_dict(model)
    if getattr(model, "wavedistill_lora", None):
        sd.update(lora_parameters(model))
    gates = {id(p) for p in handoff_gate_parameters(model).values()}
    merged = set(getattr(model, "wavedistill_merged", []))
    for name, p in model.get_decoder().named_parameters():
        if name not in sd and id(p) not in gates and (p.requires_grad or name in merged):
            sd[name] = p
    sd.update({k: p for k, p in _untied_head(model).items() if p.requires_grad})
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def _untied_head(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LM head's weights under ``lm_head.*`` when they are not the input embeddings (a student trains them)."""
    head = model.get_output_embeddings()
    if head is None or head.weight is model.get_input_embeddings().weight:
        return {}
    return {f"lm_head.{k}": v for k, v in head.state_dict(keep_vars=True).items()}


def base_identity(model: nn.Module) -> dict:
    """What an adapter records to recognise its base: fingerprint, architecture, embedding sample. A student
    that trains its embeddings records this once, from its initial state (the base folder it is saved in)."""
    return model.__dict__.get("_wavedistill_base_identity") or {
        "base_fingerprint": base_fingerprint(model), "base_architecture": architecture(model),
        "embedding_sample": embedding_sample(model)}


def save_adapter(model: nn.Module, directory: str, base_model: str, teacher_model: str | None = None) -> None:
    """Write the adapter atomically: a failed write never leaves a half-written folder behind."""
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".adapter-", dir=parent)
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it private (0700); an adapter is an ordinary folder
    write_adapter_files(model, tmp, base_model, teacher_model)
    replace_dir(tmp, directory)


def _findable(name: str | None) -> str | None:
    """A local folder as an absolute path, found again from any working directory; a hub id as it is."""
    return os.path.abspath(name) if name and os.path.isdir(name) else name


def write_adapter_files(model: nn.Module, directory: str, base_model: str, teacher_model: str | None = None) -> None:
    """Write adapter_model.safetensors + adapter_config.json into an existing folder.

    ``teacher_model``: the model a separate (smaller) student was distilled from, when it is not the base.
    """
    # A student that keeps softmax attention has no converted layer.
    cfg = getattr(model, "wavedistill_config", None) or {"mixer": None, "layers": [], "layer_kwargs": {}}
    sd = adapter_state_dict(model)
    lora = getattr(model, "wavedistill_lora", None)
    extra = sorted({k.split(".")[2] if k.startswith("layers.") else k.split(".")[0] for k in sd
                    if ".self_attn.mixer." not in k and ".lora_" not in k})
    config = {
        "format_version": FORMAT_VERSION,
        "wavedistill_version": __version__,
        "base_model": _findable(base_model),
        "base_model_type": model.get_decoder().config.model_type,
        **base_identity(model),
        "teacher_model": _findable(teacher_model),
        "layers": cfg["layers"],
        "mixer": cfg["mixer"],
        "layer_kwargs": cfg["layer_kwargs"],
        "unfrozen": extra,
        "lora": lora,
    }
    save_file(sd, os.path.join(directory, ADAPTER_WEIGHTS))
    os.chmod(os.path.join(directory, ADAPTER_WEIGHTS), 0o666 & ~umask())  # safetensors writes it private (0600)
    with open(os.path.join(directory, ADAPTER_CONFIG), "w") as f:
        json.dump(config, f, indent=2)
    write_checksums(directory, [ADAPTER_WEIGHTS])


def write_text(path: str, text: str) -> None:
    """Write a text file through a temporary file beside it: an interrupted write never leaves half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def replace_dir(src: str, dst: str) -> None:
    """Move ``src`` to ``dst``, replacing an existing ``dst`` only once ``src`` is complete."""
    if os.path.exists(dst):
        old = dst + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def read_adapter_config(directory: str) -> dict:
    path = os.path.join(directory, ADAPTER_CONFIG)
    if not os.path.isfile(path):
        runs = sorted(n for n in (os.listdir(directory) if os.path.isdir(directory) else [])
                      if os.path.isfile(os.path.join(adapter_dir(os.path.join(directory, n)), ADAPTER_CONFIG)))
        hint = f" (students in it: {', '.join(os.path.join(directory, n) for n in runs)})" if runs else ""
        raise AdapterError(f"{directory!r} is not a wavedistill adapter: {ADAPTER_CONFIG} is missing{hint}")
    try:
        with open(path) as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"corrupt adapter config {path!r}: {e}") from None
    if not isinstance(config, dict):
        raise AdapterError(f"corrupt adapter config {path!r}: not a JSON object")
    missing = [k for k in ("base_model", "base_fingerprint", "layers", "mixer", "layer_kwargs") if k not in config]
    if missing:
        raise AdapterError(f"adapter config {path!r} lacks {missing}; it was not written by this wavedistill")
    types = {"base_model": (str,), "base_fingerprint": (str,), "mixer": (str, type(None)), "layer_kwargs": (dict,),
             "layers": (list,)}
    wrong = [k for k, t in types.items() if not isinstance(config[k], t)]
    if not wrong and not all(str(k).isdigit() and isinstance(v, dict) for k, v in config["layer_kwargs"].items()):
        wrong = ["layer_kwargs"]
    if wrong or not all(isinstance(i, int) and not isinstance(i, bool) for i in config["layers"]):
        raise AdapterError(f"corrupt adapter config {path!r}: {', '.join(wrong) or 'layers'} has the wrong type; "
                           "restore the file or distill the adapter again")
    if config.get("format_version") != FORMAT_VERSION:
        raise AdapterError(f"{path!r} has format_version {config.get('format_version')!r}; "
                           f"this wavedistill reads {FORMAT_VERSION}")
    return config


def read_adapter_weights(directory: str) -> dict[str, torch.Tensor]:
    """The adapter tensors of ``directory`` (an adapter or a checkpoint), checked against the checksums written with
    them; a damaged file is an AdapterError naming it."""
    verify_checksums(directory, [ADAPTER_WEIGHTS], AdapterError)
    try:
        return load_file(os.path.join(directory, ADAPTER_WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"corrupt or unreadable adapter weights in {directory!r}: {e}") from None


def apply_adapter(model: nn.Module, directory: str) -> nn.Module:
    """Convert ``model`` as the adapter says and load its weights; checks base, keys and shapes."""
    config = read_adapter_config(directory)
    fp = base_fingerprint(model)
    if not same_base(model, config, fp):
        raise AdapterError(f"adapter {directory!r} was trained on base {config['base_model']!r} "
                           f"(fingerprint {config['base_fingerprint']}), but the given base has fingerprint {fp}; "
                           "pass the matching base model with --base")
    weights = read_adapter_weights(directory)
    groups: dict[str, list[int]] = {}
    for i, kw in config["layer_kwargs"].items():
        groups.setdefault(json.dumps(kw, sort_keys=True), []).append(int(i))
    for kw, layers in groups.items():
        convert(model, config["mixer"], layers=layers, init_from_teacher=False, **json.loads(kw))
    if config.get("lora"):
        add_mlp_lora(model, config["lora"]["r"], config["lora"]["alpha"], config["lora"]["targets"])
    load_adapter_weights(model, weights, directory)
    return model


def student_and_teacher(base: nn.Module, directory: str):
    """(student, teacher) sharing one copy of ``base``: the adapter applied in place, and its teacher view.

    Weights an adapter replaces in the base itself (unfrozen or LoRA-merged MLPs) keep a frozen
    original for the teacher view; any other replaced base weight is refused, since the teacher
    could not be recovered from a shared copy.
    """
    config = read_adapter_config(directory)
    others = sorted(set(config.get("unfrozen") or []) - {"mlp"})
    if others:
        raise AdapterError(f"adapter {directory!r} replaces base weights {others}; only MLPs can be replaced while "
                           "the base doubles as the teacher")
    if config.get("unfrozen"):
        keep_frozen_mlps(base)
    student = apply_adapter(base, directory)
    return student, TeacherView(student)


def load_adapter_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Copy adapter tensors into a converted model; every mixer (and LoRA) tensor must be present, nothing unknown."""
    targets = {**model.get_decoder().state_dict(keep_vars=True), **_untied_head(model)}

    needed = set(mixer_state_dict(model)) | (set(lora_parameters(model)) if getattr(model, "wavedistill_lora", None)
                                             else set())
    missing = sorted(needed - set(weights))
    unexpected = sorted(set(weights) - set(targets))
    if missing or unexpected:
        raise AdapterError(f"adapter {source!r} does not match this model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    with torch.no_grad():
        for k, v in weights.items():
            if targets[k].shape != v.shape:
                raise AdapterError(f"adapter weight {k} has shape {tuple(v.shape)}, expected {tuple(targets[k].shape)}")
            targets[k].copy_(v)


def adapter_dir(path: str) -> str:
    """The adapter folder of a run folder (``path/adapter``), or ``path`` itself."""
    return os.path.join(path, "adapter") if os.path.isdir(os.path.join(path, "adapter")) else path


def load_student(path: str, base: str | None = None, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """(student, tokenizer) from a run folder (with ``adapter/``) or an adapter folder."""
    directory = adapter_dir(path)
    config = read_adapter_config(directory)
    model, tokenizer = load_teacher(base or config["base_model"], dtype=dtype, device=device)
    apply_adapter(model, directory)
    return model.to(device).eval(), tokenizer
