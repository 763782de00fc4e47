"""The weight cache: where weights files live, how they arrive, and how they load safely.

Layout
    The cache is ``PTM_CACHE_DIR`` when set, else torch's own checkpoint folder
    ``$TORCH_HOME/hub/checkpoints`` (``TORCH_HOME`` defaulting to
    ``$XDG_CACHE_HOME/torch``, then ``~/.cache/torch``), so files torchvision
    already downloaded are reused and vice versa. A weights file lives there
    under its catalog ``file_name``.

Pins and stamps (``ptm-pins.json`` in the cache folder)
    ``{"format": "ptm-pins/1", "pins": {KEY: {"sha256", "file_name", "ref"}},
    "stamps": {FILE_NAME: {"size", "mtime_ns", "ino", "sha256"}}}``.

    * A *pin* is the full sha256 of an upstream file whose catalog entry gives
      only a prefix (torchvision's 8 hex digits) or no hash at all. It is
      recorded the first time the file verifies (trust on first use) and checked
      ever after. Pins are keyed by the entry's URL (``ref:MODEL:WEIGHTS`` when
      it has none) because they describe the upstream file, not the local copy:
      removing the local file keeps its pin unless asked otherwise.
    * A *stamp* records that the local file with this size, mtime and inode had
      this sha256, so loading a 170 MB file does not re-hash it every time. A
      file whose stat no longer matches its stamp is re-hashed. ``verify``
      always re-hashes and drops the stamp of a file that does not match.

    The pins file is re-read and merged under a lock and replaced atomically, so
    concurrent writers never corrupt it (with no lock an update may be lost,
    which only costs a later re-hash). A damaged pins file reads as empty.

Downloads
    Streamed to a unique temporary file next to the target, hashed while
    written, checked against Content-Length and the expected sha256 (full or
    prefix), fsynced, then renamed into place: a file in the cache is always
    complete. A per-file lock makes parallel processes download once, but
    correctness never depends on it. Connection errors, timeouts, resets, short
    bodies and HTTP 5xx/408/429 are retried with exponential backoff; other 4xx,
    host names that do not resolve (what an offline machine sees) and hash
    mismatches are not. ``PTM_WEIGHTS_MIRROR`` replaces the catalog URL by
    ``MIRROR/file_name``; a ``file://`` mirror (a shared folder) is allowed even
    with ``PTM_OFFLINE=1``, since it is not the network.

Mismatch policy
    A cached file whose sha256 differs from the expected one is never deleted
    behind the user's back (it may be a file they put there): ptm raises
    ``HashMismatch`` naming the file and the command that removes it.

Loading
    ``load_state_dict`` only ever unpickles with ``weights_only=True``; a file
    that needs arbitrary code to load is refused, never retried unsafely.

Importing this module imports neither torch nor rich.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import sys
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigError,
    DownloadError,
    HashMismatch,
    IncompatibleWeights,
    MissingDependency,
    OfflineError,
    UnsafeWeights,
    WeightsError,
)

fcntl: ModuleType | None
try:  # POSIX only; elsewhere locks are no-ops, which correctness allows
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None

if TYPE_CHECKING:
    import torch

    from .catalog import Catalog, Entry

CHUNK_SIZE = 1 << 20
PINS_FILE = "ptm-pins.json"
PINS_FORMAT = "ptm-pins/1"
DEFAULT_TIMEOUT = 30.0
DEFAULT_ATTEMPTS = 3
# Backoff before attempt n+1 is min(BACKOFF_CAP, BACKOFF_BASE * 2**(n-1)) seconds.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
# A wait for another process's lock is announced once it lasts this long.
LOCK_WAIT_NOTICE = 1.0
# A temporary file untouched this long (and not under a held lock) is an orphan.
ORPHAN_AGE = 3600.0
# Tests set this to False (also in child processes) to prove that concurrent
# downloads stay correct without any lock.
LOCKING = True
# mkstemp creates files only their owner can read; a cache may be shared (and is torch's too).
FILE_MODE = 0o644

_FULL_HEX = re.compile(r"[0-9a-f]{64}")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_RETRY_HTTP = {408, 429}


# --- where things live --------------------------------------------------------


def torch_home() -> Path:
    """``$TORCH_HOME``, by the same rule as ``torch.hub._get_torch_home`` (without importing torch)."""
    default = os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", default)))


def cache_dir() -> Path:
    """The folder weights files are kept in (created only when something is written)."""
    override = os.environ.get("PTM_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    return torch_home() / "hub" / "checkpoints"


def cached_path(entry: Entry) -> Path:
    """Where ``entry``'s file lives in the cache, whether or not it is there."""
    name = entry.file_name
    if not name:
        raise WeightsError(f"{entry.ref} has neither a url nor a file_name in its catalog entry; add one of them")
    if "/" in name or os.sep in name or name.startswith("."):
        raise WeightsError(f"{entry.ref}: file_name {name!r} must be a plain file name; fix its catalog entry")
    return cache_dir() / name


