"""Options several commands share, declared once, and a task's own options turned into click's."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ..output.records import FORMATS
from ..settings import PRECISIONS, SERVER_MODES
from . import completion

if TYPE_CHECKING:
    from ..tasks.base import Option

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def stack(*decorators: Decorator) -> Decorator:
    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


class SizeParam(click.ParamType):  # type: ignore[type-arg]  # click 8.2+ makes ParamType generic; 8.1 does not
    """A number of pixels, or ``full``."""

    name = "N|full"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, int) or value == "full":
            return value
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of pixels nor 'full'", param, ctx)
        if number < 1:
            self.fail("the size must be at least 1 pixel", param, ctx)
        return number


format_option = click.option(
    "-f",
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="Output format. Default: table on a terminal, jsonl when piped.",
)

device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")

precision_option = click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="Float type for the model. fp32 matches the reference results exactly; auto picks bf16 where native.",
)

input_options = stack(
    # A path type only for the shell's sake: completion offers files; any text (and '-') is still accepted.
    click.argument("images", nargs=-1, type=click.Path(allow_dash=True)),
    click.option("-r", "--recursive", is_flag=True, help="Descend into sub-directories."),
    click.option("--files-from", metavar="FILE", help="Read image paths, one per line, from FILE ('-' for stdin)."),
)

# Which frames of a video input a task command takes (every frame without them).
video_options = stack(
    click.option(
        "--every",
        metavar="INTERVAL|N",
        help="Take one frame of each video per INTERVAL (1s, 0.5s, 250ms) or every Nth frame (10).",
    ),
    click.option("--frames", "frame_count", type=int, metavar="N", help="Take N frames spread evenly over each video."),
    click.option("--start", metavar="TIME", help="Read videos from TIME (seconds, or a clock time like 1:30)."),
    click.option("--end", metavar="TIME", help="Read videos up to TIME (exclusive)."),
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

# For commands whose only output file is the --report page (a task that writes images has its own --force).
report_force_option = click.option(
    "--force", is_flag=True, help="Replace the --report FILE even when it is not a ptm results page."
)

server_option = click.option(
    "--server",
    type=click.Choice(SERVER_MODES),
    help="auto: run the model in a warm `ptm serve` server (started if none runs); never: in this process. "
    "Default: $PTM_SERVER, else never.",
)


def model_option(task: str, *, default: str | None, help: str) -> Decorator:
    return click.option(
        "-m",
        "--model",
        default=default,
        required=default is None,
        show_default=default is not None,
        shell_complete=completion.models(task),
        help=help,
    )


def weights_option(help: str) -> Decorator:
    return click.option(
        "-w", "--weights", default="DEFAULT", show_default=True, shell_complete=completion.weights, help=help
    )


def click_option(option: Option, flags: tuple[str, ...]) -> Decorator:
    """The click option for a task's :class:`~ptm_cli.tasks.base.Option`, under ``flags``."""
    extra: dict[str, Any] = {}
    if option.kind == "flag":
        extra["is_flag"] = True
    elif option.kind == "int":
        if option.minimum is not None or option.maximum is not None:
            low, high = option.minimum, option.maximum
            extra["type"] = click.IntRange(None if low is None else int(low), None if high is None else int(high))
        else:
            extra["type"] = int
    elif option.kind == "float":
        if option.minimum is not None or option.maximum is not None:
            extra["type"] = click.FloatRange(option.minimum, option.maximum)
        else:
            extra["type"] = float
    elif option.kind == "size":
        extra["type"] = SizeParam()
    elif option.kind == "choice":
        extra["type"] = click.Choice(option.choices)
    elif option.kind == "multiple":
        extra["multiple"] = True
    elif option.kind == "dir":
        from pathlib import Path

        extra["type"] = click.Path(file_okay=False, path_type=Path)
    if option.default is not None and option.kind != "flag":
        extra["default"] = option.default
    if option.completion == "weights":
        extra["shell_complete"] = completion.weights
    elif option.completion == "classes":
        extra["shell_complete"] = completion.classes
    return click.option(
        *flags, option.name, metavar=option.metavar, show_default=option.show_default, help=option.help, **extra
    )
