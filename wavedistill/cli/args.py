"""The distillation flags every training command shares (distill, kd, layers, compare): the flag tables, how they
become config changes, and the held-out text flags of the evaluation commands."""

from __future__ import annotations

import argparse
import os

from ..data import DataSplit
from ..errors import WavedistillError
from ..training.config import DistillConfig, load_yaml, make_config, saved_config
from ..training.recipes import LOSS_FIELDS, KDLoss
from .argtypes import device_map_arg, json_dict, layer_list, name_list, stages_list

DISTILL_FLAGS = {  # flag (and aliases) -> config field; defaults come from DistillConfig
    ("--teacher",): "teacher", ("--wave-type", "--wave_type", "--mixer"): "wave_type", ("--layers",): "layers",
    ("--data",): "data", ("--n-samples", "--n_samples"): "n_samples", ("--epochs", "--n_epochs"): "epochs",
    ("--output-dir", "--output_dir"): "output_dir", ("--seq-len",): "seq_len", ("--batch-size",): "batch_size",
    ("--lr",): "lr", ("--temperature",): "temperature", ("--max-steps",): "max_steps",
    ("--save-every",): "save_every", ("--eval-every",): "eval_every", ("--device",): "device", ("--dtype",): "dtype",
    ("--seed",): "seed", ("--mixer-kwargs",): "mixer_kwargs", ("--test-windows",): "test_windows",
    ("--keep-attention",): "keep_attention", ("--keep-attention-every",): "keep_attention_every",
    ("--stages",): "stages", ("--lora-mlp",): "lora_mlp", ("--lora-alpha",): "lora_alpha", ("--reinit",): "reinit",
    ("--grad-accum",): "grad_accum", ("--teacher-cache",): "teacher_cache", ("--train-windows",): "train_windows",
    ("--teacher-dtype",): "teacher_dtype", ("--teacher-device-map",): "teacher_device_map",
    ("--teacher-max-memory",): "teacher_max_memory", ("--tracker",): "tracker",
    ("--grad-norm-every",): "grad_norm_every", ("--val-windows",): "val_windows",
}


STUDENT_SIZE_FLAGS = {"--student-layers": "layers", "--student-hidden-size": "hidden_size",
                      "--student-heads": "heads", "--student-kv-heads": "kv_heads",
                      "--student-intermediate-size": "intermediate_size"}


LOSS_HELP = {"kl_weight": "weight of the divergence to the teacher (default: 0.9)",
             "ce_weight": "weight of next-token CE on the data (default: 0.1)",
             "label_smoothing": "of the CE term, in [0, 1) (default: 0)",
             "divergence": "forward_kl (default) | reverse_kl | jsd",
             "temperature_schedule": "constant (default) | linear | cosine (to --temperature-end) | dynamic",
             "temperature_end": "end of a linear / cosine schedule (default: 1)",
             "temperature_max": "dynamic: the temperature of a fully confident teacher position (default: 4)",
             "hidden_weight": "weight of the feature loss on mapped layer outputs (default: 0)",
             "hidden_loss": "mse (default) | cosine, through a learned projection where widths differ",
             "attention_weight": "weight of the attention-map loss, or a wave mixer's mixing matrix (default: 0)",
             "attention_loss": "kl (default) | mse, per query row",
             "attention_heads": "head (default): head h <-> teacher head h | group: <-> its GQA group's mean",
             "attention_window": "> 0: match the maps of the first N positions only (default: 0 = all)",
             "loss_chunk": "positions per chunk of the kd loss; 0 = dense (default: ~128 MB per chunk)"}


def layer_map_arg(text: str) -> str | list[int]:
    return layer_list(text) if text[:1].isdigit() else text


