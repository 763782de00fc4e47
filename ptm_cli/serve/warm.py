"""What a server keeps warm: loaded models (LRU with a keep-alive), the batcher that shares forward passes,
and the parsed catalog.

Requests for the same classifier that arrive together share forward
passes: a :class:`Batcher` per model collects them for a few milliseconds
and gives each caller back its own rows.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from ..errors import NonFiniteOutput, UsageError

if TYPE_CHECKING:
    import torch

    from ..cache.catalog import Catalog
    from ..tasks.classify import Classifier, Prediction


@dataclass
class ServeOptions:
    idle_timeout: float = 900.0  # seconds with no connection before the server exits
    keep_alive: float = 300.0  # seconds an unused model stays loaded
    max_models: int = 3  # models kept at once, least recently used evicted first
    batch_window: float = 0.005  # seconds a forward pass waits for other clients' images
    max_batch: int = 64  # images in one shared forward pass


# A catalog file changed less than this long ago is read again on every request: a second write
# within the file system's timestamp granularity (a few milliseconds) would not change its mtime.
SETTLED_S = 2.0


class WarmCatalog:
    """The catalog, parsed once and again only when one of its files changes.

    Parsing it costs a few milliseconds per request; a request asks for the
    files' ``stat`` instead. A file is known by its path, device, inode,
    size and mtime, and one that changed within :data:`SETTLED_S` is not
    trusted to stay known: every request reads the files again until they
    have settled. A missing file is never cached over: loading says so.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._catalog: Catalog | None = None

    def get(self) -> Catalog:
        from ..cache.catalog import Catalog, catalog_files

        key = _files_key(catalog_files())
        with self._lock:
            if key is not None and key == self._key and self._catalog is not None:
                return self._catalog
        catalog = Catalog.load()
        with self._lock:
            self._key, self._catalog = key, catalog
        return catalog


