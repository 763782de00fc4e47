"""The client half of ``ptm serve``: find (or start) the user's server and hand it a command line.

A call with ``--server auto`` is sent as typed, with this process's working
folder and standard streams (their file descriptors, over the socket), its
umask, the width of its terminal and its identity (see
:func:`~.protocol.identity`). The server parses it with the same click
command and runs it as if in this process: records, images and messages go
straight to this process's stdout, stderr and files, and the exit code comes
back. So this module imports no torch, no Pillow, no numpy and no click.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import settings
from ..errors import EXIT_INPUT_FAILED, EXIT_INTERRUPTED, ConfigError
from .protocol import (
    ProtocolError,
    RemoteError,
    ServerUnavailable,
    UnsafeRuntimeDir,
    identity,
    peer_uid,
    receive,
    runtime_dir,
    send,
    socket_path,
)

if TYPE_CHECKING:
    import subprocess

LOG_NAME = "server.log"
_started: list[subprocess.Popen[bytes]] = []  # kept so that their handles outlive this call quietly


def connect(path: Path) -> socket.socket | None:
    """A connection to the server at ``path``; None when nothing listens there (no socket, or a stale one)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(os.fspath(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except OSError:
        sock.close()
        raise
    uid = peer_uid(sock)
    if uid is not None and uid != os.getuid():
        sock.close()
        raise UnsafeRuntimeDir(f"the socket {path} is served by uid {uid}, not by you; remove it")
    return sock


def open_server(*, start: bool) -> socket.socket:
    """A connection to this user's server; with ``start``, one is started if none answers (never two)."""
    folder = runtime_dir(create=start)
    path = socket_path(folder)
    sock = connect(path)
    if sock is not None or not start:
        if sock is None:
            raise ServerUnavailable("no ptm server is running; start one with `ptm serve start`")
        return sock
    with start_lock(folder):
        sock = connect(path)  # another client may have started one while this one waited
        if sock is None:
            start_server(folder, [])
            sock = connect(path)
    if sock is None:
        raise ServerUnavailable(f"the new server does not answer on {path}; see {folder / LOG_NAME}")
    return sock


@contextlib.contextmanager
def start_lock(folder: Path) -> Iterator[None]:
    import fcntl

    fd = os.open(folder / "start.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def start_server(folder: Path, arguments: list[str]) -> int:
    """Start ``ptm serve run`` in its own session, logging to the folder; return its pid once it answers."""
    import subprocess  # here, not at the top: a client of a running server never starts one

    path = socket_path(folder)
    log = os.open(folder / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        process = subprocess.Popen(
            # -P: nothing from the folder it starts in (or a client's) is ever importable.
            [sys.executable, "-P", "-m", "ptm_cli", "serve", "run", *arguments],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd="/",
            start_new_session=True,
        )
    finally:
        os.close(log)
    _started.append(process)
    deadline = time.monotonic() + settings.tuning.serve_start_wait
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise ServerUnavailable(f"the server did not start ({_last_line(folder / LOG_NAME)}); exit code {code}")
        sock = connect(path)
        if sock is not None:
            sock.close()
            return process.pid
        time.sleep(0.05)
    raise ServerUnavailable(
        f"the server did not answer within {settings.tuning.serve_start_wait:.0f} s; see {folder / LOG_NAME}"
    )


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].removeprefix("ptm: ") if lines else "no message"


def ask(op: str, **fields: Any) -> dict[str, Any]:
    """One question to a running server (``status``, ``stop``) and its one answer."""
    with open_server(start=False) as sock:
        send(sock, {"op": op, **fields})
        reply = _next(sock)
    if reply[0].get("event") == "error":
        raise _remote_error(reply[0])
    return reply[0]


def _next(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    try:
        reply = receive(sock)
    except (ProtocolError, OSError) as exc:
        raise ServerUnavailable(f"the server connection failed ({exc}); run again, or with --server never") from None
    if reply is None:
        raise ServerUnavailable("the server closed the connection before the end; run again, or with --server never")
    return reply


def _remote_error(message: dict[str, Any]) -> RemoteError:
    code = message.get("exit_code")
    return RemoteError(
        str(message.get("message") or "the server failed"),
        kind=str(message.get("type") or "PtmError"),
        exit_code=code if isinstance(code, int) and not isinstance(code, bool) else 2,
    )


# --- handing a command line to the server ---------------------------------------------------------


class Forwarded(NamedTuple):
    """What became of a command line handed to a server: its exit code, or why it runs here."""

    code: int | None  # the command's exit code; None: run it here
    asked: bool  # a server answered (so a second try in this process would get the same answer)
    reason: str = ""  # for the one note a command prints when it runs here after all ("" for none)


def forward(argv: list[str], *, start: bool) -> Forwarded:
    """Run ``ptm ARGV`` in the user's warm server as if in this process.

    The exit code is None (run it here) when no server runs (and ``start`` is
    false), when this process's streams cannot be handed over (a closed
    descriptor, or streams that are not files), or when the server sent the
    call back: it differs from this client (``reason`` says so), or the call
    is one it does not run. With ``start``, a server is started when none runs.
    """
    try:
        sock = open_server(start=True) if start else _running()
        if sock is None:
            return Forwarded(None, False)
    except (ServerUnavailable, ConfigError, OSError) as exc:
        return Forwarded(None, start, f"not using a server ({exc}); running here" if start else "")
    fds = _own_descriptors()
    if fds is None:
        sock.close()
        return Forwarded(None, False)
    with sock:
        try:
            send(sock, _request(argv), fds=fds)
        except (ProtocolError, OSError) as exc:
            return Forwarded(None, True, f"not using the server: the request could not be sent ({exc}); running here")
        finally:
            os.close(fds[0])
        return _outcome(sock)


def _running() -> socket.socket | None:
    """A connection to a server that runs now (none is started), or None."""
    folder = runtime_dir(create=False)
    return connect(socket_path(folder))


def _own_descriptors() -> list[int] | None:
    """This process's working folder (opened now) and standard streams, or None when they cannot be handed over."""
    for stream, fd in ((sys.stdin, 0), (sys.stdout, 1), (sys.stderr, 2)):
        try:
            if stream is None or stream.fileno() != fd:
                return None  # replaced streams (a test harness, a redirect in Python): they are this process's own
            os.fstat(fd)
        except (AttributeError, ValueError, OSError):
            return None  # closed, or not a file: the command runs here and reports it as usual
    try:
        folder = os.open(".", getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    return [folder, 0, 1, 2]


def _request(argv: list[str]) -> dict[str, Any]:
    mask = os.umask(0o022)  # read by setting it: this process has one thread here
    os.umask(mask)
    streams = [[getattr(s, "encoding", None), getattr(s, "errors", None)] for s in (sys.stdin, sys.stdout, sys.stderr)]
    return {
        "op": "run",
        "identity": identity(),
        "argv": argv,
        "umask": mask,
        "columns": _terminal_columns(),
        "console_width": _console_width(),
        "streams": streams,
        "pid": os.getpid(),
    }


def _terminal_columns() -> int:
    """The width click formats help for, found as it finds it (``COLUMNS``, else stdout's terminal, else 80)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns if sys.__stdout__ else 80
    except (AttributeError, ValueError, OSError):
        return 80


def _console_width() -> int:
    """The width rich gives a terminal in this process: the first of stdin, stdout, stderr that is one; COLUMNS wins."""
    width = 0
    for fd in (0, 1, 2):
        try:
            width = os.get_terminal_size(fd).columns
        except (AttributeError, ValueError, OSError):
            continue
        break
    columns = os.environ.get("COLUMNS")
    if columns is not None and columns.isdigit():
        width = int(columns)
    return width or 80


def _outcome(sock: socket.socket) -> Forwarded:
    """Wait for the server's answer: the command's exit code, or why to run it here."""
    written = 0  # inputs whose outputs the server has written to our stdout, as it last said
    while True:
        try:
            message = _reply(sock, written)
        except KeyboardInterrupt:
            return Forwarded(_interrupted(sock), True)
        count = message.get("inputs")
        if message.get("event") != "written" or not isinstance(count, int) or isinstance(count, bool):
            break
        written = max(written, count)
    event = message.get("event")
    if event == "exit":
        return Forwarded(_exit_code(message), True)
    if event == "mismatch":
        differ = message.get("differences")
        words = ", ".join(str(d) for d in differ) if isinstance(differ, list) and differ else "identity"
        return Forwarded(None, True, f"not using the server: the running server differs in {words}; running here")
    if event == "local":
        return Forwarded(None, True)
    if event == "error" and message.get("before_run"):
        return Forwarded(None, True, f"not using the server: {message.get('message')}; running here")
    if event == "error":
        raise _remote_error(message)
    raise ServerUnavailable(f"the server sent an unexpected {event!r}; run with --server never")


def _reply(sock: socket.socket, written: int) -> dict[str, Any]:
    try:
        reply = receive(sock)
    except (ProtocolError, OSError) as exc:
        raise _stopped(f"the connection failed ({exc})", written) from None
    if reply is None:
        raise _stopped("the server closed the connection before the command finished", written)
    return reply[0]


def _stopped(what: str, written: int) -> RemoteError:
    """The server went away mid-command: exit 1 (some work may be done), saying which inputs have their output."""
    if written:
        done = f"the outputs of the first {written:,} inputs were written and stand; the inputs after them have none"
    else:
        done = "no input's output was reported written; any records on stdout stand"
    return RemoteError(
        f"{what}; {done} (see {LOG_NAME} in the server's folder); run the rest again, or with --server never",
        kind="ServerUnavailable",
        exit_code=EXIT_INPUT_FAILED,
    )


def _exit_code(message: dict[str, Any]) -> int:
    code = message.get("code")
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code < 256:
        raise ServerUnavailable(f"the server sent an exit code of {code!r}; run with --server never")
    return code


def _interrupted(sock: socket.socket) -> int:
    """Ctrl-C while the server works: it stops the command (which says so) and its exit code comes back."""
    with contextlib.suppress(ProtocolError, OSError):
        send(sock, {"op": "interrupt"})
    deadline = time.monotonic() + settings.tuning.serve_interrupt_wait
    with contextlib.suppress(ProtocolError, OSError, KeyboardInterrupt, TimeoutError):
        reply = None
        while reply is None or reply[0].get("event") == "written":  # counts sent before the stop are passed over
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            reply = receive(sock)
            if reply is None:
                break
        if reply is not None and reply[0].get("event") == "exit":
            return _exit_code(reply[0])
    # The server did not answer in time: say it here, as the command would have.
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write("\nptm: interrupted\n")
        sys.stderr.flush()
    return EXIT_INTERRUPTED
