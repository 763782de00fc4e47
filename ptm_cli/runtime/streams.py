"""The standard streams a command writes to: the process's own, or a warm server client's.

In a ``ptm`` process they are ``sys.stdin``, ``sys.stdout`` and
``sys.stderr``. A warm server runs many clients' commands at once, each in
its own thread with that client's streams (their file descriptors, passed
over the socket); :func:`bound` makes a set of streams the current ones for
the code that runs inside it, and :func:`route_process_streams` points
``sys.stdout`` and friends at whatever is current, so that click, rich and
``print`` reach the right client too. Threads a command starts get the
process's streams unless they are handed them: code that writes from another
thread keeps the stream it was given (:func:`stderr` at the time it starts).

Importing this module imports nothing beyond the standard library.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Callable, Iterator
from typing import IO, Any, NamedTuple


class Streams(NamedTuple):
    stdin: Any
    stdout: Any
    stderr: Any
    # The width rich gives a terminal in the process these streams belong to; None: this process's own.
    console_width: int | None = None
    # Told how many inputs' records (or images) have reached stdout, as they are flushed: a warm
    # server passes it on, so that a client whose server dies can say which inputs have none.
    on_written: Callable[[int], None] | None = None


_current: contextvars.ContextVar[Streams | None] = contextvars.ContextVar("ptm_streams", default=None)
_process: list[Streams] = []  # the process's own streams, once route_process_streams replaced sys's


def current() -> Streams:
    """The streams of the command running in this context."""
    found = _current.get()
    if found is not None:
        return found
    if _process:
        return _process[0]
    return Streams(sys.stdin, sys.stdout, sys.stderr)


def stdin() -> Any:
    return current().stdin


def written(count: int) -> None:
    """The command has written the outputs of its first ``count`` inputs (see ``Streams.on_written``)."""
    callback = current().on_written
    if callback is not None:
        callback(count)


def stdout() -> Any:
    return current().stdout


def stderr() -> Any:
    return current().stderr


def console_width() -> int | None:
    """The terminal width for a table or progress bar drawn now (None: let rich measure this process's)."""
    return current().console_width


@contextlib.contextmanager
def bound(streams: Streams) -> Iterator[Streams]:
    """Make ``streams`` the current ones inside the block (this context only)."""
    token = _current.set(streams)
    try:
        yield streams
    finally:
        _current.reset(token)


def routed() -> bool:
    """Whether ``sys.stdout`` and friends follow the current streams (a warm server)."""
    return bool(_process)


class _Routed:
    """A stand-in for ``sys.stdout``/``sys.stderr``/``sys.stdin`` that passes every use to the current stream."""

    def __init__(self, which: str):
        self._which = which

    def _target(self) -> IO[Any]:
        target: IO[Any] = getattr(current(), self._which)
        return target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)

    def write(self, data: Any) -> int:
        return int(self._target().write(data) or 0)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return bool(self._target().isatty())

    def fileno(self) -> int:
        return int(self._target().fileno())


def route_process_streams() -> None:
    """From now on ``sys.stdin``/``sys.stdout``/``sys.stderr`` follow the current streams (once per process).

    For a process that runs several commands at once (the warm server); what
    is written outside any command goes to the process's own streams.
    """
    if _process:
        return
    _process.append(Streams(sys.stdin, sys.stdout, sys.stderr))
    sys.stdin = _Routed("stdin")
    sys.stdout = _Routed("stdout")
    sys.stderr = _Routed("stderr")


def process_stderr() -> Any:
    """The process's own stderr (a warm server's log), whatever command runs."""
    return _process[0].stderr if _process else sys.stderr