# --- environment ----------------------------------------------------------------


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={os.environ[name]!r} is not understood; set it to 1 or 0")


def is_offline() -> bool:
    """Whether ``PTM_OFFLINE`` forbids downloads (1/true/yes/on)."""
    return _env_flag("PTM_OFFLINE")


def _env_number(name: str, default: float, *, integer: bool) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = 0
    if value <= 0:
        kind = "a positive whole number" if integer else "a positive number of seconds"
        raise ConfigError(f"{name}={raw!r} is not valid; set it to {kind}")
    return value


def download_timeout() -> float:
    """Seconds a socket operation may wait (``PTM_DOWNLOAD_TIMEOUT``, default 30)."""
    return _env_number("PTM_DOWNLOAD_TIMEOUT", DEFAULT_TIMEOUT, integer=False)


def download_attempts() -> int:
    """How many times a download is tried in all (``PTM_DOWNLOAD_RETRIES``, default 3)."""
    return int(_env_number("PTM_DOWNLOAD_RETRIES", DEFAULT_ATTEMPTS, integer=True))


def download_url(entry: Entry) -> str | None:
    """The URL ``entry`` is fetched from: ``PTM_WEIGHTS_MIRROR/file_name`` when a mirror is set."""
    mirror = os.environ.get("PTM_WEIGHTS_MIRROR", "").strip()
    if mirror and entry.file_name:
        return f"{mirror.rstrip('/')}/{entry.file_name}"
    return entry.url


# --- small helpers ----------------------------------------------------------------


def _say(message: str) -> None:
    """Tell the user something; ptm's stdout belongs to results, so this is stderr."""
    print(message, file=sys.stderr, flush=True)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _format_size(size: int) -> str:
    # MB as torchvision and the catalog count them (2**20 bytes).
    if size < 2**20:
        return f"{size / 2**10:.1f} kB"
    return f"{size / 2**20:.1f} MB"


def _short(digest: str) -> str:
    return digest[:12]


def _digest_ok(digest: str, expected: str | None) -> bool:
    """Whether ``digest`` satisfies ``expected`` (a full digest, a prefix, or nothing known)."""
    return not expected or digest.startswith(expected.lower())


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a folder.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _cache_write_error(directory: Path, exc: OSError) -> WeightsError:
    reason = exc.strerror or type(exc).__name__
    return WeightsError(
        f"cannot write to the weights cache {directory} ({reason}); "
        "set PTM_CACHE_DIR to a folder you can write to, with enough free space"
    )


def _ensure_writable_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cache_write_error(directory, exc) from None


