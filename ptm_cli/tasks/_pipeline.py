"""Decoding and forward passes over many inputs: batches in input order, failures in their place.

Any task whose model takes batches of preprocessed images uses
:func:`run_batched`: worker threads decode and preprocess the next images
(``load``), the model runs batch after batch (``forward``), and every input
comes back once, in input order, with its result or the error that stopped
it (never another input's result). Images of different sizes (no crop) go
through the model in one pass per size.

How decoding and the model share the cores: where the model's OpenMP threads
cover every core and spin at their barriers, a decoding thread would take a
core from one of them in the middle of a forward pass and the others would
wait for it at the next barrier; then the two take turns (see
:func:`takes_turns`). Elsewhere (a GPU, fewer torch threads than cores, or
threads asleep because the machine is busy) decoding runs ahead while the
model runs. When the process is tuned (:func:`ptm_cli.runtime.tuning.tune_process`),
an :class:`~ptm_cli.runtime.tuning.OpenMPPace` chooses whether the threads
spin, and the run happens in the reused heap.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..errors import PtmError, UsageError
from ..runtime.tuning import OpenMPPace, openmp_threads, pace_for, reused_heap

if TYPE_CHECKING:
    import torch

    from ..images.inputs import ImageInput

Load = Callable[["ImageInput"], Any]  # an input in; its tensor, or the PtmError that stopped it
Forward = Callable[["torch.Tensor"], list[Any]]  # a batch in; per row, a result or a PtmError


def run_batched(
    inputs: Iterable[ImageInput],
    load: Load,
    forward: Forward,
    *,
    model: Any,
    batch_size: int,
    workers: int,
) -> Iterator[tuple[ImageInput, Any]]:
    """``(input, result or PtmError)`` for every input, in input order.

    ``model`` says where the forward passes run (its ``device``; not this
    run's to know for a warm server's ``shared`` model) and keeps
    ``openmp_spinning``, how the OpenMP threads waited when its last run ended.
    """
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    device = None if getattr(model, "shared", False) else getattr(model, "device", None)
    pace: OpenMPPace | None = None
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ptm-decode")
    try:
        pace = pace_for(device, spinning=getattr(model, "openmp_spinning", False))
        with reused_heap():  # decoded images and activations reuse pages instead of faulting in new ones
            turns = takes_turns(device)
            yield from _batches(inputs, pool, load, forward, batch_size, batch_size + workers, pace, turns)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if pace is not None:
            model.openmp_spinning = pace.spinning
            pace.close()


def _batches(
    inputs: Iterable[ImageInput],
    pool: ThreadPoolExecutor,
    load: Load,
    forward: Forward,
    batch_size: int,
    lookahead: int,
    pace: OpenMPPace | None,
    turns: bool,
) -> Iterator[tuple[ImageInput, Any]]:
    """Decode and run batch after batch.

    Overlapping, ``lookahead`` images are always being decoded ahead while the
    model runs. Taking ``turns``, the decoding threads fill the next batch and
    then the model runs with every core to itself, for as long as the threads
    spin.
    """
    queue: collections.deque[tuple[ImageInput, Future[Any]]] = collections.deque()
    pending: list[tuple[ImageInput, Any]] = []
    source = iter(inputs)

    def refill(count: int) -> None:
        while len(queue) < count:
            item = next(source, None)
            if item is None:
                return
            queue.append((item, pool.submit(load, item)))

    def decoded() -> int:
        return sum(1 for _, value in pending if not isinstance(value, PtmError))

    def overlapping() -> bool:
        return not turns or (pace is not None and not pace.spinning)

    refill(lookahead if overlapping() else batch_size)
    while queue:
        item, future = queue.popleft()
        if overlapping():
            refill(lookahead)
        pending.append((item, future.result()))
        if decoded() >= batch_size:
            yield from _run_pending(pending, forward, pace)
            pending = []
        if not queue:  # taking turns: this turn's images are in; the next turn, or the rest of a batch
            refill(lookahead if overlapping() else batch_size - decoded())
    yield from _run_pending(pending, forward, pace)


def takes_turns(device: torch.device | None) -> bool:
    """Whether decoding and the model should take turns instead of overlapping.

    They should where the model's OpenMP threads cover every core the process
    may use and spin at their barriers. Taking turns, decoding runs on all the
    cores at once, and so does the model. Measured on 2 cores (ResNet101 on
    1280x720 photos, 4 alternating rounds): 41.9 against 41.6 images/s in
    bf16, 24.6 against 24.5 in fp32: a small gain, and no loss. While the
    threads sleep (a busy machine) a waiting thread gives its core away, and
    decoding overlaps again. Cores here are the logical CPUs the process may
    run on: where torch keeps to the physical cores of a machine with two
    threads per core, decoding runs on the spare hardware threads and
    overlapping stays. With a single torch thread there is no barrier to
    stall, and overlapping keeps file reads under the forward passes.
    """
    threads = openmp_threads(device)
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every CPU counts
    cores = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    return threads is not None and threads >= cores


def _run_pending(
    pending: list[tuple[ImageInput, Any]], forward: Forward, pace: OpenMPPace | None
) -> Iterator[tuple[ImageInput, Any]]:
    """Run the model on the decoded images in ``pending``; keep the order."""
    import torch

    results: dict[int, Any] = {}
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for position, (_, value) in enumerate(pending):
        if not isinstance(value, PtmError):
            by_shape.setdefault(tuple(value.shape), []).append(position)
    for positions in by_shape.values():
        batch = torch.stack([pending[p][1] for p in positions])
        wall, cpu = time.perf_counter(), time.process_time()
        outcomes = forward(batch)
        if pace is not None:
            pace.judge(time.process_time() - cpu, time.perf_counter() - wall)
        for position, outcome in zip(positions, outcomes, strict=True):
            results[position] = outcome
    for position, (item, value) in enumerate(pending):
        yield item, value if isinstance(value, PtmError) else results[position]
