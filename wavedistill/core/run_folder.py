"""Run folders: who owns an output folder, and checksums that catch a corrupted file before it is used.

A command that writes a folder first *claims* it (:func:`claim`): it writes ``wavedistill_run.json`` (the command,
its arguments, the settings, the wavedistill version, the time) before anything else, and refuses a folder that
holds another run or files it did not write, unless told to resume or to overwrite. So a failed start leaves a
folder that names what wrote it, and the next start says in one line what to do with it.

Weights and resume state are written with ``checksums.json`` beside them (SHA-256 of each file, at save time) and
checked at load (:func:`verify_checksums`), so a truncated or damaged file is an error naming it, before any
training.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time

from ..errors import WavedistillError
from ..version import __version__

MANIFEST = "wavedistill_run.json"
CHECKSUMS = "checksums.json"


def read_manifest(folder: str) -> dict:
    """The manifest of a claimed folder; {} for a folder nothing claimed."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WavedistillError(f"{path!r} is unreadable ({e}); it records what wrote {folder!r}: restore it, or "
                               "pass --overwrite to start the folder again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("command"), str):
        raise WavedistillError(f"{path!r} is not a wavedistill manifest; pass --overwrite to start {folder!r} again")
    return manifest


def check_not_file(folder: str, flag: str = "--output-dir") -> None:
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise WavedistillError(f"{flag} {folder!r} is a file, not a folder; choose another {flag}")


def contents(folder: str) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def describe(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def claim(folder: str, command: str, settings: dict | None = None, *, resume: bool = False,
          overwrite: bool = False, resumable: bool = True) -> dict:
    """Make ``folder`` this command's output, or refuse in one line; returns the manifest.

    * empty or missing: claimed (the manifest is written);
    * ``overwrite``: everything in it is deleted first — only because the user said so;
    * ``resume``: the folder must already be this command's (or an older run without a manifest; see the caller's
      checks for a checkpoint);
    * anything else in it (another run, a run stopped before its first checkpoint, foreign files) is refused with
      the way out named.
    """
    check_not_file(folder)
    present = [n for n in contents(folder) if n != MANIFEST]
    manifest = read_manifest(folder)
    if resume and overwrite:
        raise WavedistillError("--resume continues the run in the folder and --overwrite deletes it: pass one")
    if resume:
        if manifest and manifest["command"] != command:
            raise WavedistillError(f"{folder!r} holds a `wavedistill {manifest['command']}` run, not a "
                                   f"`wavedistill {command}` one; resume it with the command that wrote it")
        if not manifest and not present:
            raise WavedistillError(f"--resume given but {folder!r} holds no run; drop --resume to start one")
        return manifest or {"command": command}
    if present or manifest:
        if not overwrite:
            raise WavedistillError(_refusal(folder, command, manifest, present, resumable))
        for name in contents(folder):
            path = os.path.join(folder, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    return write_manifest(folder, command, settings)


def write_manifest(folder: str, command: str, settings: dict | None = None) -> dict:
    manifest = {"command": command, "argv": sys.argv[1:], "version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": settings or {}}
    os.makedirs(folder, exist_ok=True)
    write_json_atomic(os.path.join(folder, MANIFEST), manifest)
    return manifest


def _refusal(folder: str, command: str, manifest: dict, present: list[str], resumable: bool) -> str:
    again = "--overwrite to delete it and start again, or choose another --output-dir"
    if manifest:
        by = f"a `wavedistill {manifest['command']}` run started {manifest.get('created', '?')}"
        if resumable and manifest["command"] == command and "checkpoint" in present:
            return f"{folder!r} already holds {by}; pass --resume to continue it, {again}"
        if resumable and manifest["command"] == command:
            return f"{folder!r} holds {by} that stopped before its first checkpoint (nothing to resume); pass {again}"
        return f"{folder!r} already holds {by}; pass {again}"
    if {"config.yaml", "adapter", "checkpoint", "metrics.json"} & set(present) and resumable:
        return (f"{folder!r} already holds a run ({describe(present)}); pass --resume to continue it, {again}")
    return f"{folder!r} holds files wavedistill did not write ({describe(present)}); pass {again}"


def umask() -> int:
    """The process's file-creation mask (read without changing it), for files written private by their library."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(folder: str, names: list[str]) -> None:
    """``checksums.json``: the SHA-256 of each named file of ``folder``, as written."""
    write_json_atomic(os.path.join(folder, CHECKSUMS), {n: sha256(os.path.join(folder, n)) for n in names})


def verify_checksums(folder: str, names: list[str], error: type[WavedistillError] = WavedistillError) -> None:
    """Every named file exists and matches its checksum (folders written before checksums: existence only);
    else ``error`` naming the file."""
    for name in names:
        if not os.path.isfile(os.path.join(folder, name)):
            raise error(f"{os.path.join(folder, name)!r} is missing; the folder is incomplete")
    path = os.path.join(folder, CHECKSUMS)
    if not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            sums = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path!r} is unreadable ({e}); the folder was damaged after it was written") from None
    for name in names:
        if name in sums and sha256(os.path.join(folder, name)) != sums[name]:
            raise error(f"{os.path.join(folder, name)!r} does not match the checksum written with it: the "
                                   "file was damaged or changed after saving; restore it or start the run again")