def _files_key(paths: list[Any]) -> tuple[Any, ...] | None:
    """The files as they are now; None when one is missing or changed too recently to be trusted."""
    import os

    now = time.time_ns()
    key = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            return None
        if now - info.st_mtime_ns < SETTLED_S * 1e9:
            return None
        key.append((str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(key)


def log(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"{time.strftime('%H:%M:%S')} ptm serve: {message}", file=sys.stderr, flush=True)


# --- shared forward passes ----------------------------------------------------------------------


@dataclass
class _Job:
    batch: torch.Tensor
    top_k: int
    future: Future[list[list[Prediction] | NonFiniteOutput]] = field(default_factory=Future)


class Batcher:
    """One thread that runs a classifier's forward passes, merging the batches that arrive together.

    The first waiting batch opens a window of ``window`` seconds; batches
    of the same image size and top-k that come within it (up to
    ``max_batch`` images) go through the model with it, and each caller
    gets back its own rows.
    """

    def __init__(
        self,
        classifier: Classifier,
        window: float,
        max_batch: int,
        on_pass: Callable[[int], None],
        clients: Callable[[], int] = lambda: 2,
    ):
        self.classifier = classifier
        self.window = window
        # How many clients use this model now: alone, a request does not wait for company.
        self.clients = clients
        self.max_batch = max_batch
        self.on_pass = on_pass
        self._queue: collections.deque[_Job] = collections.deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="ptm-batcher", daemon=True)
        self._thread.start()

    def predict_each(self, batch: torch.Tensor, top_k: int) -> list[list[Prediction] | NonFiniteOutput]:
        """Per image: its predictions, or ``NonFiniteOutput``, from a forward pass shared with other callers."""
        job = _Job(batch, top_k)
        with self._ready:
            if self._closed:
                raise UsageError("the model was unloaded; run again")
            self._queue.append(job)
            self._ready.notify()
        return job.future.result()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()

    def _take(self) -> list[_Job] | None:
        with self._ready:
            while not self._queue and not self._closed:
                self._ready.wait()
            if not self._queue:
                return None
            first = self._queue.popleft()
            taken, count = [first], len(first.batch)
            deadline = time.monotonic() + (self.window if self.clients() > 1 else 0.0)
            while count < self.max_batch:
                for job in list(self._queue):
                    fits = job.top_k == first.top_k and job.batch.shape[1:] == first.batch.shape[1:]
                    if fits and count + len(job.batch) <= self.max_batch:
                        self._queue.remove(job)
                        taken.append(job)
                        count += len(job.batch)
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    break
                self._ready.wait(left)
            return taken

    def _loop(self) -> None:
        import torch

        while (jobs := self._take()) is not None:
            try:
                batch = torch.cat([job.batch for job in jobs]) if len(jobs) > 1 else jobs[0].batch
                rows = self.classifier.predict_each(batch, jobs[0].top_k)
                self.on_pass(len(batch))
            except BaseException as exc:  # every waiting client hears of it; the thread goes on
                for job in jobs:
                    job.future.set_exception(exc)
                continue
            start = 0
            for job in jobs:
                job.future.set_result(rows[start : start + len(job.batch)])
                start += len(job.batch)


class SharedClassifier:
    """What :func:`classify_images` needs of a classifier, with forward passes through a :class:`Batcher`."""

    def __init__(self, classifier: Classifier, batcher: Batcher, weights_label: str):
        self.entry = classifier.entry
        self.preprocess = classifier.preprocess
        self.weights_label = weights_label
        self._batcher = batcher

    def predict_each(self, batch: torch.Tensor, top_k: int) -> list[list[Prediction] | NonFiniteOutput]:
        return self._batcher.predict_each(batch, top_k)


# --- the models kept warm --------------------------------------------------------------------------


@dataclass
class Slot:
    key: tuple[Any, ...]
    description: dict[str, Any]
    model: Any = None
    batcher: Batcher | None = None
    users: int = 0
    last_used: float = field(default_factory=time.monotonic)
    loading: threading.Lock = field(default_factory=threading.Lock)
    busy: threading.Lock = field(default_factory=threading.Lock)  # translations: one image at a time per model


def _users_of(slot: Slot) -> Callable[[], int]:
    return lambda: slot.users


class ModelCache:
    """Loaded models by key: loaded once however many clients ask, evicted when unused for long."""

    def __init__(self, options: ServeOptions, on_pass: Callable[[int], None]):
        self.options = options
        self.on_pass = on_pass
        self._slots: collections.OrderedDict[tuple[Any, ...], Slot] = collections.OrderedDict()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def use(self, key: tuple[Any, ...], description: dict[str, Any], load: Callable[[], Any]) -> Iterator[Slot]:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = Slot(key, description)
            self._slots.move_to_end(key)
            slot.users += 1
        try:
            with slot.loading:
                if slot.model is None:
                    started = time.monotonic()
                    slot.model = load()
                    if key[0] == "classify":
                        slot.batcher = Batcher(slot.model, self.options.batch_window, self.options.max_batch,
                                               self.on_pass, clients=_users_of(slot))  # fmt: skip
                    log(f"loaded {description['model']} ({description['weights']}) in "
                        f"{time.monotonic() - started:.1f} s")  # fmt: skip
            self.evict(keep=self.options.max_models)
            yield slot
        finally:
            with self._lock:
                slot.users -= 1
                slot.last_used = time.monotonic()
                if slot.model is None and slot.users == 0:
                    self._slots.pop(key, None)  # its load failed: nothing to keep

    def evict(self, *, keep: int | None = None, idle: float | None = None) -> None:
        """Unload models nobody uses: beyond the ``keep`` most recent, or unused for ``idle`` seconds."""
        now = time.monotonic()
        with self._lock:
            slots = list(self._slots.values())
            for position, slot in enumerate(slots):
                if slot.users or slot.model is None:
                    continue
                too_many = keep is not None and len(slots) - position > keep
                too_old = idle is not None and now - slot.last_used > idle
                if too_many or too_old:
                    del self._slots[slot.key]
                    if slot.batcher is not None:
                        slot.batcher.close()
                    log(f"unloaded {slot.description['model']} ({'LRU' if too_many else 'keep-alive over'})")

    def describe(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self._lock:
            return [{**s.description, "idle_s": round(now - s.last_used, 1) if not s.users else 0.0, "users": s.users}
                    for s in self._slots.values() if s.model is not None]  # fmt: skip


def shared(classifier: Classifier, batcher: Batcher, weights_label: str) -> Classifier:
    """A :class:`SharedClassifier` in the place of a classifier (it has what the engine uses)."""
    return cast("Classifier", SharedClassifier(classifier, batcher, weights_label))
