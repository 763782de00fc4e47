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
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None, name
        path = f"{prefix} {name}"
        found.append((path, command))
        if isinstance(command, click.Group):
            found.extend(walk(command, path))
    return found


COMMANDS = walk(cli)


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_has_an_example_in_the_readme(path: str, command: click.Command) -> None:
    assert re.search(re.escape(path) + r"\b", README), f"README has no example of `{path}`"


def sections() -> dict[str, str]:
    """README's level-2 sections (with their subsections), by heading."""
    found: dict[str, str] = {}
    heading = ""
    for line in README.splitlines():
        if line.startswith("## "):
            heading = line[3:]
            found[heading] = ""
        elif heading:
            found[heading] += line + "\n"
    return found


def section_for(path: str) -> str:
    """The section about a command: its own heading, or its group's (``ptm weights`` for ``ptm weights rm``)."""
    words = path.split()
    for length in range(len(words), 1, -1):
        wanted = f"`{' '.join(words[:length])}`"
        for heading, text in sections().items():
            if wanted in heading:
                return text
    raise AssertionError(f"README has no section whose heading names `{path}` or its group")


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_option_is_documented_in_its_commands_section(path: str, command: click.Command) -> None:
    text = section_for(path)
    for param in command.params:
        if isinstance(param, click.Option):
            longest = max(param.opts, key=len)
            if longest in ("--help", "--version"):
                continue
            assert longest in text, f"the README section on `{path}` does not mention {longest}"


def test_every_environment_variable_read_is_documented() -> None:
    from ptm_cli.settings import VARIABLES

    used = set()
    for source in (ROOT / "ptm_cli").rglob("*.py"):
        used.update(re.findall(r"\"(PTM_[A-Z_]+)\"", source.read_text(encoding="utf-8")))
    assert used <= {v.name for v in VARIABLES}, "a PTM_ variable is read that settings.VARIABLES does not list"
    text = sections()["Environment variables"]
    missing = sorted(v.name for v in VARIABLES if f"`{v.name}" not in text)
    assert not missing, f"README's Environment variables section does not document {missing}"


def test_the_two_commands_are_in_the_readme() -> None:
    assert "make demo" in README and "make test" in README


def test_every_test_reliability_md_names_exists() -> None:
    text = (ROOT / "RELIABILITY.md").read_text(encoding="utf-8")
    named = set(re.findall(r"tests/(\w+\.py)::(\w+)", text))
    assert len(named) > 40
    missing = [
        f"{f}::{name}"
        for f, name in sorted(named)
        if f"def {name}(" not in (ROOT / "tests" / f).read_text(encoding="utf-8")
    ]
    assert not missing, f"RELIABILITY.md names tests that do not exist: {missing}"
