"""The client half of ``ptm serve``: find (or start) the user's server and stream a job through it.

This is what ``ptm classify --server auto`` runs instead of loading a model,
so it imports no torch, no Pillow, no numpy. The command has already
checked its options and expanded its inputs; here they become one request
(paths made absolute against this process's working directory, stdin's
bytes as the payload), and the server's records come back one by one for
the command to write with its usual writer.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import settings
from ..images.inputs import ImageInput
from .protocol import (
    Mismatch,
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
            [sys.executable, "-m", "ptm_cli", "serve", "run", *arguments],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, cwd="/", start_new_session=True,
        )  # fmt: skip
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
    raise ServerUnavailable(f"the server did not answer within {settings.tuning.serve_start_wait:.0f} s; "
                            f"see {folder / LOG_NAME}")  # fmt: skip


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


def encode_inputs(inputs: Iterable[ImageInput]) -> tuple[list[dict[str, Any]], bytes]:
    """Inputs as the server takes them: names as given, paths absolute against this cwd, stdin as the payload."""
    cwd = os.getcwd()
    encoded: list[dict[str, Any]] = []
    payload = b""
    for item in inputs:
        if item.error is not None:
            encoded.append({"name": item.name, "error": item.error.record()})
        elif item.data is not None:
            encoded.append({"name": item.name, "stdin": True})
            payload = item.data
        else:
            path = item.path if item.path is not None else Path(item.name)
            # Joined, not normalised: the kernel resolves "a/../b" exactly as it would here.
            encoded.append({"name": item.name, "path": os.path.join(cwd, os.fspath(path))})
    return encoded, payload


class Job:
    """A job the server accepted: its first answer is already in (so a mismatch or a load error shows at once)."""

    def __init__(self, sock: socket.socket, op: str, request: dict[str, Any], payload: bytes = b""):
        self.sock = sock
        try:
            send(sock, {"op": op, "identity": identity(), "cwd": os.getcwd(), **request}, payload)
        except (ProtocolError, OSError) as exc:
            raise ServerUnavailable(f"the request could not be sent ({exc}); run with --server never") from None
        self._first: tuple[dict[str, Any], bytes] | None = self._answer()

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _answer(self) -> tuple[dict[str, Any], bytes]:
        message, data = _next(self.sock)
        event = message.get("event")
        if event == "mismatch":
            differ = message.get("differences")
            words = ", ".join(str(d) for d in differ) if isinstance(differ, list) and differ else "identity"
            raise Mismatch(f"the running server differs in {words}")
        if event == "error":
            raise _remote_error(message)
        return message, data

    def records(self) -> Iterator[dict[str, Any]]:
        """The job's records as the server makes them, until it says it is done."""
        while True:
            if self._first is not None:
                (message, _), self._first = self._first, None
            else:
                message, _ = self._answer()
            event = message.get("event")
            if event == "done":
                return
            record = message.get("record")
            if event != "record" or not isinstance(record, dict):
                raise ServerUnavailable(f"the server sent an unexpected {event!r}; run with --server never")
            yield record

    def ready(self) -> dict[str, Any]:
        """The first answer of a translation job: the model and weights it loaded."""
        assert self._first is not None
        message, _ = self._first
        if message.get("event") != "ready":
            raise ServerUnavailable(f"the server sent an unexpected {message.get('event')!r}")
        return message

    def render(self, item: ImageInput, fmt: str) -> tuple[bytes, tuple[int, int]]:
        """One image through the server's generator: the encoded result and its size (see imagejobs.Render)."""
        from .. import errors

        (encoded,), payload = encode_inputs([item])
        try:
            send(self.sock, {"input": encoded, "format": fmt}, payload)
        except (ProtocolError, OSError) as exc:
            raise ServerUnavailable(f"the server connection failed ({exc}); run with --server never") from None
        message, data = self._answer()
        if message.get("event") == "failed":
            error: dict[str, Any] = message["error"] if isinstance(message.get("error"), dict) else {}
            kind = getattr(errors, str(error.get("type")), None)
            cls = kind if isinstance(kind, type) and issubclass(kind, errors.InputError) else errors.InputError
            raise cls(str(error.get("message", "")))
        size = message.get("size")
        if message.get("event") != "image" or not (isinstance(size, list) and len(size) == 2):
            raise ServerUnavailable(f"the server sent an unexpected {message.get('event')!r}")
        return data, (int(size[0]), int(size[1]))
