"""What a ptm server and its clients agree on: framing, the private folder, and the handshake facts.

A message is a header of two big-endian 32-bit lengths, then that many
bytes of UTF-8 JSON (an object) and that many bytes of binary payload. Both
lengths are checked against caps before a byte is read, so a hostile length
prefix costs nothing. Every malformed message is a :class:`ProtocolError`,
which a server answers with an error reply on that connection only. A
client's ``run`` request carries file descriptors with its first byte
(``SCM_RIGHTS``): its working folder and its three standard streams.

The handshake (:func:`identity`) holds everything that decides a command's
answers and that a client can know without importing torch: the ptm and
Python it runs, the catalog files, the variables that change results or how
they are shown, and the credentials and file system view files are opened
with. A server whose facts differ sends the client back to run by itself.

Standard library only: a client imports this module and never torch.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import socket
import stat
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import settings
from ..errors import EXIT_USAGE, ConfigError, PtmError
from ..version import __version__

HEADER = struct.Struct("!II")
SOCKET_NAME = "server.sock"
PROTOCOL = 3
MAX_FDS = 4  # a run request's working folder, stdin, stdout and stderr


class RunHere(BaseException):
    """Raised inside a command a server runs for a client: this call must run in the client's own process.

    A BaseException, as KeyboardInterrupt is: no handler of the command's own takes it for an error.
    """


_serving: contextvars.ContextVar[bool] = contextvars.ContextVar("ptm_serving", default=False)


def serving() -> bool:
    """Whether the code running now is a command a server runs for a client."""
    return _serving.get()


@contextlib.contextmanager
def serving_a_client() -> Iterator[None]:
    token = _serving.set(True)
    try:
        yield
    finally:
        _serving.reset(token)


class ProtocolError(Exception):
    """A message that does not follow the protocol (bad length, bad JSON, wrong types)."""


class UnsafeRuntimeDir(ConfigError):
    """The server's folder could be reached or replaced by another user."""


class ServerUnavailable(PtmError):
    """No server answers, or it stopped answering part-way."""


class Mismatch(Exception):
    """The server would not give this client's answers (another version, environment or user)."""


