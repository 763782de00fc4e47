"""HTTP downloads: streamed, hashed, retried, and written whole or not at all.

:func:`download` fetches one URL into a :class:`~ptm_cli.runtime.fsutil.StagedFile`
beside the destination, hashing while it writes, checks the body against
Content-Length and the expected sha256 (full or prefix), and only then
renames it into place.

Bounds: a body larger than ``max_bytes`` (announced or sent) is refused as
soon as that is known, and a server that keeps a connection alive while
sending less than ``settings.tuning.download_min_rate`` bytes a second,
averaged over each ``PTM_DOWNLOAD_TIMEOUT`` window, counts as stalled: a
server dripping a byte a second cannot hold a download open for long. A
``check`` callable sees the complete file before it is renamed into place
(the cache uses it to refuse an HTML page or a cut file that has no full
sha256 to be checked against).

Retries: connection errors, timeouts, resets, short bodies and HTTP
5xx/408/429 are tried again after an exponential backoff
(``settings.tuning.backoff_base`` doubling up to ``backoff_cap``); other 4xx,
host names that do not resolve (what an offline machine sees) and hash
mismatches are not. ``file://`` URLs work the same way (a mirror on a shared
folder). Progress is a rich bar on stderr when it is a terminal, one line
otherwise, and nothing with ``progress=False``.

This module knows nothing of the cache or the catalog: the caller names the
file, the hash it expects and the advice to give when it cannot be had.
Importing it imports only the standard library.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import settings
from ..errors import DownloadError, HashMismatch, PtmError, first_line
from ..output.records import human_size
from ..runtime.fsutil import StagedFile, folder_of
from ..version import __version__

_RETRY_HTTP = frozenset({408, 429})


@dataclass(frozen=True)
class Downloaded:
    """A file that arrived and was published: its full sha256 and its stat (for a cache stamp)."""

    sha256: str
    stat: os.stat_result | None


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


def say(message: str) -> None:
    """Tell the user something; stdout belongs to results, so this is stderr."""
    print(message, file=sys.stderr, flush=True)


def stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def digest_ok(digest: str, expected: str | None) -> bool:
    """Whether ``digest`` satisfies ``expected`` (a full digest, a prefix, or nothing known)."""
    return not expected or digest.startswith(expected.lower())


def short(digest: str) -> str:
    return digest[:12]


def _describe_network_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out waiting for the server"
    if isinstance(exc, ConnectionResetError):
        return "the connection was reset by the server"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _open_url(url: str, timeout: float) -> Any:
    import socket
    import urllib.error
    import urllib.request
    from http.client import HTTPException

    request = urllib.request.Request(url, headers={"User-Agent": f"ptm/{__version__}"})
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
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

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


@dataclass(frozen=True)
class _Request:
    url: str
    dest: Path
    expected: str | None
    expected_from: str  # "the catalog expects", "the sha256 pinned at its first download was"...
    timeout: float
    progress: bool
    write_error: Callable[[Path, OSError], PtmError]
    max_bytes: int | None = None
    check: Callable[[Path], None] | None = None
    mismatch_advice: str = "check the URL (or PTM_WEIGHTS_MIRROR) and the entry's sha256"


def _write(request: _Request, staged: StagedFile, chunk: bytes) -> None:
    try:
        staged.stream.write(chunk)
    except OSError as exc:
        raise request.write_error(folder_of(request.dest), exc) from None


def _download_once(request: _Request, *, announce: bool) -> Downloaded:
    from http.client import HTTPException

    response = _open_url(request.url, request.timeout)
    dest = request.dest
    try:
        staged = StagedFile(dest)
    except OSError as exc:
        response.close()
        raise request.write_error(folder_of(dest), exc) from None
    with response, staged:
        total = _content_length(response)
        if total is not None and request.max_bytes is not None and total > request.max_bytes:
            raise _Fatal(
                f"the server announces {total:,} bytes, far more than the {request.max_bytes:,} expected at most"
            )
        show_bar = request.progress and stderr_is_tty()
        if announce and request.progress and not show_bar:
            size = f" ({human_size(total)})" if total is not None and total >= 0 else ""
            say(f"downloading {dest.name}{size} from {request.url}")
        hasher = hashlib.sha256()
        received = 0
        pace = _Pace(request.timeout, settings.tuning.download_min_rate)
        # read1: whatever one receive brings, so a trickle comes back here to be timed.
        read = getattr(response, "read1", response.read)
        with _progress_bar(dest.name, total, show_bar) as advance:
            while True:
                try:
                    chunk = read(settings.tuning.chunk_size)
                except (OSError, HTTPException) as exc:
                    raise _Retryable(_describe_network_error(exc)) from None
                if not chunk:
                    break
                received += len(chunk)
                if request.max_bytes is not None and received > request.max_bytes:
                    raise _Fatal(f"the server sent more than {request.max_bytes:,} bytes, far more than expected")
                _write(request, staged, chunk)
                hasher.update(chunk)
                advance(len(chunk))
                pace.received(len(chunk))
        if total is not None and received < total:
            raise _Retryable(f"the connection closed after {received:,} of {total:,} bytes")
        try:
            st = staged.finish()
        except OSError as exc:
            raise request.write_error(folder_of(dest), exc) from None
        digest = hasher.hexdigest()
        if not digest_ok(digest, request.expected):
            assert request.expected is not None
            raise HashMismatch(
                f"the server at {request.url} sent {dest.name} with sha256 {short(digest)} but "
                f"{request.expected_from} {short(request.expected)}; nothing was saved, so "
                f"{request.mismatch_advice}"
            )
        if request.check is not None:
            try:
                request.check(staged.path)
            except PtmError as exc:
                reason = _reason(exc)
                raise _Fatal(f"what it sent is not a usable weights file ({reason}), so nothing was saved") from None
        try:
            staged.commit(replace=True)
        except OSError as exc:
            raise request.write_error(folder_of(dest), exc) from None
    return Downloaded(digest, st)


def _reason(exc: PtmError) -> str:
    detail = getattr(exc, "detail", "")
    return detail or first_line(exc, 200).split("; ")[0]


class _Pace:
    """Raises ``_Retryable`` when a window of ``window`` seconds brings fewer than ``rate * window`` bytes."""

    def __init__(self, window: float, rate: float):
        self.window = window
        self.needed = rate * window
        self.start = time.monotonic()
        self.count = 0

    def received(self, count: int) -> None:
        self.count += count
        elapsed = time.monotonic() - self.start
        if elapsed < self.window:
            return
        if self.count < self.needed:
            raise _Retryable(
                f"the server sent only {self.count:,} bytes in {elapsed:.0f} s, too slow to finish "
                "(PTM_DOWNLOAD_TIMEOUT sets the window)"
            )
        self.start, self.count = time.monotonic(), 0


def backoff(attempt: int) -> float:
    """Seconds to wait before try number ``attempt + 1`` (``attempt`` counts from 1)."""
    tuning = settings.tuning
    return float(min(tuning.backoff_cap, tuning.backoff_base * 2 ** (attempt - 1)))


def _default_write_error(directory: Path, exc: OSError) -> PtmError:
    return DownloadError(f"cannot write in {directory} ({exc.strerror or exc}); check its permissions and free space")


def download(
    url: str,
    dest: Path,
    *,
    expected: str | None = None,
    expected_from: str = "the caller expects",
    progress: bool = True,
    timeout: float | None = None,
    attempts: int | None = None,
    advice: str = "check the URL and the network",
    write_error: Callable[[Path, OSError], PtmError] = _default_write_error,
    max_bytes: int | None = None,
    check: Callable[[Path], None] | None = None,
    mismatch_advice: str | None = None,
) -> Downloaded:
    """Download ``url`` to ``dest`` atomically, checking ``expected`` (a full sha256 or a prefix).

    ``timeout`` defaults to ``PTM_DOWNLOAD_TIMEOUT``, ``attempts`` (tries in
    all) to ``PTM_DOWNLOAD_RETRIES``; ``advice`` ends the message of a
    download that failed for good, ``mismatch_advice`` that of a hash that
    differs. A body over ``max_bytes`` is refused; ``check(path)`` may refuse
    the complete file (raising a ``PtmError``) before it is published.
    """
    request = _Request(
        url=url,
        dest=Path(dest),
        expected=expected,
        expected_from=expected_from,
        timeout=settings.download_timeout() if timeout is None else timeout,
        progress=progress,
        write_error=write_error,
        max_bytes=max_bytes,
        check=check,
        **({"mismatch_advice": mismatch_advice} if mismatch_advice else {}),
    )
    tries = max(1, settings.download_attempts() if attempts is None else attempts)
    reason = ""
    for attempt in range(1, tries + 1):
        try:
            return _download_once(request, announce=attempt == 1)
        except _Fatal as exc:
            raise DownloadError(f"cannot download {request.dest.name} from {url}: {exc.reason}; {advice}") from None
        except _Retryable as exc:
            reason = exc.reason
        if attempt < tries:
            delay = backoff(attempt)
            if progress:
                name = request.dest.name
                say(f"download of {name} failed ({reason}); retrying in {delay:g} s ({attempt + 1}/{tries})")
            time.sleep(delay)
    raise DownloadError(f"cannot download {request.dest.name} from {url}: {reason}; {advice}")
