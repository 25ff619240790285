"""Strict dataclass configs: YAML files holding only changes, unknown keys and mistyped values refused with
the list of known keys. The distill config (:mod:`wavedistill.training.config`) and the lab's
(:mod:`wavedistill.lab.config`) are both read through these."""

from __future__ import annotations

import dataclasses
import math
import types
import typing

import yaml

from ..errors import WavedistillError


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def read_changes(path: str, cls, renamed: dict[str, str] | None = None) -> dict:
    """Read a YAML file of changes; unknown keys are an error that lists the known ones."""
    try:
        with open(path) as f:
            changes = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise WavedistillError(f"config file {path!r} does not exist") from None
    except IsADirectoryError:
        raise WavedistillError(f"config file {path!r} is a folder; pass a YAML file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise WavedistillError(f"config file {path!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise WavedistillError(f"config file {path!r} is nested too deeply to be a config") from None
    if not isinstance(changes, dict):
        raise WavedistillError(f"config file {path!r} must hold a mapping of keys to values")
    bad = [k for k in changes if not isinstance(k, str)]
    if bad:
        raise WavedistillError(f"config file {path!r} has keys that are not names: {bad}; known keys: "
                               f"{', '.join(field_names(cls))}")
    changes = {k.replace("-", "_"): v for k, v in changes.items()}
    refuse_renamed(changes, renamed, f" (in {path!r})")
    unknown = sorted(set(changes) - set(field_names(cls)))
    if unknown:
        raise WavedistillError(f"unknown config keys {unknown} in {path!r}; known keys: {', '.join(field_names(cls))}")
    return changes


def build(changes: dict, cls, check, renamed: dict[str, str] | None = None):
    """``cls(**changes)`` with unknown keys and values of the wrong type refused, then ``check(cfg)``."""
    refuse_renamed(changes, renamed)
    unknown = sorted(set(changes) - set(field_names(cls)))
    if unknown:
        raise WavedistillError(f"unknown config keys {unknown}; known keys: {', '.join(field_names(cls))}")
    check_types(changes, cls)
    cfg = cls(**changes)
    check(cfg)
    return cfg


def check_types(values: dict, cls, where: str = "") -> None:
    """Each value has its dataclass field's type (YAML can hold anything: `lr: fast`, `layers: 3`, `epochs: .nan`)."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key in hints and not fits(value, hints[key]):
            raise WavedistillError(f"{where}{key} must be {type_name(hints[key])}, got {value!r}")


TYPE_NAMES = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false", dict: "a mapping",
              list: "a list", type(None): "null"}


def type_name(hint) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list and args:
        return f"a list of {TYPE_NAMES.get(args[0], str(args[0])).split(' ', 1)[-1]}s"
    if args and typing.get_origin(hint) is not dict:
        return " or ".join(type_name(a) for a in args)
    return TYPE_NAMES.get(hint, TYPE_NAMES.get(typing.get_origin(hint), str(hint)))


def fits(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if hint is list or origin is list:
        return isinstance(value, list) and all(fits(v, args[0]) for v in value) if args else isinstance(value, list)
    if hint is dict or origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return True


def refuse_renamed(changes: dict, renamed: dict[str, str] | None, where: str = "") -> None:
    """A key an earlier version had is an error that names what replaced it (``renamed``: old key -> message)."""
    for key in changes:
        if renamed and key in renamed:
            raise WavedistillError(f"{renamed[key]}{where}")


def to_yaml(cfg) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
