"""The server half of ``ptm serve``: models kept warm, clients' commands run at once, forward passes shared.

One process per user, found through a socket in a private folder (see
:mod:`.protocol`). A client sends its command line as typed, with its working
folder and standard streams (their file descriptors), its umask and its
identity. Each connection gets a thread of its own, with a working folder and
umask of its own (Linux lets a thread leave the process's with
``unshare(CLONE_FS)``), and runs the command through the very click command
the client would have run (:func:`~ptm_cli.commands.main.run_for_client`,
given to :func:`run` by the ``ptm serve`` command), writing to the client's
own stdout, stderr and files; then the exit code goes back. Relative paths,
``--files-from -``, ``-o -``, a terminal's table width and a reader that
leaves (``| head``) all behave as they do in the client's process. A client
whose identity differs (versions, variables that change results, groups, the
file system it sees) is sent back to run by itself, and so is a call the
command says needs the client's own process (a hub model, ``--compile``).

Models load through a cache (:class:`~.warm.ModelCache`): loaded once however
many clients ask, kept while used and for ``keep_alive`` seconds after (at
most ``max_models``, least recently used first out). Requests for a model
whose task can share forward passes go through one :class:`~.warm.Batcher`
per model. The server exits after ``idle_timeout`` seconds with nothing to do.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from .. import errors
from ..errors import PtmError, UsageError, first_line
from ..runtime import streams
from ..runtime import tuning as heap
from ..settings import tuning
from ..version import __version__
from .protocol import (
    ProtocolError,
    RunHere,
    differences,
    identity,
    peer_uid,
    receive,
    receive_with_fds,
    runtime_dir,
    send,
    serving_a_client,
    socket_path,
)
from .protocol import field as get
from .warm import ModelCache, ServeOptions, log

# A client's command line through the one click command: argv, the client's streams, its terminal width.
Execute = Callable[[list[str], streams.Streams, "int | None"], int]
# Whether a command name is one the server runs for clients (a task, or another name for one).
Runs = Callable[[str], bool]

CLONE_FS = 0x200  # unshare(2): this thread's working folder, root and umask become its own


# --- the server ---------------------------------------------------------------------------------


class Server:
    def __init__(self, options: ServeOptions, execute: Execute | None = None, runs: Runs | None = None):
        self.options = options
        self.execute = execute
        self.runs = runs or (lambda command: False)
        self.folder = runtime_dir(create=True)
        self.path = socket_path(self.folder)
        self.started = time.time()
        self.stopping = threading.Event()
        self.models = ModelCache(options, self._count_pass)
        self.forward_passes = 0
        self.images = 0
        self.requests = 0
        self.refused = 0
        self.active = 0
        self.last_activity = time.monotonic()
        self._counter = threading.Lock()
        self._lock_fd: int | None = None
        self._listener: socket.socket | None = None
        self._inode: int | None = None

    def _count_request(self) -> None:
        with self._counter:
            self.requests += 1

    def _count_pass(self, images: int) -> None:
        with self._counter:
            self.forward_passes += 1
            self.images += images

    # -- lifetime

    def bind(self) -> None:
        """Hold the folder's server lock, replace a stale socket, listen (mode 0600)."""
        import fcntl

        fd = os.open(self.folder / "server.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(f"a ptm server is already running on {self.path}; `ptm serve stop` stops it") from None
        self._lock_fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for people and for tests that must clean up
        # Holding the lock means no live server owns the socket: whatever is there is stale (SIGKILL, a crash).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
            log(f"replaced a stale socket {self.path}")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(os.fspath(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino
        listener.listen(64)
        listener.settimeout(0.25)
        self._listener = listener

    def serve_forever(self) -> None:
        assert self._listener is not None
        log(
            f"ptm {__version__}, pid {os.getpid()}, listening on {self.path} (idle timeout "
            f"{self.options.idle_timeout:g} s, keep-alive {self.options.keep_alive:g} s)"
        )
        janitor = threading.Thread(target=self._janitor, name="ptm-janitor", daemon=True)
        janitor.start()
        try:
            while not self.stopping.is_set():
                try:
                    conn, _ = self._listener.accept()
                except TimeoutError:
                    continue
                with self._counter:
                    self.active += 1
                    self.last_activity = time.monotonic()
                threading.Thread(target=self._serve, args=(conn,), name="ptm-client", daemon=True).start()
        finally:
            self.close()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log("stopped")

    def _janitor(self) -> None:
        while not self.stopping.wait(min(1.0, self.options.idle_timeout / 4)):
            self.models.evict(idle=self.options.keep_alive)
            with self._counter:
                quiet_s = time.monotonic() - self.last_activity if self.active == 0 else 0.0
            idle = quiet_s > self.options.idle_timeout
            if quiet_s > tuning.heap_release_idle and heap.release():
                log(f"idle for {tuning.heap_release_idle:g} s; gave back the memory the last run kept")
            if idle:
                log(f"idle for {self.options.idle_timeout:g} s; exiting")
                self.stopping.set()

    # -- one connection

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._handle(conn)
        except OSError as exc:  # the client went away (| head, Ctrl-C, killed): its job ends, nothing else
            log(f"client left: {type(exc).__name__}")
        except KeyboardInterrupt:  # a client's Ctrl-C that came as its command ended: nothing left to stop
            log("a client's interrupt came after its command ended")
        finally:
            with self._counter:
                self.active -= 1
                self.last_activity = time.monotonic()

    def _handle(self, conn: socket.socket) -> None:
        uid = peer_uid(conn)
        if uid is not None and uid != os.getuid():
            with self._counter:
                self.refused += 1
            log(f"refused a client of uid {uid}")
            send(conn, _error(UsageError(f"this ptm server serves uid {os.getuid()} only, not uid {uid}")))
            return
        conn.settimeout(30.0)  # a client that connects and says nothing does not hold a thread for ever
        fds: list[int] = []
        try:
            received = receive_with_fds(conn)
            if received is None:
                return
            message, _, fds = received
            conn.settimeout(None)
            op = get(message, "op", str)
            if op == "status":
                send(conn, {"event": "status", **self.status()})
            elif op == "stop":
                send(conn, {"event": "stopping", "pid": os.getpid()})
                log("stop requested")
                self.stopping.set()
            elif op == "run":
                self._run_for_client(conn, message, fds)
            else:
                raise ProtocolError(f"unknown op {op!r}")
        except ProtocolError as exc:
            log(f"bad request: {exc}")
            send(conn, {**_error(UsageError(f"the server could not read the request: {exc}")), "before_run": True})
        except TimeoutError:
            log("a client sent no request within 30 s")
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def status(self) -> dict[str, Any]:
        import torch

        with self._counter:
            counts = {
                "requests": self.requests,
                "forward_passes": self.forward_passes,
                "images": self.images,
                "refused": self.refused,
                "clients": self.active - 1,
            }
        return {
            "pid": os.getpid(),
            "version": __version__,
            "torch": torch.__version__,
            "socket": str(self.path),
            "uptime_s": round(time.time() - self.started, 1),
            "models": self.models.describe(),
            **counts,
            "idle_timeout_s": self.options.idle_timeout,
            "keep_alive_s": self.options.keep_alive,
        }

    def _run_for_client(self, conn: socket.socket, message: dict[str, Any], fds: list[int]) -> None:
        """Run the client's command line in this thread, as if in the client's process; send its exit code."""
        argv = get(message, "argv", list)
        if not argv or not all(isinstance(arg, str) and "\0" not in arg for arg in argv):
            raise ProtocolError("'argv' must be a list of strings, the command first")
        if len(fds) != 4:
            raise ProtocolError("a run needs the client's working folder and its three standard streams")
        umask = get(message, "umask", int)
        columns = get(message, "columns", int)
        width = get(message, "console_width", int)
        encodings = get(message, "streams", list)
        if not 0 <= umask <= 0o777 or not 1 <= columns <= 100_000 or not 1 <= width <= 100_000 or len(encodings) != 3:
            raise ProtocolError("'umask', 'columns', 'console_width' or 'streams' is out of range")
        if self.execute is None or not self.runs(argv[0]) or not _own_working_folder():
            send(conn, {"event": "local"})
            return
        try:
            os.fchdir(fds[0])
        except OSError as exc:
            raise ProtocolError(f"the working folder cannot be entered ({exc.strerror})") from None
        os.umask(umask)
        found = differences(identity(), get(message, "identity", dict))  # computed in the client's folder
        if found:
            log(f"a client differs in {', '.join(found)}; it will run by itself")
            send(conn, {"event": "mismatch", "differences": found})
            return
        client = _client_streams(fds[1:], encodings, width)._replace(on_written=_reporter(conn))
        self._count_request()
        try:
            code = self._execute(conn, argv, client, columns)
        finally:
            _close(client)  # before the exit code: a reader of the client's stdout sees its end with the client's
        if code is None:
            send(conn, {"event": "local"})
        else:
            send(conn, {"event": "exit", "code": code})

    def _execute(self, conn: socket.socket, argv: list[str], client: streams.Streams, columns: int) -> int | None:
        """The command's exit code, or None when it belongs in the client's own process (nothing was written)."""
        assert self.execute is not None
        interrupt = _Interrupter(conn, threading.get_ident())
        try:
            with serving_a_client(), self.models.request():
                interrupt.start()
                try:
                    return self.execute(argv, client, columns)
                finally:
                    interrupt.stop()
        except RunHere:
            return None
        except KeyboardInterrupt:  # the client's Ctrl-C arrived just after the command ended
            return errors.EXIT_INTERRUPTED
        except Exception as exc:  # a bug outside the command's own error handling
            log("internal error:\n" + traceback.format_exc())
            with contextlib.suppress(OSError, ValueError):
                detail = f"{type(exc).__name__}: {first_line(exc, 300)}"
                client.stderr.write(f"ptm: internal error in the server: {detail}\n")
            return errors.EXIT_INTERNAL


class _Interrupter:
    """Watches a client's connection while its command runs: Ctrl-C there (or the client gone) stops the command.

    The command's thread gets a ``KeyboardInterrupt``, as the client's own
    process would have: the command stops at its next step (after the forward
    pass in progress), says so on the client's stderr, and exits 130.
    """

    def __init__(self, conn: socket.socket, thread: int):
        self.conn = conn
        self.thread = thread
        self._lock = threading.Lock()
        self._running = False
        self._watcher = threading.Thread(target=self._watch, name="ptm-interrupt", daemon=True)

    def start(self) -> None:
        with self._lock:
            self._running = True
        self._watcher.start()

    def stop(self) -> None:
        with self._lock:
            self._running = False

    def _watch(self) -> None:
        try:
            message = receive(self.conn)
        except (ProtocolError, OSError):
            message = None
        if message is not None and message[0].get("op") != "interrupt":
            log("a client sent something else while its command ran; stopping it")
        with self._lock:
            if self._running:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self.thread), ctypes.py_object(KeyboardInterrupt)
                )
                self._running = False


def _own_working_folder() -> bool:
    """Give this thread a working folder and umask of its own (Linux); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.unshare(CLONE_FS) == 0)
    except (OSError, AttributeError):
        return False


def _client_streams(fds: list[int], encodings: list[Any], width: int) -> streams.Streams:
    """Text streams over the client's stdin, stdout and stderr, encoded as the client's Python encodes them."""
    opened: list[io.TextIOWrapper] = []
    for position, fd in enumerate(fds):
        pair = encodings[position] if isinstance(encodings[position], list) else [None, None]
        encoding = pair[0] if isinstance(pair[0], str) else "utf-8"
        errors_ = pair[1] if isinstance(pair[1], str) else "strict"
        mode = "rb" if position == 0 else "wb"
        try:
            raw = io.FileIO(os.dup(fd), mode, closefd=True)
            interactive = raw.isatty()
            buffered: Any = io.BufferedReader(raw) if position == 0 else io.BufferedWriter(raw)
            text = io.TextIOWrapper(
                buffered, encoding=encoding, errors=errors_, newline="\n", line_buffering=interactive or position == 2
            )
        except (OSError, LookupError, ValueError) as exc:
            for stream in opened:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()
            raise ProtocolError(f"the client's standard streams cannot be used ({exc})") from None
        opened.append(text)
    return streams.Streams(opened[0], opened[1], opened[2], console_width=width)


def _reporter(conn: socket.socket) -> Callable[[int], None]:
    """Tell the client how many inputs' outputs have reached its stdout (a client gone is no error here)."""

    def report(count: int) -> None:
        with contextlib.suppress(OSError, ProtocolError):
            send(conn, {"event": "written", "inputs": count})

    return report


def _close(client: streams.Streams) -> None:
    """Flush and close the server's copies of the client's streams before it is told to exit (readers see EOF)."""
    for stream in (client.stdout, client.stderr, client.stdin):
        with contextlib.suppress(OSError, ValueError):
            stream.close()


def _error(exc: PtmError) -> dict[str, Any]:
    return {"event": "error", "type": exc.kind, "message": str(exc), "exit_code": exc.exit_code}


def run(options: ServeOptions, *, execute: Execute | None = None, runs: Runs | None = None) -> None:
    """Run a server in this process until it is stopped, idle for too long, or sent SIGTERM/SIGINT.

    ``execute`` runs a client's command line (the ``ptm serve`` command gives
    it the one click command's runner); ``runs`` says which commands it takes.
    """
    # Paid once, before the socket answers, so that `serve start` returns a warm server.
    import torch  # noqa: F401

    with contextlib.suppress(ImportError):
        import torchvision  # noqa: F401

    from ..runtime.tuning import tune_process
    from ..tasks.base import use_model_cache

    tune_process()
    streams.route_process_streams()  # click, rich and print reach the client whose command runs
    server = Server(options, execute, runs)
    use_model_cache(server.models.load)
    server.bind()
    signal.signal(signal.SIGTERM, lambda *_: server.stopping.set())
    server.serve_forever()
