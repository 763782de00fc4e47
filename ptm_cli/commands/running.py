"""Running one command line through a click group: parsing, and the one place where errors become exit codes.

:func:`run_here` runs ``ptm ARGS`` in this process with its own standard
streams; :func:`run_for_client` runs it for a warm server's client, with
that client's streams (see :mod:`ptm_cli.serve.server`). Both go through the
same click group and the same mapping of errors to messages and exit codes,
so a command prints the same bytes wherever it runs. The group is a
parameter: this module sits below the commands it runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from ..errors import EXIT_BROKEN_PIPE, EXIT_INTERNAL, EXIT_INTERRUPTED, PtmError, StdoutUnwritable, first_line
from ..runtime import streams
from .common import MAX_CONTENT_WIDTH, GuardedStream, ReaderGone, bind_argv, note, unbind_argv


def run_here(group: Any, argv: list[str], *, debug: bool = False, handed: Any = None) -> int:
    """``ptm ARGV`` in this process; its exit code."""
    real_stdout = sys.stdout
    sys.stdout = GuardedStream(real_stdout)
    token = bind_argv(argv, handed)
    try:
        return _run(group, argv, debug=debug)
    finally:
        unbind_argv(token)
        if isinstance(sys.stdout, GuardedStream):
            sys.stdout = real_stdout


def run_for_client(group: Any, argv: list[str], client: streams.Streams, *, terminal_width: int | None) -> int:
    """``ptm ARGV`` for a warm server's client, writing to the client's streams; its exit code."""
    token = bind_argv(argv)
    if terminal_width is not None:  # as click sizes help for a terminal that wide (its content kept to 100)
        terminal_width = max(min(terminal_width, MAX_CONTENT_WIDTH) - 2, 50)
    try:
        guarded = client._replace(stdout=GuardedStream(client.stdout))
        with streams.bound(guarded):
            return _run(group, argv, debug=False, terminal_width=terminal_width)
    finally:
        unbind_argv(token)


def _run(group: Any, argv: list[str], *, debug: bool, terminal_width: int | None = None) -> int:
    try:
        code = _dispatch(group, argv, terminal_width)
        _flush_stdout()
        return int(code or 0)
    except KeyboardInterrupt:
        return _interrupted()
    except StdoutUnwritable as exc:
        _silence_stdout()  # what is still buffered cannot be written either; exit quietly
        return report(exc)
    except PtmError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        return report(exc)
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


def _dispatch(group: Any, argv: list[str], terminal_width: int | None) -> Any:
    import click

    try:
        return group.main(args=argv, prog_name="ptm", standalone_mode=False, terminal_width=terminal_width)
    except click.exceptions.Abort:
        return _interrupted()
    except click.ClickException as exc:
        with contextlib.suppress(OSError):
            exc.show(file=streams.stderr())
        return exc.exit_code


def report(exc: PtmError) -> int:
    """The one line a library error becomes, and its exit code."""
    with contextlib.suppress(OSError):
        note(f"error: {exc}")
    return exc.exit_code


def _flush_stdout() -> None:
    """Flush now, so a reader that left (``| head``) is noticed here and not at interpreter exit."""
    try:
        streams.stdout().flush()
    except BrokenPipeError:
        raise ReaderGone from None


def _interrupted() -> int:
    with contextlib.suppress(OSError):
        note("interrupted")
    return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    """The reader went away (``| head``): drop what is still buffered, quietly."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        stdout = streams.stdout()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stdout.fileno())
        finally:
            os.close(devnull)
