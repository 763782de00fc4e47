"""Write each command's option table into its page under docs/, from the command itself.

A page holds one block per command it documents, between two markers:

    <!-- options: ptm weights rm -->
    ...the table, written by this script...
    <!-- /options -->

The table is what `ptm weights rm --help` prints (usage, then each option and
its help), so a page cannot say other than the command does: `make docs` runs
this script before building the site, and `tests/test_docs.py` fails when a
page's table differs from what the script would write.

    .venv/bin/python scripts/gen_docs.py          # rewrite the tables
    .venv/bin/python scripts/gen_docs.py --check  # exit 1 and name the pages that are out of date
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"(<!-- options: (?P<path>[a-z -]+) -->\n)(?P<body>.*?)(<!-- /options -->)", re.DOTALL)


def walk(group: click.Group, prefix: str = "ptm") -> Iterator[tuple[str, click.Command]]:
    """Every command under group, depth first, by its full path (``ptm weights rm``)."""
    context = click.Context(group, info_name=prefix)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if command is None or command.hidden:
            continue
        path = f"{prefix} {name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from walk(command, path)


def commands() -> dict[str, click.Command]:
    """ptm itself and every command under it, by full path."""
    from ptm_cli.cli import cli

    return {"ptm": cli, **dict(walk(cli))}


def _cell(text: str) -> str:
    # A table cell is one line. Outside code spans a pipe would end the cell and a "<" would open HTML;
    # inside them both are shown as they are.
    parts = " ".join(text.split()).split("`")
    return "`".join(
        part if index % 2 else part.replace("|", "\\|").replace("<", "&lt;") for index, part in enumerate(parts)
    )


def context_for(path: str) -> click.Context:
    """The context a command runs in when typed as path: its parents' settings (``-h``) included."""
    known = commands()
    words = path.split()
    root = known["ptm"]
    context = click.Context(root, info_name="ptm", **root.context_settings)
    for depth in range(1, len(words)):
        command = known[" ".join(words[: depth + 1])]
        context = click.Context(command, info_name=words[depth], parent=context, **command.context_settings)
    return context


def table(path: str, command: click.Command) -> str:
    """The usage line and option table of one command, as --help gives them."""
    context = context_for(path)
    pieces = " ".join(command.collect_usage_pieces(context))
    lines = [f"```\n{path} {pieces}\n```", ""]
    if command.help:
        summary = command.help.split("\n\n")[0]
        lines += [" ".join(summary.split()), ""]
    rows = [param.get_help_record(context) for param in command.get_params(context) if isinstance(param, click.Option)]
    rows = [row for row in rows if row is not None]
    if rows:
        lines += ["| option | what it does |", "|---|---|"]
        lines += [f"| `{opts}` | {_cell(help_text)} |" for opts, help_text in rows]
    else:
        lines.append("No options.")
    return "\n".join(lines) + "\n"


def render(text: str, known: dict[str, click.Command]) -> str:
    """A page's text with every options block rewritten."""

    def replace(found: re.Match[str]) -> str:
        path = found["path"].strip()
        if path not in known:
            raise SystemExit(f"a page names `{path}`, which is not a ptm command")
        return found[1] + table(path, known[path]) + found[4]

    return BLOCK.sub(replace, text)


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def documented() -> set[str]:
    """The commands some page has an options block for."""
    return {found["path"].strip() for page in pages() for found in BLOCK.finditer(page.read_text(encoding="utf-8"))}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    known = commands()
    stale = []
    for page in pages():
        text = page.read_text(encoding="utf-8")
        new = render(text, known)
        if new != text:
            stale.append(page.relative_to(ROOT))
            if not check:
                page.write_text(new, encoding="utf-8")
    missing = sorted(set(known) - documented())
    if missing:
        print(f"no page has an options block for: {', '.join(missing)}", file=sys.stderr)
        return 1
    if stale and check:
        print(f"out of date (run scripts/gen_docs.py): {', '.join(map(str, stale))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
