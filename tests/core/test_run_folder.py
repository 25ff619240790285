"""Run folders: claiming an output folder, and checksums that catch a damaged file at load."""

from __future__ import annotations

import json

import pytest

from wavedistill.errors import WavedistillError
from wavedistill.core.run_folder import MANIFEST, claim, read_manifest, verify_checksums, write_checksums


def test_claim_writes_a_manifest_into_a_new_or_empty_folder(tmp_path):
    manifest = claim(str(tmp_path / "new"), "distill", {"lr": 0.1})
    assert read_manifest(str(tmp_path / "new")) == manifest
    assert manifest["command"] == "distill" and manifest["settings"] == {"lr": 0.1} and manifest["version"]
    (tmp_path / "empty").mkdir()
    claim(str(tmp_path / "empty"), "distill")
    assert (tmp_path / "empty" / MANIFEST).is_file()


def test_claim_refuses_a_used_folder_and_names_the_way_out(tmp_path):
    out = tmp_path / "run"
    claim(str(out), "distill")
    with pytest.raises(WavedistillError, match="stopped before its first checkpoint.*--overwrite"):
        claim(str(out), "distill")
    (out / "checkpoint").mkdir()
    with pytest.raises(WavedistillError, match="already holds a `wavedistill distill` run.*--resume.*--overwrite"):
        claim(str(out), "distill")
    with pytest.raises(WavedistillError, match="a `wavedistill distill` run, not a `wavedistill kd` one"):
        claim(str(out), "kd", resume=True)
    assert claim(str(out), "distill", resume=True)["command"] == "distill"
    with pytest.raises(WavedistillError, match="pass one"):
        claim(str(out), "distill", resume=True, overwrite=True)


def test_foreign_files_are_refused_and_only_overwrite_deletes_them(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(WavedistillError, match="did not write \\(notes.txt\\).*--overwrite"):
        claim(str(out), "distill")
    assert (out / "notes.txt").read_text() == "mine"
    claim(str(out), "distill", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST]


def test_a_file_is_not_an_output_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(WavedistillError, match="is a file, not a folder"):
        claim(str(tmp_path / "f"), "distill")


def test_an_unreadable_manifest_is_an_error_not_a_crash(tmp_path):
    (tmp_path / MANIFEST).write_bytes(b"\xff\xfe not json")
    with pytest.raises(WavedistillError, match="unreadable"):
        read_manifest(str(tmp_path))
    (tmp_path / MANIFEST).write_text(json.dumps([1, 2]))
    with pytest.raises(WavedistillError, match="not a wavedistill manifest"):
        read_manifest(str(tmp_path))


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing", "random", "flipped"])
def test_checksums_catch_every_kind_of_damage_and_name_the_file(tmp_path, damage):
    data = bytes(range(256)) * 64
    (tmp_path / "w.bin").write_bytes(data)
    write_checksums(str(tmp_path), ["w.bin"])
    verify_checksums(str(tmp_path), ["w.bin"])  # intact: passes
    path = tmp_path / "w.bin"
    {"truncated": lambda: path.write_bytes(data[: len(data) // 2]), "empty": lambda: path.write_bytes(b""),
     "missing": path.unlink, "random": lambda: path.write_bytes(bytes(reversed(data))),
     "flipped": lambda: path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])}[damage]()
    with pytest.raises(WavedistillError, match="w.bin"):
        verify_checksums(str(tmp_path), ["w.bin"])


def test_folders_written_before_checksums_still_load(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"old")
    verify_checksums(str(tmp_path), ["w.bin"])  # no checksums.json: existence only
