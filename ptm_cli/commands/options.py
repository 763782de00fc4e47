"""Options several commands share, declared once (click decorators)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..output.records import FORMATS
from ..settings import PRECISIONS

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _stack(*decorators: Decorator) -> Decorator:
    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


format_option = click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="Output format. Default: table on a terminal, jsonl when piped.",
)

device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")


def precision_option(what: str) -> Decorator:
    return click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default="fp32",
        show_default=True,
        help=f"Float type for {what}. fp32 matches the reference results exactly; auto picks bf16 where native.",
    )


input_options = _stack(
    # A path type only for the shell's sake: completion offers files; any text (and '-') is still accepted.
    click.argument("images", nargs=-1, type=click.Path(allow_dash=True)),
    click.option("-r", "--recursive", is_flag=True, help="Descend into sub-directories."),
    click.option("--files-from", metavar="FILE", help="Read image paths, one per line, from FILE ('-' for stdin)."),
)

quiet_option = click.option(
    "-q", "--quiet", is_flag=True, help="No progress bar on stderr (it shows only when stderr is a terminal)."
)

report_option = click.option(
    "--report",
    "report_path",
    metavar="FILE.html",
    type=click.Path(dir_okay=False, allow_dash=False),
    help="Also write a self-contained HTML page of the results with thumbnails (no network needed to view it).",
)
