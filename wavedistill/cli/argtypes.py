"""argparse types shared by the command lines (``wavedistill``, ``wavedistill lab``): each raises argparse's error."""

from __future__ import annotations

import argparse
import json

from ..errors import WavedistillError
from ..training.recipes import parse_stages_flag


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None


def layer_list(text: str) -> list[int]:
    return _ints(text, "layer indices such as 0,3")


def int_list(text: str) -> list[int]:
    return _ints(text, "integers such as 32,64")


def name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        example = '{"window": 32}'
        raise argparse.ArgumentTypeError(f"expected a JSON object, e.g. '{example}': {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def stages_list(text: str) -> list[dict]:
    try:
        return parse_stages_flag(text)
    except WavedistillError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def device_map_arg(text: str) -> str | dict:
    """A device map: a strategy or device name (``auto``, ``cpu``, ``cuda:1``) or a JSON module -> device mapping."""
    return json_dict(text) if text.lstrip().startswith("{") else text