class RemoteError(PtmError):
    """An error the server reported for this request, with the exit code the same error has in-process."""

    def __init__(self, message: str, *, kind: str = "PtmError", exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self._kind = kind
        self.exit_code = exit_code

    @property
    def kind(self) -> str:
        return self._kind


# --- framing ----------------------------------------------------------------------------------


def max_payload() -> int:
    """The largest binary part: an image from stdin (or an encoded result) is never bigger."""
    return settings.tuning.max_stream_bytes + 1


def send(sock: socket.socket, message: dict[str, Any], payload: bytes = b"", *, fds: list[int] | None = None) -> None:
    """One message; ``fds`` travel with its first byte (``SCM_RIGHTS``)."""
    # ensure_ascii keeps file names that are not UTF-8 (lone surrogates) intact through json.loads.
    body = json.dumps(message, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    if len(body) > settings.tuning.serve_max_message or len(payload) > max_payload():
        raise ProtocolError(f"message too large ({len(body)} + {len(payload)} bytes)")
    flags = getattr(socket, "MSG_NOSIGNAL", 0)
    data = HEADER.pack(len(body), len(payload)) + body
    if fds:
        sent = socket.send_fds(sock, [data], fds, flags)
        data = data[sent:]
    if data:
        sock.sendall(data, flags)
    if payload:
        sock.sendall(payload, flags)


def receive(sock: socket.socket) -> tuple[dict[str, Any], bytes] | None:
    """The next message, or None when the other side closed the connection between messages."""
    head = _read_exactly(sock, HEADER.size, allow_eof=True)
    if head is None:
        return None
    return _rest(sock, head)


def receive_with_fds(sock: socket.socket) -> tuple[dict[str, Any], bytes, list[int]] | None:
    """The next message and the descriptors that came with it (at most MAX_FDS; the caller closes them)."""
    first, fds, flags, _ = socket.recv_fds(sock, HEADER.size, MAX_FDS)
    try:
        if flags & getattr(socket, "MSG_CTRUNC", 0):
            raise ProtocolError(f"more than {MAX_FDS} file descriptors came with the message")
        if not first:
            if fds:
                raise ProtocolError("file descriptors came without a message")
            return None
        rest = _read_exactly(sock, HEADER.size - len(first)) if len(first) < HEADER.size else b""
        message, payload = _rest(sock, first + (rest or b""))
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    return message, payload, list(fds)


def _rest(sock: socket.socket, head: bytes) -> tuple[dict[str, Any], bytes]:
    size, payload_size = HEADER.unpack(head)
    if size > settings.tuning.serve_max_message:
        raise ProtocolError(f"a message of {size} bytes is over the limit of {settings.tuning.serve_max_message}")
    if payload_size > max_payload():
        raise ProtocolError(f"a payload of {payload_size} bytes is over the limit of {max_payload()}")
    body = _read_exactly(sock, size)
    assert body is not None
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"the message is not JSON ({exc})") from None
    except RecursionError:
        raise ProtocolError("the message is nested too deeply") from None
    if not isinstance(message, dict):
        raise ProtocolError("the message is not a JSON object")
    payload = _read_exactly(sock, payload_size) if payload_size else b""
    assert payload is not None
    return message, payload


def _read_exactly(sock: socket.socket, size: int, *, allow_eof: bool = False) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            if allow_eof and not chunks:
                return None
            raise ProtocolError("the connection closed in the middle of a message")
        chunks += chunk
    return bytes(chunks)


def field(message: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """``message[name]`` when it has type ``kind``; ProtocolError otherwise (``bool`` is never an ``int``)."""
    if name not in message:
        if default is ...:
            raise ProtocolError(f"the message has no {name!r}")
        return default
    value = message[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ProtocolError(f"{name!r} must be {' or '.join(k.__name__ for k in kinds)}")
    if not isinstance(value, kinds):
        raise ProtocolError(f"{name!r} must be {' or '.join(k.__name__ for k in kinds)}")
    return value


# --- the private folder ----------------------------------------------------------------------


def runtime_dir(*, create: bool) -> Path:
    """The server's folder, checked: a real folder owned by this user that nobody else can write.

    Created with mode 0700 when missing (and ``create``). A symlink, a
    folder owned by someone else or writable by group or others is refused:
    whoever can write there could put their own socket in the server's place.
    """
    path = settings.runtime_dir()
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise UnsafeRuntimeDir(f"cannot inspect the server folder {path}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeRuntimeDir(f"the server folder {path} is a symlink; remove it (ptm makes its own)")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeRuntimeDir(f"the server folder {path} is not a folder; remove it")
    if info.st_uid != os.getuid():
        raise UnsafeRuntimeDir(f"the server folder {path} belongs to uid {info.st_uid}, not you; remove it")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeRuntimeDir(
            f"the server folder {path} is writable by others (mode {stat.S_IMODE(info.st_mode):o}); "
            f"run `chmod 700 {path}` or remove it"
        )
    return path


def socket_path(folder: Path) -> Path:
    path = folder / SOCKET_NAME
    if len(os.fsencode(path)) >= 104:  # sun_path holds 104 bytes on macOS, 108 on Linux
        raise ConfigError(f"the socket path {path} is too long for a Unix socket; set XDG_RUNTIME_DIR to a short path")
    return path


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end (Linux SO_PEERCRED); None where the system cannot tell."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return int(uid)


# --- the handshake ---------------------------------------------------------------------------


def identity() -> dict[str, Any]:
    """What a client can know cheaply (no torch import) that decides its answers.

    The server computes the same and refuses a client whose facts differ:
    another ptm (version or source folder), Python, torch installation,
    catalog file, or value of a variable that changes results.
    """
    return {
        "protocol": PROTOCOL,
        "ptm": __version__,
        "source": str(Path(__file__).resolve().parent.parent),
        "python": os.path.realpath(sys.executable) + " " + sys.version.split()[0],
        "torch": _torch_installation(),
        "catalogs": _catalog_files(),
        "environment": {name: _digest(value) for name, value in settings.result_environment().items()},
        "uid": os.getuid(),
        "credentials": _credentials(),
        "filesystem": _filesystem_view(),
    }


def differences(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """What differs between two identities, in words (values of variables are never shown)."""
    found = []
    names = {
        "ptm": "ptm version",
        "catalogs": "catalog files",
        "credentials": "groups",
        "filesystem": "file system view",
    }
    for key in ("protocol", "ptm", "source", "python", "torch", "catalogs", "uid", "credentials", "filesystem"):
        if ours.get(key) != theirs.get(key):
            found.append(names.get(key, key))
    mine, other = ours.get("environment") or {}, theirs.get("environment") or {}
    if isinstance(other, dict):
        found += [f"${name}" for name in sorted(set(mine) | set(other)) if mine.get(name) != other.get(name)]
    else:
        found.append("environment")
    return found


def _credentials() -> list[Any]:
    """The ids files are opened with: a client with other groups must not read through a server that has them."""
    return [os.geteuid(), os.getgid(), os.getegid(), sorted(os.getgroups())]


def _filesystem_view() -> list[Any]:
    """Which files a path names: the mount namespace and the root folder (a container or chroot sees others)."""
    view: list[Any] = []
    for path in ("/proc/self/ns/mnt", "/"):
        try:
            info = os.stat(path)
            view.append([info.st_dev, info.st_ino])
        except OSError:
            view.append(None)
    return view


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _torch_installation() -> str:
    """Where torch is installed and when its version file last changed, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return "none"
    version_file = Path(spec.origin).parent / "version.py"
    try:
        return f"{version_file.parent} {version_file.stat().st_mtime_ns}"
    except OSError:
        return str(version_file.parent)


def _catalog_files() -> list[str]:
    """Every catalog file (shipped and PTM_CATALOG), with its size and modification time."""
    shipped = Path(__file__).resolve().parent.parent / "models"
    files = sorted(shipped.glob("*.json")) + sorted(shipped.glob("*.toml")) + settings.catalog_paths()
    found = []
    for path in files:
        try:
            info = path.stat()
            found.append(f"{path.absolute()} {info.st_size} {info.st_mtime_ns}")
        except OSError:
            found.append(f"{path.absolute()} missing")
    return found
