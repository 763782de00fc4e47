"""A real HTTP server on 127.0.0.1 that misbehaves on request, for download tests.

    with FixtureServer() as server:
        server.serve("/x.pth", data, mode="stall", times=1)   # first request stalls, then normal
        ... server.url + "/x.pth" ...
        assert server.requests("/x.pth") == 2

Modes (each applies to the first ``times`` requests for the path, or to all of
them when ``times`` is None; later requests are served normally):

* ``ok``      - the body, with a correct Content-Length;
* ``short``   - Content-Length says the full size, half the body, then the connection closes;
* ``reset``   - half the body, then a TCP reset (SO_LINGER 0);
* ``wrong``   - the right number of bytes, but different ones;
* ``stall``   - nothing at all for ``stall`` seconds, then the connection closes;
* ``error``   - HTTP 500;
* ``missing`` - HTTP 404 (unknown paths are always 404).

This module imports neither torch nor ptm at the top, so child processes
started with ``spawn`` (see ``race_worker``) begin quickly.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

MODES = ("ok", "short", "reset", "wrong", "stall", "error", "missing")
_CHUNK = 64 * 1024


@dataclass
class Route:
    body: bytes
    mode: str = "ok"
    times: int | None = None
    stall: float = 5.0
    chunk_delay: float = 0.0
    chunk: int = 64 * 1024
    content_length: str | None = None  # None: the body's true length; "": no header; else sent as given


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Eight processes connect at once in the race tests; the default backlog (5) would drop SYNs.
    request_queue_size = 64
    fixture: FixtureServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that gave up (timeouts) make writes fail here; that is expected, not news.
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        fixture = self.server.fixture
        route, number = fixture._hit(self.path, dict(self.headers.items()))
        if route is None:
            self.send_error(404)
            return
        active = route.times is None or number <= route.times
        mode = route.mode if active else "ok"
        if mode == "missing":
            self.send_error(404)
        elif mode == "error":
            self.send_error(500)
        elif mode == "stall":
            fixture._stopping.wait(route.stall)
            self.close_connection = True
        else:
            self._send_body(route, mode)

    def _send_body(self, route: Route, mode: str) -> None:
        body = bytes(b ^ 0x5A for b in route.body) if mode == "wrong" else route.body
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if route.content_length is None:
            self.send_header("Content-Length", str(len(body)))
        elif route.content_length:
            self.send_header("Content-Length", route.content_length)
        self.end_headers()
        if mode in ("short", "reset"):
            body = body[: len(body) // 2]
        for start in range(0, len(body), route.chunk):
            if self.server.fixture._stopping.is_set():
                break
            try:
                self.wfile.write(body[start : start + route.chunk])
                self.wfile.flush()
            except OSError:  # the client gave up
                break
            if route.chunk_delay:
                self.server.fixture._stopping.wait(route.chunk_delay)
        self.close_connection = True
        if mode == "reset":
            # Let the half body arrive, then abort: SO_LINGER 0 makes close() send RST, not FIN.
            self.server.fixture._stopping.wait(0.05)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


class FixtureServer:
    """Serves ``path -> bytes`` on 127.0.0.1 from threads of this process, and counts requests."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.counts: Counter[str] = Counter()
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fixture = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def serve(
        self,
        path: str,
        body: bytes,
        mode: str = "ok",
        *,
        times: int | None = None,
        stall: float = 5.0,
        chunk_delay: float = 0.0,
        chunk: int = _CHUNK,
        content_length: str | None = None,
    ) -> str:
        """Serve ``body`` at ``path`` (misbehaving as ``mode`` says); return its full URL.

        ``chunk`` bytes are written at a time, ``chunk_delay`` seconds apart (``chunk=1`` drips);
        ``content_length`` replaces the true Content-Length ("" leaves the header out).
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        with self._lock:
            self.routes[path] = Route(body, mode, times, stall, chunk_delay, chunk, content_length)
        return self.url + path

    def requests(self, path: str | None = None) -> int:
        """How many requests reached ``path`` (or any path)."""
        with self._lock:
            return self.counts[path] if path is not None else sum(self.counts.values())

    def _hit(self, path: str, headers: dict[str, str]) -> tuple[Route | None, int]:
        with self._lock:
            self.counts[path] += 1
            self.headers.append(headers)
            return self.routes.get(path), self.counts[path]

    def start(self) -> FixtureServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes stalled handlers so they finish promptly
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FixtureServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def race_worker(cache: str, url: str, sha256: str | None, locking: bool, barrier: Any) -> None:
    """Child process body for the download race: wait for the others, then ensure_weights once.

    ``locking=False`` replaces the download lock by a no-op in this process, to
    show that correctness does not depend on it.
    """
    os.environ["PTM_CACHE_DIR"] = cache
    from ptm_cli import settings
    from ptm_cli.cache import weights
    from ptm_cli.cache.catalog import Entry

    settings.tuning.locking = locking
    name = url.rsplit("/", 1)[-1]
    entry = Entry(
        model="race", weights="V1", task="classify", architecture="resnet18", url=url, sha256=sha256, file_name=name
    )
    barrier.wait(timeout=30)
    path = weights.fetch(entry, progress=False)
    if not path.is_file():
        raise SystemExit(3)