def _hash_file(path: Path) -> tuple[str, os.stat_result | None]:
    """The sha256 of ``path`` and, if the file did not change while read, its stat (for a stamp)."""
    hasher = hashlib.sha256()
    with path.open("rb") as stream:
        before = os.fstat(stream.fileno())
        while chunk := stream.read(CHUNK_SIZE):
            hasher.update(chunk)
        after = os.fstat(stream.fileno())
    unchanged = (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
    return hasher.hexdigest(), after if unchanged else None


def _hash_cached(path: Path) -> tuple[str, os.stat_result | None]:
    try:
        return _hash_file(path)
    except OSError as exc:
        raise WeightsError(f"cannot read {path} ({exc.strerror}); check its permissions") from None


def _part_target(name: str) -> str | None:
    """The file a temporary ``.{target}.{random}.part`` file was being written for."""
    if not (name.startswith(".") and name.endswith(".part")):
        return None
    stem = name[1 : -len(".part")]
    target, dot, _ = stem.rpartition(".")
    return target if dot and target else None


# --- locks ---------------------------------------------------------------------


def _lock_path(target: Path) -> Path:
    return target.with_name(target.name + ".lock")


def _acquire(fd: int, what: str) -> None:
    """Take an exclusive flock on ``fd``, announcing the wait only if it is long."""
    assert fcntl is not None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    notice = threading.Timer(LOCK_WAIT_NOTICE, _say, [f"waiting for another ptm process to finish with {what}..."])
    notice.daemon = True
    notice.start()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        notice.cancel()


@contextlib.contextmanager
def _locked(target: Path, what: str) -> Iterator[None]:
    """Hold ``{target}.lock`` for the block; a lock that cannot be had is skipped, never fatal."""
    if not LOCKING or fcntl is None:
        yield
        return
    try:
        fd = os.open(_lock_path(target), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        # An unwritable folder: whatever follows reports that better than we can.
        yield
        return
    try:
        # e.g. ENOLCK on a network file system: go on unlocked
        with contextlib.suppress(OSError):
            _acquire(fd, what)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _lock_is_held(target: Path) -> bool:
    """Whether some process holds ``target``'s lock right now."""
    if fcntl is None:
        return False
    try:
        fd = os.open(_lock_path(target), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


# --- the pins file ---------------------------------------------------------------


def _pin_key(entry: Entry) -> str:
    return entry.url or f"ref:{entry.ref}"


def _empty_store() -> dict[str, Any]:
    return {"format": PINS_FORMAT, "pins": {}, "stamps": {}}


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and _FULL_HEX.fullmatch(value) is not None


def _valid_pin(value: Any) -> bool:
    return isinstance(value, dict) and _is_digest(value.get("sha256"))


def _valid_stamp(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and all(type(value.get(k)) is int for k in ("size", "mtime_ns", "ino"))
        and _is_digest(value.get("sha256"))
    )


def _load_store(directory: Path) -> dict[str, Any]:
    """The pins file's contents; missing, unreadable or damaged reads as empty."""
    try:
        raw = json.loads((directory / PINS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return _empty_store()
    store = _empty_store()
    if not isinstance(raw, dict):
        return store
    for section, valid in (("pins", _valid_pin), ("stamps", _valid_stamp)):
        items = raw.get(section)
        if isinstance(items, dict):
            store[section] = {k: v for k, v in items.items() if isinstance(k, str) and valid(v)}
    return store


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            os.fchmod(stream.fileno(), FILE_MODE)
            json.dump(data, stream, indent=1, sort_keys=True)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
        tmp = ""
    finally:
        if tmp:
            _unlink_quietly(Path(tmp))


def _update_store(directory: Path, change: Callable[[dict[str, Any]], None]) -> bool:
    """Apply ``change`` to the pins file: re-read and merged under its lock, replaced atomically.

    Returns False when the cache cannot be written (a read-only shared cache
    still loads; it just re-hashes every time).
    """
    target = directory / PINS_FILE
    try:
        with _locked(target, PINS_FILE):
            store = _load_store(directory)
            change(store)
            _write_json_atomic(target, store)
    except OSError:
        return False
    return True


def _stamp_of(st: os.stat_result, digest: str) -> dict[str, Any]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "sha256": digest}


def _stamp_matches(stamp: Mapping[str, Any] | None, st: os.stat_result) -> bool:
    if not stamp:
        return False
    return (stamp["size"], stamp["mtime_ns"], stamp["ino"]) == (st.st_size, st.st_mtime_ns, st.st_ino)


def _expected(entry: Entry, store: Mapping[str, Any]) -> tuple[str | None, str]:
    claim = (entry.sha256 or "").lower()
    if entry.full_sha256:
        return claim, claim
    pin = store["pins"].get(_pin_key(entry))
    # A pin that contradicts the catalog's prefix is stale (the catalog moved on): ignore it.
    if pin and pin["sha256"].startswith(claim):
        return pin["sha256"], claim
    return None, claim


def expected_digest(entry: Entry) -> tuple[str | None, str]:
    """``(full, claim)``: the full sha256 known (catalog or pin) and the catalog's hash or prefix ('' if none)."""
    return _expected(entry, _load_store(cache_dir()))


def _record_verified(entry: Entry, path: Path, digest: str, st: os.stat_result | None) -> None:
    """Stamp ``path`` as having ``digest`` and pin the digest if the catalog lacks a full one."""
    pin = None if entry.full_sha256 else {"sha256": digest, "file_name": path.name, "ref": entry.ref}

    def change(store: dict[str, Any]) -> None:
        if st is not None:
            store["stamps"][path.name] = _stamp_of(st, digest)
        if pin is not None:
            store["pins"][_pin_key(entry)] = pin

    _update_store(path.parent, change)


def _drop_stamp(path: Path) -> None:
    if path.name in _load_store(path.parent)["stamps"]:
        _update_store(path.parent, lambda store: store["stamps"].pop(path.name, None))


# --- staged writes -----------------------------------------------------------------


class _Staged:
    """A temporary file next to ``dest`` that becomes ``dest`` only when committed.

    Each writer has its own file (``.{name}.{random}.part``) and the rename is
    atomic, so a file in the cache is always complete, even with no lock.
    """

    def __init__(self, dest: Path):
        self.dest = dest
        try:
            fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        except OSError as exc:
            raise _cache_write_error(dest.parent, exc) from None
        self.path = Path(name)
        self.stream = os.fdopen(fd, "wb")
        self.hasher = hashlib.sha256()
        self.size = 0
        self.stat: os.stat_result | None = None
        self.committed = False

    def __enter__(self) -> _Staged:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        # Runs on every way out (errors, KeyboardInterrupt): no .part file is left behind.
        if not self.stream.closed:
            with contextlib.suppress(OSError):
                self.stream.close()
        if not self.committed:
            _unlink_quietly(self.path)

    def write(self, chunk: bytes) -> None:
        try:
            self.stream.write(chunk)
        except OSError as exc:
            raise _cache_write_error(self.dest.parent, exc) from None
        self.hasher.update(chunk)
        self.size += len(chunk)

    def finish(self) -> str:
        """Flush to disk and return the sha256 of everything written."""
        try:
            self.stream.flush()
            os.fchmod(self.stream.fileno(), FILE_MODE)
            os.fsync(self.stream.fileno())
            # rename keeps size, mtime and inode, so this stat is the stamp of the final file
            self.stat = os.fstat(self.stream.fileno())
            self.stream.close()
        except OSError as exc:
            raise _cache_write_error(self.dest.parent, exc) from None
        return self.hasher.hexdigest()

    def commit(self) -> None:
        try:
            os.replace(self.path, self.dest)
        except OSError as exc:
            raise _cache_write_error(self.dest.parent, exc) from None
        self.committed = True
        _fsync_dir(self.dest.parent)


# --- downloads -----------------------------------------------------------------------


class _Retryable(Exception):
    """A failure that may go away on another try (network, server 5xx, short body)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Fatal(Exception):
    """A failure another try will not fix (404, 403, a malformed URL)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _user_agent() -> str:
    try:
        from . import __version__
    except ImportError:
        return "ptm"
    return f"ptm/{__version__}"


def _describe_network_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out waiting for the server"
    if isinstance(exc, ConnectionResetError):
        return "the connection was reset by the server"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text


def _download_failed_message(name: str, url: str, reason: str, ref: str | None) -> str:
    if os.environ.get("PTM_WEIGHTS_MIRROR"):
        mirror = "check that PTM_WEIGHTS_MIRROR points to a server that has it"
    else:
        mirror = "set PTM_WEIGHTS_MIRROR to a server that has it"
    return (
        f"cannot download {name} from {url}: {reason}; on a machine without internet, fetch the file "
        f"elsewhere and run `ptm weights import {ref or 'MODEL:WEIGHTS'} FILE`, or {mirror}"
    )


def _open_url(url: str, timeout: float) -> Any:
    import socket
    import urllib.error
    import urllib.request
    from http.client import HTTPException

    request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        reason = f"HTTP {exc.code} {exc.reason}"
        if exc.code >= 500 or exc.code in _RETRY_HTTP:
            raise _Retryable(reason) from None
        raise _Fatal(reason) from None
    except urllib.error.URLError as exc:
        # A host name that does not resolve will not resolve in a second either (offline
        # machines hit this first): fail fast. EAI_AGAIN is the resolver's "try again".
        if isinstance(exc.reason, socket.gaierror) and exc.reason.errno != socket.EAI_AGAIN:
            raise _Fatal(f"cannot resolve the host name ({exc.reason.strerror})") from None
        if isinstance(exc.reason, FileNotFoundError):  # a file:// mirror without the file
            raise _Fatal("there is no such file") from None
        # Any other OSError inside is the network (refused, unreachable); a string is a bad URL.
        if isinstance(exc.reason, OSError):
            raise _Retryable(_describe_network_error(exc.reason)) from None
        raise _Fatal(str(exc.reason)) from None
    except ValueError as exc:
        raise _Fatal(str(exc)) from None
    except (OSError, HTTPException) as exc:
        raise _Retryable(_describe_network_error(exc)) from None


def _content_length(response: Any) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@contextlib.contextmanager
def _progress_bar(name: str, total: int | None, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n_bytes)``; a rich bar on stderr when enabled, else a no-op."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(name, total=total)
        yield lambda n: bar.advance(task, n)


def _stream_body(response: Any, staged: _Staged, advance: Callable[[int], None]) -> None:
    from http.client import HTTPException

    while True:
        try:
            chunk = response.read(CHUNK_SIZE)
        except (OSError, HTTPException) as exc:
            raise _Retryable(_describe_network_error(exc)) from None
        if not chunk:
            return
        staged.write(chunk)
        advance(len(chunk))


def _download_once(
    url: str, dest: Path, expected: str | None, *, timeout: float, progress: bool, announce: bool, source: str
) -> tuple[str, os.stat_result | None]:
    """One try: the digest and the stat of the committed file (for its stamp)."""
    response = _open_url(url, timeout)
    with response, _Staged(dest) as staged:
        total = _content_length(response)
        show_bar = progress and _stderr_is_tty()
        if announce and progress and not show_bar:
            size = f" ({_format_size(total)})" if total is not None else ""
            _say(f"downloading {dest.name}{size} from {url}")
        with _progress_bar(dest.name, total, show_bar) as advance:
            _stream_body(response, staged, advance)
        if total is not None and staged.size < total:
            raise _Retryable(f"the connection closed after {staged.size:,} of {total:,} bytes")
        digest = staged.finish()
        if not _digest_ok(digest, expected):
            assert expected is not None
            raise HashMismatch(
                f"the server at {url} sent {dest.name} with sha256 {_short(digest)} but {source} "
                f"{_short(expected)}; nothing was saved, so check the URL (or PTM_WEIGHTS_MIRROR) "
                "and the entry's sha256"
            )
        staged.commit()
    return digest, staged.stat


def _backoff(attempt: int) -> float:
    """Seconds to wait before try number ``attempt + 1`` (``attempt`` counts from 1)."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))


def download_verified(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float | None = None,
    retries: int | None = None,
    ref: str | None = None,
) -> str:
    """Download ``url`` to ``dest`` atomically, checking ``sha256`` (full or prefix); return the full digest.

    ``retries`` is the number of tries in all (default ``PTM_DOWNLOAD_RETRIES``
    or 3); ``ref`` names the entry in the error message's import hint.
    """
    digest, _ = _download(
        url, Path(dest), sha256, progress=progress, timeout=timeout, retries=retries, ref=ref, pinned=False
    )
    return digest


def _download(
    url: str,
    dest: Path,
    sha256: str | None,
    *,
    progress: bool,
    timeout: float | None,
    retries: int | None,
    ref: str | None,
    pinned: bool,
) -> tuple[str, os.stat_result | None]:
    timeout = download_timeout() if timeout is None else timeout
    attempts = max(1, download_attempts() if retries is None else retries)
    _ensure_writable_dir(dest.parent)
    source = "the sha256 pinned at its first download was" if pinned else "the catalog expects"
    reason = ""
    for attempt in range(1, attempts + 1):
        try:
            return _download_once(
                url, dest, sha256, timeout=timeout, progress=progress, announce=attempt == 1, source=source
            )
        except _Fatal as exc:
            raise DownloadError(_download_failed_message(dest.name, url, exc.reason, ref)) from None
        except _Retryable as exc:
            reason = exc.reason
        if attempt < attempts:
            delay = _backoff(attempt)
            if progress:
                _say(f"download of {dest.name} failed ({reason}); retrying in {delay:g} s ({attempt + 1}/{attempts})")
            time.sleep(delay)
    raise DownloadError(_download_failed_message(dest.name, url, reason, ref))


# --- the cache's public operations ---------------------------------------------------------


def _mismatch_in_cache(entry: Entry, path: Path, digest: str, expected: str, pinned: bool) -> HashMismatch:
    source = "pinned when it was first verified" if pinned else "from the catalog"
    return HashMismatch(
        f"{path} has sha256 {_short(digest)} but {entry.ref} expects {_short(expected)} ({source}); "
        f"run `ptm weights rm {entry.ref}` and try again to download it afresh, "
        f"or `ptm weights import {entry.ref} FILE` with a good copy"
    )


def _accept_cached(entry: Entry, path: Path) -> Path:
    """Return ``path`` if it holds ``entry``'s file (stamp or fresh hash), else raise HashMismatch."""
    store = _load_store(path.parent)
    full, claim = _expected(entry, store)
    expected = full or claim
    stamp = store["stamps"].get(path.name)
    st = path.stat()
    if stamp is not None and _stamp_matches(stamp, st) and _digest_ok(stamp["sha256"], expected):
        if full is None:  # the pin went missing (damaged pins file): restore it from the stamp
            _record_verified(entry, path, stamp["sha256"], None)
        return path
    digest, st_now = _hash_cached(path)
    if not _digest_ok(digest, expected):
        _drop_stamp(path)
        raise _mismatch_in_cache(entry, path, digest, expected, pinned=full is not None and full != claim)
    _record_verified(entry, path, digest, st_now)
    return path


def ensure_weights(entry: Entry, *, progress: bool = True) -> Path:
    """The verified local file for ``entry``, downloading it first if it is not cached."""
    path = cached_path(entry)
    if path.is_file():
        return _accept_cached(entry, path)
    url = download_url(entry)
    if is_offline() and not (url or "").startswith("file:"):
        raise OfflineError(
            f"{path.name} is not in the weights cache ({path}) and PTM_OFFLINE is set; run "
            f"`ptm weights import {entry.ref} FILE` with a copy of the file, or unset PTM_OFFLINE to download it"
        )
    if not url:
        raise WeightsError(
            f"{path.name} is not in the weights cache ({path}) and {entry.ref} has no download url; "
            f"run `ptm weights import {entry.ref} FILE` with a copy of the file"
        )
    _ensure_writable_dir(path.parent)
    with _locked(path, path.name):
        if path.is_file():  # another process finished the download while we waited
            return _accept_cached(entry, path)
        full, claim = expected_digest(entry)
        expected = full or claim or None
        pinned = full is not None and full != claim
        digest, st = _download(
            url, path, expected, progress=progress, timeout=None, retries=None, ref=entry.ref, pinned=pinned
        )
        _record_verified(entry, path, digest, st)
    return path


def import_weights(entry: Entry, src: Path) -> Path:
    """Copy a weights file obtained elsewhere into the cache, after checking its sha256."""
    src = Path(src).expanduser()
    if not src.is_file():
        raise WeightsError(f"cannot import {src}: there is no such file; check the path")
    dest = cached_path(entry)
    full, claim = expected_digest(entry)
    expected = full or claim
    if dest.is_file() and dest.samefile(src):
        return _accept_cached(entry, dest)
    _ensure_writable_dir(dest.parent)
    with _locked(dest, dest.name), _Staged(dest) as staged:
        try:
            with src.open("rb") as stream:
                while chunk := stream.read(CHUNK_SIZE):
                    staged.write(chunk)
        except OSError as exc:  # the cache's own write errors arrive as WeightsError, not here
            raise WeightsError(f"cannot read {src} ({exc.strerror}); check its permissions") from None
        digest = staged.finish()
        if not _digest_ok(digest, expected):
            raise HashMismatch(
                f"{src} has sha256 {_short(digest)} but {entry.ref} expects {_short(expected)}; "
                f"nothing was copied, so check that this is the right file for {entry.ref}"
            )
        staged.commit()
    _record_verified(entry, dest, digest, staged.stat)
    return dest


@dataclass(frozen=True)
class VerifyResult:
    """What ``verify`` found for one entry."""

    ref: str
    status: str  # "ok", "mismatch", "missing" or "unpinned" (no hash known to compare with)
    path: Path
    digest: str | None  # the file's sha256; None when missing
    expected: str | None  # the full sha256 or prefix it should have; None when none is known

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def verify(entry: Entry) -> VerifyResult:
    """Re-hash ``entry``'s cached file and compare it with the catalog hash or pin."""
    path = cached_path(entry)
    full, claim = expected_digest(entry)
    expected = full or claim or None
    if not path.is_file():
        return VerifyResult(entry.ref, "missing", path, None, expected)
    digest, st = _hash_cached(path)
    if expected is None:
        return VerifyResult(entry.ref, "unpinned", path, digest, None)
    if not _digest_ok(digest, expected):
        # The stamp may still match the stat (bit rot, an edit that kept mtime): drop it so loads re-hash.
        _drop_stamp(path)
        return VerifyResult(entry.ref, "mismatch", path, digest, expected)
    _record_verified(entry, path, digest, st)
    return VerifyResult(entry.ref, "ok", path, digest, expected)


@dataclass(frozen=True)
class CachedFile:
    """One weights file in the cache."""

    name: str
    path: Path
    size: int
    entries: tuple[str, ...]  # refs (model:weights) of the catalog entries whose file this is
    verified: bool  # stamped as matching its expected sha256 and unchanged since (no hashing done)
    sha256: str | None  # from the stamp, when verified


def _is_cache_bookkeeping(name: str) -> bool:
    return name.startswith(".") or name.endswith((".part", ".lock")) or name == PINS_FILE


def list_cached(entries: Catalog | Iterable[Entry] | None = None) -> list[CachedFile]:
    """The weights files in the cache, with the entries pointing at them and whether they are verified."""
    from .catalog import Catalog

    directory = cache_dir()
    known = entries.entries() if isinstance(entries, Catalog) else list(entries or ())
    by_name: dict[str, list[Entry]] = {}
    for entry in known:
        if entry.file_name:
            by_name.setdefault(entry.file_name, []).append(entry)
    store = _load_store(directory)
    try:
        children = sorted(directory.iterdir())
    except OSError:
        return []
    files = []
    for path in children:
        if _is_cache_bookkeeping(path.name) or not path.is_file():
            continue
        st = path.stat()
        owners = by_name.get(path.name, [])
        stamp = store["stamps"].get(path.name)
        wanted = [full or claim for full, claim in (_expected(e, store) for e in owners)]
        verified = _stamp_matches(stamp, st) and all(_digest_ok(stamp["sha256"], w) for w in wanted)
        files.append(
            CachedFile(
                name=path.name,
                path=path,
                size=st.st_size,
                entries=tuple(e.ref for e in owners),
                verified=verified,
                sha256=stamp["sha256"] if verified else None,
            )
        )
    return files


def remove(entry: Entry, *, forget_pin: bool = False) -> bool:
    """Delete ``entry``'s cached file and its stamp; True if a file was deleted.

    The pin stays (it describes the upstream file, and guards the next
    download) unless ``forget_pin`` is set, for when upstream really changed.
    """
    path = cached_path(entry)
    try:
        path.unlink()
        removed = True
    except FileNotFoundError:
        removed = False
    except OSError as exc:
        raise WeightsError(f"cannot delete {path} ({exc.strerror}); check the folder's permissions") from None
    key = _pin_key(entry)

    def change(store: dict[str, Any]) -> None:
        store["stamps"].pop(path.name, None)
        if forget_pin:
            store["pins"].pop(key, None)

    store = _load_store(path.parent)
    if path.name in store["stamps"] or (forget_pin and key in store["pins"]):
        _update_store(path.parent, change)
    return removed


def orphans(max_age: float = ORPHAN_AGE) -> list[Path]:
    """Temporary ``.part`` files whose writer is gone: untouched for ``max_age`` s and not under a held lock."""
    directory = cache_dir()
    try:
        children = sorted(directory.iterdir())
    except OSError:
        return []
    now = time.time()
    found = []
    for path in children:
        target = _part_target(path.name)
        if target is None:
            continue
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue  # finished (renamed) or removed meanwhile
        # An active download writes at least every timeout seconds, and holds its lock.
        if age >= max_age and not _lock_is_held(directory / target):
            found.append(path)
    return found


def prune(max_age: float = ORPHAN_AGE) -> list[Path]:
    """Delete ``orphans(max_age)``; return the files removed."""
    removed = []
    for path in orphans(max_age):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise WeightsError(f"cannot delete {path} ({exc.strerror}); check the folder's permissions") from None
        removed.append(path)
    return removed


# --- safe loading -----------------------------------------------------------------------------


def _damaged(path: Path, ref: str | None, detail: str) -> WeightsError:
    if ref is None:  # a user's own file, not a cache entry: ptm cannot re-download it
        return WeightsError(f"{path} is damaged ({detail}); copy or save the file again from its source")
    return WeightsError(f"{path} is damaged ({detail}); delete it with `ptm weights rm {ref}` and download it again")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 120 else line[:117] + "..."


def _is_torchscript(names: list[str]) -> bool:
    # torch.jit.save writes ARCHIVE/constants.pkl and ARCHIVE/code/...; torch.save never does.
    for name in names:
        parts = name.split("/")
        if len(parts) >= 2 and (parts[1] == "constants.pkl" or parts[1] == "code"):
            return True
    return False


def _sniff(path: Path, ref: str | None) -> str:
    """``"zip"`` (torch.save's format), ``"pickle"`` (legacy) or ``"other"``; refuses what cannot be weights."""
    try:
        with path.open("rb") as stream:
            head = stream.read(4)
    except FileNotFoundError:
        raise WeightsError(f"weights file {path} does not exist; check the path") from None
    except OSError as exc:
        raise WeightsError(f"cannot read {path} ({exc.strerror}); check its permissions") from None
    if not head:
        raise _damaged(path, ref, "it is empty")
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            raise _damaged(path, ref, "a truncated or corrupt zip archive") from None
        if _is_torchscript(names):
            raise WeightsError(
                f"{path} is a TorchScript archive, which ptm does not load as weights because it contains code; "
                "load it with torch.jit.load in a Python session you trust and save `model.state_dict()` "
                "with torch.save instead"
            )
        return "zip"
    return "pickle" if head[0] == 0x80 else "other"


def _unsafe(path: Path, exc: BaseException) -> UnsafeWeights:
    found = re.search(r"GLOBAL ([A-Za-z_][\w.]*)", str(exc))
    what = f" ({found.group(1)})" if found else ""
    return UnsafeWeights(
        f"{path} stores pickled Python objects{what}, not just tensors, and ptm will not execute code from a "
        "weights file; load it once in a Python session you trust and save `model.state_dict()` with torch.save"
    )


def _torch_load(path: Path, ref: str | None) -> Any:
    kind = _sniff(path, ref)
    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # Legacy (pre-zip) files cannot be memory-mapped; still weights_only.
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text and "Unsupported operand" not in text:
            raise _unsafe(path, exc) from None
        # An opcode no pickle of tensors contains, or a broken stream: bytes, not a threat.
        detail = "not a PyTorch weights file" if "Unsupported operand" in text else _first_line(exc)
        raise _damaged(path, ref, detail) from None
    except (EOFError, RuntimeError) as exc:
        raise _damaged(path, ref, _first_line(exc)) from None
    except (KeyError, ValueError, IndexError, TypeError, AttributeError, ImportError) as exc:
        # Garbage read as a legacy pickle fails in arbitrary ways; a zip that torch wrote does not.
        if kind == "zip":
            raise
        raise _damaged(path, ref, f"not a PyTorch weights file: {_first_line(exc)}") from None
    except OSError as exc:
        raise WeightsError(f"cannot read {path} ({exc.strerror}); check its permissions") from None


def _safetensors_load(path: Path, ref: str | None) -> Any:
    try:
        import safetensors
        from safetensors.torch import load_file
    except ImportError:
        raise MissingDependency(
            f"{path} is a safetensors file; install the safetensors package (`pip install safetensors`) to load it"
        ) from None
    safetensor_error: type[Exception] = getattr(safetensors, "SafetensorError", ValueError)
    try:
        return load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise WeightsError(f"weights file {path} does not exist; check the path") from None
    except (safetensor_error, ValueError, RuntimeError) as exc:
        raise _damaged(path, ref, _first_line(exc)) from None
    except OSError as exc:
        raise WeightsError(f"cannot read {path} ({exc.strerror}); check its permissions") from None


def _is_tensor_mapping(obj: Any) -> bool:
    import torch

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = ", ".join(repr(k) for k in list(obj)[:5])
        return f"a mapping with keys {keys}" if obj else "an empty mapping"
    return f"a {type(obj).__name__}"


def _strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop DataParallel's ``module.`` prefix when every key has it."""
    prefix = "module."
    if not all(k.startswith(prefix) for k in state):
        return state if isinstance(state, dict) else dict(state)
    stripped: OrderedDict[str, Any] = OrderedDict((k[len(prefix) :], v) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if isinstance(metadata, dict):
        # Module versions travel in _metadata keyed by module path; keep them in step with the keys.
        renamed = {("" if k == "module" else k.removeprefix(prefix)): v for k, v in metadata.items()}
        stripped._metadata = renamed  # type: ignore[attr-defined]
    return stripped


def resolve_state_dict(
    entry: Entry, weights_file: Path | None = None, *, progress: bool = True
) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors a model gets, and the label records show for them.

    ``weights_file`` (a user's own .pth/.safetensors/.h5) wins over the
    entry's verified cached file, which is downloaded if missing.
    """
    if weights_file is not None:
        from .tensorfiles import load_any

        return load_any(Path(weights_file)), str(weights_file)
    path = ensure_weights(entry, progress=progress)
    return load_state_dict(path, ref=entry.ref), entry.weights


def load_state_dict(path: Path, *, ref: str | None = None) -> dict[str, torch.Tensor]:
    """Load a state dict safely (``weights_only=True``, memory-mapped when possible) on the CPU.

    Unwraps ``{"state_dict": ...}``/``{"model": ...}`` checkpoints and strips a
    ``module.`` prefix. ``ref`` (``model:weights``) improves error messages.
    """
    path = Path(path)
    obj = _safetensors_load(path, ref) if path.suffix == ".safetensors" else _torch_load(path, ref)
    state = obj
    if not _is_tensor_mapping(obj) and isinstance(obj, Mapping):
        state = next((obj[k] for k in _WRAPPER_KEYS if _is_tensor_mapping(obj.get(k))), obj)
    if not _is_tensor_mapping(state):
        raise IncompatibleWeights(
            f"{path} holds {_describe(obj)} rather than a state dict of named tensors; "
            "save `model.state_dict()` with torch.save and use that file"
        )
    return _strip_module_prefix(state)