def add_distill_args(p: argparse.ArgumentParser) -> None:
    defaults = DistillConfig()
    types = {"layers": layer_list, "keep_attention": layer_list, "reinit": name_list, "mixer_kwargs": json_dict,
             "teacher_device_map": device_map_arg, "teacher_max_memory": json_dict,
             "epochs": float, "lr": float,
             "temperature": float, "stages": stages_list, "lora_alpha": float}
    for flags, name in DISTILL_FLAGS.items():
        default = getattr(defaults, name)
        kind = types.get(name, type(default) if default is not None else str)
        p.add_argument(*flags, dest=name, type=kind, default=None, help=f"(default: {default})")
    # an earlier version's flag: refused in distill_changes with what replaced it
    p.add_argument("--alpha", dest="removed_alpha", type=float, help=argparse.SUPPRESS)
    p.add_argument("--config", "--recipe", dest="config",
                   help="YAML file with config changes (a recipe: `stages:` and settings); command-line flags win")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the run in --output-dir with the settings of its config.yaml (flags may change only "
                        "--max-steps upward, --save-every, --device, --tracker, --grad-norm-every)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="delete what --output-dir holds and start again (otherwise a used folder is refused)")
    p.add_argument("--unfreeze-mlps", action="store_true", default=None, help="also train the MLPs")
    p.add_argument("--lora-merge", action="store_true", default=None,
                   help="merge the --lora-mlp update into the MLP weights of the final adapter")
    p.add_argument("--grad-checkpointing", action="store_true", default=None,
                   help="recompute decoder-layer activations in backward instead of storing them")
    p.add_argument("--no-train", dest="train", action="store_false", default=None,
                   help="score the teacher-initialised student without training (a baseline)")
    g = p.add_argument_group("the kd loss, set on every kd / progressive / handoff stage (a recipe stage that sets "
                             "the same field to another value is an error)")
    loss_defaults = KDLoss()
    for key in LOSS_FIELDS:
        default = getattr(loss_defaults, key)
        kind = int if key == "loss_chunk" else float if default is None else type(default)
        g.add_argument(f"--{key.replace('_', '-')}", dest=f"loss_{key}", metavar=key.upper(), type=kind,
                       help=LOSS_HELP[key])
    g = p.add_argument_group("a separate, smaller student (instead of converting the teacher in place)")
    g.add_argument("--student", dest="student_base", metavar="PRESET|FOLDER",
                   help="standard | compressed | tiny (the teacher scaled in width / depth) or a local HF model folder")
    for flag, key in STUDENT_SIZE_FLAGS.items():
        g.add_argument(flag, dest=f"student_{key}", type=int, help="overrides the preset (default: the teacher's)")
    g.add_argument("--student-mixer", dest="student_mixer", help="attention (default) or any registered mixer")
    g.add_argument("--student-init", dest="student_init", help="teacher (weight selection, default) | random")
    g.add_argument("--layer-map", dest="student_layer_map", type=layer_map_arg,
                   help="uniform (default) | first | last | zones | teacher layers such as 0,2,4")


def distill_changes(args: argparse.Namespace) -> dict:
    """Config changes from --config / --recipe and the flags given (flags win)."""
    if args.removed_alpha is not None:
        raise WavedistillError("--alpha was replaced by --kl-weight and --ce-weight (--alpha A = --kl-weight A "
                               "--ce-weight 1-A)")
    changes = load_yaml(args.config) if args.config else {}
    switches = ["resume", "overwrite", "unfreeze_mlps", "lora_merge", "train", "grad_checkpointing"]
    for name in list(DISTILL_FLAGS.values()) + switches:
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    student = dict(changes.get("student") or {})
    if args.student_base is not None:
        student["path" if os.path.isdir(args.student_base) else "preset"] = args.student_base
    for key in list(STUDENT_SIZE_FLAGS.values()) + ["mixer", "init", "layer_map"]:
        value = getattr(args, f"student_{key}")
        if value is not None:
            student[key] = value
    if student:
        changes["student"] = student
    loss = dict(changes.get("loss") or {})
    loss.update({key: getattr(args, f"loss_{key}") for key in LOSS_FIELDS if getattr(args, f"loss_{key}") is not None})
    if loss:
        changes["loss"] = loss
    return changes


def distill_config(args: argparse.Namespace):
    """The run's config; with --resume, the run's own config.yaml with the flags given on top (checked by the run)."""
    changes = distill_changes(args)
    if changes.get("resume"):
        out = changes.get("output_dir", DistillConfig.output_dir)
        saved = saved_config(out) if os.path.isfile(os.path.join(out, "config.yaml")) else {}
        student = {**(saved.get("student") or {}), **(changes.get("student") or {})} or None
        # how the run was started (--overwrite) is not a setting to carry over
        changes = {**saved, "overwrite": False, **changes, "student": student}
    return make_config(changes)


def add_held_out_args(p: argparse.ArgumentParser, splits: list[str]) -> None:
    """Which held-out text a command reads: a split of --data's documents, split as the run split them."""
    p.add_argument("--split", default="test", choices=splits,
                   help="which part of --data: the run's test split (default)" + (" or all of it" if "all" in splits
                                                                                   else ""))
    p.add_argument("--val-frac", type=float, help=f"default: the run's config.yaml, else {DataSplit.val_frac}")
    p.add_argument("--test-frac", type=float, help=f"default: the run's config.yaml, else {DataSplit.test_frac}")
    p.add_argument("--n-samples", type=int, help="documents to read (0 = all; hub: 20000); default: the run's when "
                   "--data is the run's data")
