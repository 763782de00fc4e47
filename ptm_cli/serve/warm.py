"""What a server keeps warm: loaded models (LRU with a keep-alive), and the batchers that share forward passes.

Every model a client's command loads comes through :meth:`ModelCache.load`
(installed with :func:`~ptm_cli.tasks.base.use_model_cache`): one load per
model however many clients ask, keyed by what the model is made of (the
catalog entry, the weights and labels files as they are now, device,
precision, preprocessing). A task that can share forward passes gets one
:class:`Batcher` per model: requests that arrive together go through the
model in one pass, and each caller gets back its own rows.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..runtime import streams

if TYPE_CHECKING:
    import torch

    from ..tasks.base import Plan


@dataclass
class ServeOptions:
    idle_timeout: float = 900.0  # seconds with no connection before the server exits
    keep_alive: float = 300.0  # seconds an unused model stays loaded
    max_models: int = 3  # models kept at once, least recently used evicted first
    batch_window: float = 0.005  # seconds a forward pass waits for other clients' images
    max_batch: int = 64  # images in one shared forward pass


def log(message: str) -> None:
    """One line in the server's log (its own stderr, whatever client's command runs now)."""
    with contextlib.suppress(OSError, ValueError):
        stream = streams.process_stderr()
        stream.write(f"{time.strftime('%H:%M:%S')} ptm serve: {message}\n")
        stream.flush()


# --- shared forward passes ----------------------------------------------------------------------


@dataclass
class _Job:
    batch: torch.Tensor
    args: tuple[Any, ...]
    future: Future[list[Any]] = field(default_factory=Future)


class Batcher:
    """One thread that runs a model's forward passes, merging the batches that arrive together.

    ``forward(batch, *args)`` gives one row per image of ``batch``. The first
    waiting batch opens a window of ``window`` seconds; batches of the same
    image size and arguments that come within it (up to ``max_batch``
    images) go through the model with it, and each caller gets back its own
    rows. A lone client does not wait for company.
    """

    def __init__(
        self,
        forward: Callable[..., list[Any]],
        window: float,
        max_batch: int,
        on_pass: Callable[[int], None],
        clients: Callable[[], int] = lambda: 2,
    ):
        self.forward = forward
        self.window = window
        self.clients = clients
        self.max_batch = max_batch
        self.on_pass = on_pass
        self._queue: collections.deque[_Job] = collections.deque()
        self._ready = threading.Condition()
        self._closed = False
        self._taken: list[_Job] = []  # the jobs of the pass being gathered or run
        self._stopped: BaseException | None = None  # why the thread ended, when it ended by an error
        self._thread = threading.Thread(target=self._loop, name="ptm-batcher", daemon=True)
        self._thread.start()

    def run(self, batch: torch.Tensor, *args: Any) -> list[Any]:
        """``forward(batch, *args)``, from a pass shared with other callers."""
        job = _Job(batch, args)
        with self._ready:
            if self._stopped is not None:
                raise self._stopped
            if self._closed:
                raise UsageError("the model was unloaded; run again")
            self._queue.append(job)
            self._ready.notify()
        return job.future.result()

    @property
    def stopped(self) -> bool:
        """Whether the thread ended by an error (its callers were told; a new Batcher is needed)."""
        return self._stopped is not None

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
            self._taken = taken
            deadline = time.monotonic() + (self.window if self.clients() > 1 else 0.0)
            while count < self.max_batch:
                for job in list(self._queue):
                    fits = job.args == first.args and job.batch.shape[1:] == first.batch.shape[1:]
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
        try:
            self._serve()
        except BaseException as exc:  # a bug here must fail its callers, never leave them waiting
            stopped = RuntimeError(f"the server's forward-pass thread stopped ({type(exc).__name__}: {exc})")
            with self._ready:
                self._stopped = stopped
                pending = [*self._taken, *self._queue]
                self._queue.clear()
            for job in pending:
                if not job.future.done():
                    job.future.set_exception(stopped)
            log(f"{stopped}; its model fails every request until it is unloaded")

    def _serve(self) -> None:
        import torch

        while (jobs := self._take()) is not None:
            try:
                batch = torch.cat([job.batch for job in jobs]) if len(jobs) > 1 else jobs[0].batch
                rows = self.forward(batch, *jobs[0].args)
                self.on_pass(len(batch))
            except BaseException as exc:  # every waiting client hears of it; the thread goes on
                for job in jobs:
                    job.future.set_exception(exc)
                continue
            start = 0
            for job in jobs:
                job.future.set_result(rows[start : start + len(job.batch)])
                start += len(job.batch)


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


# The slots the command running in this context has taken (released when its request ends).
_taken: contextvars.ContextVar[list[Slot] | None] = contextvars.ContextVar("ptm_slots", default=None)


class ModelCache:
    """Loaded models by what they are made of: loaded once however many clients ask, evicted when unused."""

    def __init__(self, options: ServeOptions, on_pass: Callable[[int], None]):
        self.options = options
        self.on_pass = on_pass
        self._slots: collections.OrderedDict[tuple[Any, ...], Slot] = collections.OrderedDict()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """One client's command: the models it loads stay in use (never evicted) until it ends."""
        taken: list[Slot] = []
        token = _taken.set(taken)
        try:
            yield
        finally:
            _taken.reset(token)
            with self._lock:
                for slot in taken:
                    slot.users -= 1
                    slot.last_used = time.monotonic()
                    broken = slot.model is None or (slot.batcher is not None and slot.batcher.stopped)
                    if broken and slot.users == 0:
                        self._slots.pop(slot.key, None)  # its load failed or its thread ended: load it again

    def load(self, plan: Plan[Any], build: Callable[[], Any]) -> Any:
        """``plan``'s model, as records of this call name it; built now only if no client built it before."""
        key = plan.identity()
        task = plan.task
        assert plan.entry is not None
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                description = {
                    "task": task.name,
                    "model": plan.entry.model,
                    "weights": plan.weights_label,
                    "device": plan.options.device,
                    "precision": plan.options.precision,
                }
                slot = self._slots[key] = Slot(key, description)
            self._slots.move_to_end(key)
            slot.users += 1
        taken = _taken.get()
        if taken is not None:
            taken.append(slot)
        with slot.loading:
            if slot.model is None:
                started = time.monotonic()
                slot.model = build()
                self._rekey(slot, plan.identity())
                if task.shares_forward_passes:
                    forward = task.batch_forward(slot.model)
                    slot.batcher = Batcher(
                        forward,
                        self.options.batch_window,
                        self.options.max_batch,
                        self.on_pass,
                        clients=lambda: slot.users,
                    )
                log(
                    f"loaded {slot.description['model']} ({slot.description['weights']}) in "
                    f"{time.monotonic() - started:.1f} s"
                )
        self.evict(keep=self.options.max_models)
        if slot.batcher is not None:
            return task.shared(slot.model, slot.batcher.run, plan.weights_label)
        return task.relabel(slot.model, plan.weights_label)

    def _rekey(self, slot: Slot, key: tuple[Any, ...]) -> None:
        """File the slot under what its files are now: a build that downloaded the weights made them exist.

        Without it the first request for a model the server had to fetch would
        leave it under "not there yet", and the next request would load it again.
        """
        with self._lock:
            if key == slot.key or key in self._slots or self._slots.get(slot.key) is not slot:
                return
            del self._slots[slot.key]
            slot.key = key
            self._slots[key] = slot

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
            return [
                {**s.description, "idle_s": round(now - s.last_used, 1) if not s.users else 0.0, "users": s.users}
                for s in self._slots.values()
                if s.model is not None
            ]
