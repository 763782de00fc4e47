"""The ``ptm`` command line: the entry point, and the one place where errors become exit codes.

The group and its commands live in :mod:`ptm_cli.commands` (each command's
module imported when it runs), so ``ptm --help`` stays instant. Nothing here
imports click at start-up: a one-file ``ptm classify --server auto`` is
answered by :mod:`ptm_cli.commands.quick` without it, and everything else
goes through click exactly as before. Library errors (``PtmError``) become
one-line messages and exit codes in :func:`run`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from . import settings
from .commands.common import GuardedStream, ReaderGone, note
from .errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    ConfigError,
    PtmError,
    StdoutUnwritable,
    first_line,
)


def __getattr__(name: str) -> Any:
    """``cli``, the click group, imported when asked for (tests and tools walk it)."""
    if name == "cli":
        from .commands.root import cli

        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with a code scripts can trust."""
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    settings.prepare_openmp()
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
        code = _dispatch(sys.argv[1:] if argv is None else list(argv))
        _flush_stdout()
        return int(code or 0)
    except KeyboardInterrupt:
        return _interrupted()
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


def _dispatch(argv: list[str]) -> Any:
    """The command's exit code: through the quick path when it takes the call, else through click."""
    if argv[:1] == ["classify"]:
        from .commands.quick import quick_classify

        code = quick_classify(argv)
        if code is not None:
            return code
    import click

    from .commands.root import cli

    try:
        return cli.main(args=argv, prog_name="ptm", standalone_mode=False)
    except click.exceptions.Abort:
        return _interrupted()
    except click.ClickException as exc:
        with contextlib.suppress(OSError):
            exc.show()
        return exc.exit_code


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
