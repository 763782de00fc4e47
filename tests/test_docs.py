"""The documentation covers every command, option and environment variable, and cannot drift from --help.

Each command page's reference is written by scripts/gen_docs.py from the command itself; these
tests fail when a page's copy differs from what the command says now, when a command has no page,
and when a hand-written option table names an option its commands do not have.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click
import pytest
from helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import gen_docs  # a script, found on its folder's path

DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text(encoding="utf-8")
KNOWN = gen_docs.commands()
PAGES = sorted(DOCS.rglob("*.md"))


def text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_every_option_table_is_what_the_command_says(page: Path) -> None:
    assert gen_docs.render(text(page), KNOWN) == text(page), (
        f"{page.relative_to(ROOT)} differs from the commands' --help: run scripts/gen_docs.py (make docs)"
    )


def test_every_command_has_a_reference() -> None:
    missing = sorted(set(KNOWN) - gen_docs.documented())
    assert not missing, f"no page has an options block for {missing}"


def test_a_generated_table_has_every_option_and_its_help() -> None:
    command = KNOWN["ptm classify"]
    table = gen_docs.table("ptm classify", command)
    assert table.startswith("```\nptm classify [OPTIONS] [IMAGES]...\n```")
    for param in command.params:
        if isinstance(param, click.Option):
            assert f"`{', '.join(param.opts)}" in table or any(o in table for o in param.opts), param.opts
    assert (
        "[default: resnet101]" in table and "`--every INTERVAL|N`" in table
    )  # a pipe in a code span is shown as it is


def test_a_stale_table_is_found() -> None:
    page = "<!-- options: ptm doctor -->\nold text\n<!-- /options -->\n"
    rendered = gen_docs.render(page, KNOWN)
    assert "old text" not in rendered and "ptm doctor [OPTIONS]" in rendered
    assert gen_docs.render(rendered, KNOWN) == rendered
    with pytest.raises(SystemExit, match="not a ptm command"):
        gen_docs.render("<!-- options: ptm nothing -->\n<!-- /options -->\n", KNOWN)


def covered(page_text: str) -> set[str]:
    return {found["path"].strip() for found in gen_docs.BLOCK.finditer(page_text)}


# Every shell block of the docs and the README, in one text.
SHELL_EXAMPLES = "".join(
    re.findall(r"```(?:sh|console)\n(.*?)```", "".join(text(p) for p in PAGES) + README, flags=re.DOTALL)
)
COMMAND_PAGES = sorted((DOCS / "commands").glob("*.md"))


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=[p.stem for p in COMMAND_PAGES])
def test_hand_written_tables_name_only_options_their_commands_have(page: Path) -> None:
    body = gen_docs.BLOCK.sub("", text(page))  # the generated tables aside
    options = {opt for path in covered(text(page)) for param in KNOWN[path].params for opt in param.opts}
    tables = re.findall(r"^\| option[^\n]*\n((?:\|[^\n]*\n)+)", body, flags=re.MULTILINE)  # headed "option"
    named = {
        option
        for table in tables
        for row in re.findall(r"^\| `([^|]*?)`", table, flags=re.MULTILINE)
        for option in re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", row)
    }
    unknown = sorted(named - options)
    assert not unknown, f"{page.name} describes options its commands do not have: {unknown}"


@pytest.mark.parametrize("path", sorted(KNOWN), ids=sorted(KNOWN))
def test_every_command_has_an_example(path: str) -> None:
    if path == "ptm":
        return
    assert re.search(re.escape(path) + r"\b", SHELL_EXAMPLES), f"no shell example in docs/ or README.md runs `{path}`"


def test_every_environment_variable_read_is_documented() -> None:
    from ptm_cli.settings import VARIABLES

    used = set()
    for source in (ROOT / "ptm_cli").rglob("*.py"):
        used.update(re.findall(r"\"(PTM_[A-Z_]+)\"", source.read_text(encoding="utf-8")))
    assert used <= {v.name for v in VARIABLES}, "a PTM_ variable is read that settings.VARIABLES does not list"
    page = text(DOCS / "environment.md")
    missing = sorted(v.name for v in VARIABLES if f"`{v.name}" not in page)
    assert not missing, f"docs/environment.md does not document {missing}"


def test_the_readme_is_a_landing_page() -> None:
    assert "make demo" in README and "make test" in README
    assert len(README.splitlines()) <= 300
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"


def test_every_page_is_in_the_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [str(p.relative_to(DOCS)) for p in PAGES if f" {p.relative_to(DOCS)}" not in nav]
    assert not missing, f"pages missing from mkdocs.yml's nav: {missing}"


def test_every_test_reliability_md_names_exists() -> None:
    page = (ROOT / "RELIABILITY.md").read_text(encoding="utf-8")
    named = set(re.findall(r"tests/(\w+\.py)::(\w+)", page))
    assert len(named) > 40
    missing = [
        f"{f}::{name}"
        for f, name in sorted(named)
        if f"def {name}(" not in (ROOT / "tests" / f).read_text(encoding="utf-8")
    ]
    assert not missing, f"RELIABILITY.md names tests that do not exist: {missing}"


@pytest.mark.parametrize("path", sorted(KNOWN), ids=sorted(KNOWN))
def test_every_option_help_lists_is_in_its_pages_table(path: str) -> None:
    """What `--help` prints, taken from its text, against the page: the two cannot disagree."""
    from click.testing import CliRunner

    from ptm_cli.cli import cli

    shown = CliRunner().invoke(cli, [*path.split()[1:], "--help"], terminal_width=200).output
    listed = re.findall(r"^  (-[^ ].*?)(?:  |$)", shown.split("Options:", 1)[1], flags=re.MULTILINE)
    assert listed, shown
    blocks = {found["path"].strip(): found["body"] for page in PAGES for found in gen_docs.BLOCK.finditer(text(page))}
    for opts in listed:
        assert f"| `{opts.strip()}` |" in blocks[path], f"`{path} --help` lists {opts!r}; its page does not"
