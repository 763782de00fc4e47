"""The ``ptm`` command line: the root group, and the one place where errors become exit codes.

Each command lives in :mod:`ptm_cli.commands` and imports what it needs
when it runs, so ``ptm --help`` stays instant. Library errors
(``PtmError``) become one-line messages and exit codes in :func:`run`.
"""

from __future__ import annotations

import contextlib
import os
import sys

import click

from . import settings
from .commands.common import CONTEXT, GuardedStream, ReaderGone, note
from .errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    ConfigError,
    PtmError,
    StdoutUnwritable,
    first_line,
)
from .version import __version__

# Each command's module, imported only when that command runs (or help lists them all):
# a one-file `ptm classify` through a warm server should not pay for ptm batch's imports.
_LAZY = {
    "classify": "commands.classify",
    "translate": "commands.translate",
    "zebra": "commands.translate",
    "batch": "commands.batch",
    "models": "commands.models",
    "weights": "commands.weights",
    "hub": "commands.hub",
    "doctor": "commands.doctor",
    "serve": "commands.serve",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported from their modules on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = _LAZY.get(name)
        if module is None:
            return super().get_command(ctx, name)
        import importlib

        command = getattr(importlib.import_module(f".{module}", __package__), name)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="ptm")
def cli() -> None:
    """Run pretrained PyTorch image models on your own pictures.

    Results go to stdout (a table on a terminal, JSON Lines in a pipe);
    progress and messages go to stderr. Exit codes: 0 all done, 1 some
    inputs failed, 2 usage/configuration/weights error, 130 interrupted,
    141 the reader of stdout went away.
    """




def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with a code scripts can trust."""
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    try:
        debug = settings.debug()
    except ConfigError as exc:
        return _report(exc)
    real_stdout = sys.stdout
    sys.stdout = GuardedStream(real_stdout)  # type: ignore[assignment]
    try:
        return _run(argv, debug)
    finally:
        if isinstance(sys.stdout, GuardedStream):
            sys.stdout = real_stdout


def _run(argv: list[str] | None, debug: bool) -> int:
    try:
        code = cli.main(args=argv, prog_name="ptm", standalone_mode=False)
        _flush_stdout()
        return int(code or 0)
    except (click.exceptions.Abort, KeyboardInterrupt):
        return _interrupted()
    except click.ClickException as exc:
        with contextlib.suppress(OSError):
            exc.show()
        return exc.exit_code
    except StdoutUnwritable as exc:
        _silence_stdout()  # what is still buffered cannot be written either; exit quietly
        return _report(exc)
    except PtmError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        return _report(exc)
    except (ReaderGone, BrokenPipeError):
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if debug:
            raise
        with contextlib.suppress(OSError):
            detail = f": {first_line(exc, 300)}" if str(exc).strip() else ""
            note(f"internal error: {type(exc).__name__}{detail}")
            note("this is a bug in ptm; run again with PTM_DEBUG=1 for the traceback and report it")
        return EXIT_INTERNAL


def _report(exc: PtmError) -> int:
    with contextlib.suppress(OSError):
        note(f"error: {exc}")
    return exc.exit_code


def _flush_stdout() -> None:
    """Flush now, so a reader that left (``| head``) is noticed here and not at interpreter exit."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise ReaderGone from None


def _interrupted() -> int:
    with contextlib.suppress(OSError):
        note("interrupted")
    return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    """The reader went away (``| head``): drop what is still buffered, quietly."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
