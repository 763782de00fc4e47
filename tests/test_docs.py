"""README.md documents every command and option ptm has, and the environment variables it reads."""

from __future__ import annotations

import re

import click
import pytest
from helpers import ROOT

from ptm_cli.cli import cli

README = (ROOT / "README.md").read_text(encoding="utf-8")


def walk(group: click.Group, prefix: str = "ptm") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        found.append((path, command))
        if isinstance(command, click.Group):
            found.extend(walk(command, path))
    return found


COMMANDS = walk(cli)


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_has_an_example_in_the_readme(path: str, command: click.Command) -> None:
    assert re.search(re.escape(path) + r"\b", README), f"README has no example of `{path}`"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_option_is_documented(path: str, command: click.Command) -> None:
    for param in command.params:
        if isinstance(param, click.Option):
            longest = max(param.opts, key=len)
            if longest in ("--help", "--version"):
                continue
            assert longest in README, f"README does not mention {longest} of `{path}`"


def test_every_environment_variable_read_is_documented() -> None:
    used = set()
    for source in (ROOT / "ptm_cli").glob("*.py"):
        used.update(re.findall(r"\"(PTM_[A-Z_]+)\"", source.read_text(encoding="utf-8")))
    missing = sorted(v for v in used if v not in README)
    assert not missing, f"README does not document {missing}"


def test_the_two_commands_are_in_the_readme() -> None:
    assert "make demo" in README and "make test" in README


def test_every_test_reliability_md_names_exists() -> None:
    text = (ROOT / "RELIABILITY.md").read_text(encoding="utf-8")
    named = set(re.findall(r"tests/(\w+\.py)::(\w+)", text))
    assert len(named) > 40
    missing = [f"{f}::{name}" for f, name in sorted(named)
               if f"def {name}(" not in (ROOT / "tests" / f).read_text(encoding="utf-8")]  # fmt: skip
    assert not missing, f"RELIABILITY.md names tests that do not exist: {missing}"
