"""What every command shares: messages on stderr, stdout kept for data, exit codes, the inputs it names.

Commands write through the current standard streams
(:mod:`ptm_cli.runtime.streams`): the process's own, or, in a warm server,
the client's. Nothing here imports click at start-up.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterator
from typing import Any

from ..errors import EXIT_INPUT_FAILED, EXIT_OK, StdoutUnwritable
from ..runtime import streams

MAX_CONTENT_WIDTH = 100  # help and usage lines stay this narrow on wide terminals
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": MAX_CONTENT_WIDTH}

# The command line being run in this context, as typed (a command hands it to a warm server unchanged),
# and what a server already said of it (the entry point asks a running one before click is imported).
_call: contextvars.ContextVar[tuple[tuple[str, ...], Any]] = contextvars.ContextVar("ptm_call", default=((), None))


def current_argv() -> list[str]:
    return list(_call.get()[0])


def handed_over() -> Any:
    """The server's answer to this command line when one was asked before click ran (else None)."""
    return _call.get()[1]


def bind_argv(argv: list[str], handed: Any = None) -> contextvars.Token[tuple[tuple[str, ...], Any]]:
    return _call.set((tuple(argv), handed))


def unbind_argv(token: contextvars.Token[tuple[tuple[str, ...], Any]]) -> None:
    _call.reset(token)


def printable(message: str) -> str:
    """``message`` with control characters shown as escapes (``\\x1b``), so a name cannot forge a line."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in message)


def note(message: str) -> None:
    """One line for people, on stderr, prefixed so it is clear who speaks.

    Messages quote file names, URLs and tensor names, which may hold newlines
    or terminal escape sequences; those are shown as escapes, so a name can
    neither forge another line nor drive the terminal.
    """
    stream = streams.stderr()
    stream.write(f"ptm: {printable(message)}\n")
    stream.flush()


class ReaderGone(Exception):
    """stdout's reader closed the pipe (``| head -1``)."""


class GuardedStream:
    """stdout as commands see it: a write or flush that fails raises ``StdoutUnwritable``.

    A reader that went away (``BrokenPipeError``) is left to the usual
    handling (exit 141); any other ``OSError`` (``> /dev/full``, a full disk,
    an I/O error) becomes one message and exit 2, or exit 1 when some data
    had already been delivered and the rest was lost. ``buffer`` (for image
    bytes on stdout) is guarded the same way.
    """

    def __init__(self, stream: Any, delivered: list[bool] | None = None):
        self._stream = stream
        self._delivered = delivered if delivered is not None else [False]
        self._pending = False

    def _failed(self, exc: OSError) -> StdoutUnwritable:
        reason = exc.strerror or type(exc).__name__
        lost = " and the rest of the output was lost" if self._delivered[0] else ""
        return StdoutUnwritable(
            f"cannot write to stdout ({reason}){lost}; send the output somewhere with room, or check the device",
            records_lost=self._delivered[0],
        )

    def write(self, data: Any) -> int:
        try:
            written = self._stream.write(data)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._failed(exc) from None
        self._pending = True
        return int(written or 0)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise self._failed(exc) from None
        if self._pending:
            self._delivered[0] = True
            self._pending = False

    @property
    def buffer(self) -> GuardedStream:
        return GuardedStream(self._stream.buffer, self._delivered)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def stdout_is_data() -> Iterator[Any]:
    """Yield the real stdout for records; anything else printed goes to stderr.

    torch.hub and some model code print progress with ``print()``; inside
    this block that lands on stderr and cannot corrupt piped output. A closed
    pipe is turned into `ReaderGone` here so that click, which would exit 1
    for it, never sees it.
    """
    here = streams.current()
    data = here.stdout
    try:
        if streams.routed():  # a warm server: sys.stdout follows this command's streams
            with streams.bound(here._replace(stdout=here.stderr)):
                yield data
        else:
            with contextlib.redirect_stdout(sys.stderr):
                yield data
    except BrokenPipeError:
        raise ReaderGone from None


def writer(stream: Any, fmt: str | None, **kwargs: Any) -> Any:
    """A :class:`~ptm_cli.output.records.RecordWriter`; use it in a ``with`` block so ``-f json`` is always closed."""
    from ..output.records import RecordWriter, default_format

    return RecordWriter(stream, fmt or default_format(stream), **kwargs)


def outcome(count: int, failed: int) -> int:
    """The exit code of a run over many inputs, with a note when it is not 0."""
    if count == 0:
        note("no images found in the given directories")
        return EXIT_INPUT_FAILED
    if failed:
        note(f"{failed} of {count} inputs failed; see their error records")
        return EXIT_INPUT_FAILED
    return EXIT_OK


def image_inputs(images: tuple[str, ...], recursive: bool, files_from: str | None) -> Iterator[Any]:
    """The images named on the command line, checked now and read lazily."""
    from ..images.inputs import expand_inputs

    if not images and files_from is None:
        import click

        raise click.UsageError("give at least one image, directory, '-' or --files-from")
    stdin = streams.stdin()
    return expand_inputs(
        images,
        recursive=recursive,
        files_from=files_from,
        stdin=stdin.buffer if "-" in images else None,
        stdin_list=stdin.buffer if files_from == "-" else None,
    )
