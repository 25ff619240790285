"""Every ``wavedistill`` command written in README.md and docs/*.md is spelled as today's parser expects.

A command in a code block parses as written: its command exists and every flag and value is accepted (a flag
renamed or removed since fails here first). A command quoted inline in the prose is often a fragment (``wavedistill
report``, ``eval --suite <part>``): there its command and every flag it names must exist. Placeholders the prose
defines (T, D, F, RUN, ...) and shell variables stand for paths; commands elided with ``...`` are skipped. What the
commands compute is tested elsewhere; here it is their spelling."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from wavedistill.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# words the prose uses for "your value here", as values a parser accepts
PLACEHOLDERS = {"TASK": "modular", "NAME": "attention", "MIXER": "attention"}


def doc_commands() -> list[tuple[str, str, bool]]:
    """(where, command, whole) for each ``wavedistill`` command of the docs: whole = written in a code block."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)
        spans = re.findall(r"`(wavedistill [^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        for chunks, whole in ((blocks, True), (spans, False)):
            for chunk in chunks:
                for line in chunk.replace("\\\n", " ").splitlines():
                    for part in re.split(r"&&|\|\||;|\|(?!\d)", line):
                        part = part.strip()
                        if part.startswith("wavedistill ") and "..." not in part and "…" not in part:
                            found.append((doc.name, part, whole))
    return found


COMMANDS = doc_commands()


def argv_of(command: str) -> list[str]:
    argv = shlex.split(command, comments=True)[1:]
    argv = [re.sub(r"\$\{?(\w+)\}?(\[@\])?", lambda m: PLACEHOLDERS.get(m.group(1).upper(), "x"), a) for a in argv]
    return [PLACEHOLDERS.get(a, a) for a in argv]


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert name in sub.choices, f"no command {name!r}; commands: {', '.join(sub.choices)}"
    return sub.choices[name]


def test_the_docs_hold_commands_to_check():
    assert sum(whole for _, _, whole in COMMANDS) > 25 and sum(not whole for _, _, whole in COMMANDS) > 25


@pytest.mark.parametrize("where,command,whole", COMMANDS, ids=[f"{w}:{c[:60]}" for w, c, _ in COMMANDS])
def test_a_documented_command_is_spelled_right(where, command, whole):
    argv = argv_of(command)
    if not whole:  # a fragment quoted in the prose: the command and the flags it names exist
        options = subcommand(build_parser(), argv[0])._option_string_actions
        unknown = [a.split("=")[0] for a in argv[1:] if a.startswith("--") and a.split("=")[0] not in options]
        assert not unknown, f"{where}: `{command}` names flags {unknown} that `wavedistill {argv[0]}` does not have"
        return
    try:
        build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{where}: `{command}` does not parse (exit {e.code})")
