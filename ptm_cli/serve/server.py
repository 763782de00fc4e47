"""The server half of ``ptm serve``: models kept warm, clients served at once, forward passes shared.

One process per user, found through a socket in a private folder (see
:mod:`.protocol`). Each connection is one job on its own thread; a job
runs the very engines the in-process commands run
(:func:`~ptm_cli.tasks.classify.classify_images`,
:func:`~ptm_cli.output.imagefiles.run_image_jobs`) on inputs the client named,
and streams each record back as it is made. Classification requests for
the same model that arrive together share forward passes: a
:class:`Batcher` per model collects them for a few milliseconds.

Models stay loaded while they are used and for ``keep_alive`` seconds
after (at most ``max_models``, least recently used first out); the server
exits after ``idle_timeout`` seconds with nothing to do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import errors
from ..errors import InputError, PtmError, UsageError, first_line
from ..images.inputs import ImageInput
from ..runtime import tuning as heap
from ..settings import tuning
from ..version import __version__
from .protocol import ProtocolError, differences, identity, peer_uid, receive, runtime_dir, send, socket_path
from .protocol import field as get
from .warm import ModelCache, ServeOptions, WarmCatalog, log, shared

# --- the server ---------------------------------------------------------------------------------


class Server:
    def __init__(self, options: ServeOptions):
        self.options = options
        self.folder = runtime_dir(create=True)
        self.path = socket_path(self.folder)
        self.started = time.time()
        self.stopping = threading.Event()
        self.models = ModelCache(options, self._count_pass)
        self.catalog = WarmCatalog()
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
        log(f"ptm {__version__}, pid {os.getpid()}, listening on {self.path} (idle timeout "
            f"{self.options.idle_timeout:g} s, keep-alive {self.options.keep_alive:g} s)")  # fmt: skip
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
        try:
            received = receive(conn)
            if received is None:
                return
            message, payload = received
            conn.settimeout(None)
            op = get(message, "op", str)
            if op == "status":
                send(conn, {"event": "status", **self.status()})
            elif op == "stop":
                send(conn, {"event": "stopping", "pid": os.getpid()})
                log("stop requested")
                self.stopping.set()
            elif op in ("classify", "translate"):
                self._job(conn, op, message, payload)
            else:
                raise ProtocolError(f"unknown op {op!r}")
        except ProtocolError as exc:
            log(f"bad request: {exc}")
            send(conn, _error(UsageError(f"the server could not read the request: {exc}")))
        except TimeoutError:
            log("a client sent no request within 30 s")

    def status(self) -> dict[str, Any]:
        import torch

        with self._counter:
            counts = {"requests": self.requests, "forward_passes": self.forward_passes, "images": self.images,
                      "refused": self.refused, "clients": self.active - 1}  # fmt: skip
        return {"pid": os.getpid(), "version": __version__, "torch": torch.__version__, "socket": str(self.path),
                "uptime_s": round(time.time() - self.started, 1), "models": self.models.describe(), **counts,
                "idle_timeout_s": self.options.idle_timeout, "keep_alive_s": self.options.keep_alive}  # fmt: skip

    def _job(self, conn: socket.socket, op: str, message: dict[str, Any], payload: bytes) -> None:
        theirs = get(message, "identity", dict)
        found = differences(identity(), theirs)
        if found:
            log(f"a client differs in {', '.join(found)}; it will run by itself")
            send(conn, {"event": "mismatch", "differences": found})
            return
        cwd = get(message, "cwd", str)
        if not os.path.isabs(cwd):
            raise ProtocolError("'cwd' must be an absolute path")
        try:
            if op == "classify":
                for record in self._classify(message, cwd, _inputs(get(message, "inputs", list), payload)):
                    send(conn, {"event": "record", "record": record})
            else:
                self._translate(conn, message, cwd)
                return  # it ends when the client closes the connection
        except PtmError as exc:
            send(conn, _error(exc))
            return
        except (OSError, ProtocolError):
            raise
        except Exception as exc:  # a bug: this client hears of it, the server and other clients go on
            log("internal error:\n" + traceback.format_exc())
            detail = f"internal error in the server: {type(exc).__name__}: {first_line(exc, 300)}"
            send(conn, {"event": "error", "type": type(exc).__name__, "exit_code": errors.EXIT_INTERNAL,
                        "message": detail})  # fmt: skip
            return
        send(conn, {"event": "done"})

    def _classify(self, message: dict[str, Any], cwd: str, inputs: list[ImageInput]) -> Iterator[dict[str, Any]]:
        from ..tasks.classify import classify_images, to_record
        from ..tasks.loading import plan_classifier

        top_k = _positive(message, "top_k", 100_000)
        batch_size = _positive(message, "batch_size", 4096)
        workers = _positive(message, "workers", 64)
        full_decode = get(message, "full_decode", bool, False)
        options, written = _model_options(get(message, "options", dict), cwd, classify=True)
        plan = plan_classifier(options, catalog=self.catalog.get())
        self._count_request()
        if options.is_hub:
            raise UsageError("hub: models run in the client's own process, not in a server")
        assert plan.entry is not None
        key = ("classify", repr(plan.entry), _file_key(plan.weights_file), options.device, options.precision,
               options.resize, options.crop)  # fmt: skip
        label = written if plan.weights_file is not None else plan.entry.weights
        description = {"task": "classify", "model": plan.entry.model, "weights": label, "device": options.device,
                       "precision": options.precision}  # fmt: skip
        with self.models.use(key, description, lambda: plan.load(progress=False)) as slot:
            assert slot.batcher is not None
            classifier = shared(slot.model, slot.batcher, label)
            results = classify_images(inputs, classifier, top_k=top_k, batch_size=batch_size, workers=workers,
                                      full_decode=full_decode)  # fmt: skip
            try:
                for result in results:
                    yield to_record(result, classifier)
            finally:
                getattr(results, "close", lambda: None)()  # a client that left stops its own decoding threads

    def _translate(self, conn: socket.socket, message: dict[str, Any], cwd: str) -> None:
        """Load the generator, say so, then answer one image at a time until the client closes."""
        from ..output.imagefiles import encode_image, image_format_for
        from ..tasks.loading import plan_translator

        size: Any = get(message, "size", (int, str))
        if size != "full" and not (isinstance(size, int) and size >= 1):
            raise ProtocolError("'size' must be a positive number or 'full'")
        tile = None if message.get("tile") is None else _positive(message, "tile", 1 << 16)
        options, written = _model_options(get(message, "options", dict), cwd, classify=False)
        plan = plan_translator(options, catalog=self.catalog.get())
        self._count_request()
        assert plan.entry is not None
        key = ("translate", repr(plan.entry), _file_key(plan.weights_file), options.device, options.precision)
        label = written if plan.weights_file is not None else plan.entry.weights
        description = {"task": "translate", "model": plan.entry.model, "weights": label, "device": options.device,
                       "precision": options.precision}  # fmt: skip
        with self.models.use(key, description, lambda: plan.load(progress=False)) as slot:
            send(conn, {"event": "ready", "model": plan.entry.model, "weights": label})
            while (received := receive(conn)) is not None:
                request, payload = received
                fmt = image_format_for("", get(request, "format", str))
                (item,) = _inputs([get(request, "input", dict)], payload)
                try:
                    image = item.open()
                    with slot.busy:
                        result = slot.model.translate(image, size=size, tile=tile)
                    data = encode_image(result, fmt)
                except InputError as exc:
                    send(conn, {"event": "failed", "error": exc.record()})
                    continue
                send(conn, {"event": "image", "size": list(result.size)}, data)


def _error(exc: PtmError) -> dict[str, Any]:
    return {"event": "error", "type": exc.kind, "message": str(exc), "exit_code": exc.exit_code}


def _inputs(items: list[Any], payload: bytes) -> list[ImageInput]:
    """The client's inputs, checked: every name and path a string, paths absolute, stdin at most once."""
    inputs = []
    used_payload = False
    for item in items:
        if not isinstance(item, dict):
            raise ProtocolError("each input must be an object")
        name = get(item, "name", str)
        if "error" in item:
            error = get(item, "error", dict)
            kind = getattr(errors, str(error.get("type")), None)
            cls = kind if isinstance(kind, type) and issubclass(kind, InputError) else InputError
            inputs.append(ImageInput(name=name, error=cls(str(error.get("message", "")))))
        elif get(item, "stdin", bool, False):
            if used_payload:
                raise ProtocolError("only one input can be stdin")
            used_payload = True
            inputs.append(ImageInput(name=name, data=payload))
        else:
            path = get(item, "path", str)
            if not os.path.isabs(path) or "\0" in path:
                raise ProtocolError(f"input paths must be absolute: {path!r}")
            inputs.append(ImageInput(name=name, path=Path(path)))
    return inputs


def _positive(message: dict[str, Any], name: str, limit: int) -> int:
    value: int = get(message, name, int)
    if not 1 <= value <= limit:
        raise ProtocolError(f"{name!r} must be between 1 and {limit}")
    return value


def _model_options(raw: dict[str, Any], cwd: str, *, classify: bool) -> tuple[Any, str]:
    """The client's model options, with a local weights file made absolute; and ``-w`` as the client wrote it."""
    from ..tasks.loading import ModelOptions, local_weights_file_spelling

    def optional(name: str) -> int | None:
        value: int | None = get(raw, name, (int, type(None)), None)
        if value is not None and value < 1:
            raise ProtocolError(f"{name!r} must be positive")
        return value

    weights = get(raw, "weights", str)
    absolute = os.path.join(cwd, os.path.expanduser(weights)) if local_weights_file_spelling(weights) else weights
    options = ModelOptions(
        model=get(raw, "model", str), weights=absolute, device=get(raw, "device", str),
        precision=get(raw, "precision", str),
        resize=optional("resize") if classify else None, crop=optional("crop") if classify else None,
    )  # fmt: skip
    return options, weights


def _file_key(path: Path | None) -> tuple[Any, ...] | None:
    """A local weights file by identity and version: a replaced or edited file is loaded afresh."""
    if path is None:
        return None
    info = os.stat(path)
    return (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def run(options: ServeOptions) -> None:
    """Run a server in this process until it is stopped, idle for too long, or sent SIGTERM/SIGINT."""
    # Paid once, before the socket answers, so that `serve start` returns a warm server.
    import torch  # noqa: F401

    with contextlib.suppress(ImportError):
        import torchvision  # noqa: F401

    server = Server(options)
    server.bind()
    signal.signal(signal.SIGTERM, lambda *_: server.stopping.set())
    server.serve_forever()
