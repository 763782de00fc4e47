"""Image classification: a catalog entry in, ranked labels out, batch by batch.

`Classifier` holds one model ready to run (weights verified and loaded,
device and precision chosen, preprocessing fixed); a ready one comes from
:func:`ptm_cli.tasks.loading.load_classifier`. `classify_images` feeds
it: worker threads decode and preprocess the next images, between forward
passes where the model's threads need every core (see `_takes_turns`) and
while the model runs elsewhere (on a CPU, choosing how torch's OpenMP
threads wait: see `OpenMPPace`), and results come back in input order, one
per input, with failed inputs carrying their error instead of predictions
(never another image's prediction).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CompileFailed, ConfigError, InputError, NonFiniteOutput, PtmError, UsageError, first_line
from ..images.inputs import ImageInput

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..cache.catalog import Entry
    from ..images.transforms import Preprocess
    from ..nets.device import Precision


@dataclass(frozen=True)
class Prediction:
    rank: int
    index: int
    label: str | None
    probability: float


@dataclass(frozen=True)
class Classification:
    """The outcome for one input: predictions, or the error that stopped it."""

    input: str
    predictions: list[Prediction] | None = None
    error: PtmError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Classifier:
    """A classification model ready to run on preprocessed batches."""

    def __init__(
        self,
        entry: Entry,
        model: nn.Module,
        *,
        weights_label: str,
        labels: list[str] | None,
        preprocess: Preprocess,
        device: torch.device,
        precision: Precision,
    ):
        self.entry = entry
        self.model = model
        self.weights_label = weights_label
        self.labels = labels
        self.preprocess = preprocess
        self.device = device
        self.precision = precision
        self._forward: Callable[[torch.Tensor], torch.Tensor] = model
        self._compiled_batch: int | None = None  # the batch size the compiled graph was built for
        self.openmp_spinning = False  # how torch's OpenMP threads waited at the end of the last run (OpenMPPace)

    @property
    def compiled(self) -> bool:
        return self._forward is not self.model

    def compile(self) -> None:
        """Run the model through ``torch.compile`` from the next batch on.

        Compiling takes a minute or more for a ResNet on a CPU, paid by the
        first batch; every batch is then padded to that first batch's size
        so the graph is compiled once. It needs a fixed input size, so the
        preprocessing must crop.
        """
        import torch

        if self.preprocess.crop is None:
            raise UsageError("--compile needs a fixed input size: give --crop N (or a model whose catalog entry crops)")
        # Its CPU build step looks for CUDA and logs that none is found: not news on stderr.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        self._forward = torch.compile(self.model, dynamic=False)

    def check_labels(self) -> None:
        """ConfigError when the labels do not match the model's outputs (a catalog mistake)."""
        if self.labels is None:
            return
        outputs = _output_count(self.model)
        if outputs is not None and outputs != len(self.labels):
            raise ConfigError(
                f"{self.entry.ref}: the model has {outputs} outputs but its labels list {len(self.labels)} "
                "classes; fix `labels` or `num_classes` in the catalog entry"
            )

    def predict(self, batch: torch.Tensor, top_k: int) -> list[list[Prediction]]:
        """Top-k predictions (softmax probabilities) for a batch [N, 3, H, W].

        Raises ``NonFiniteOutput`` when the model's output for any image holds
        NaN or infinity; :meth:`predict_each` reports that per image instead.
        """
        results = self.predict_each(batch, top_k)
        for result in results:
            if isinstance(result, NonFiniteOutput):
                raise result
        return [r for r in results if not isinstance(r, NonFiniteOutput)]

    def predict_each(self, batch: torch.Tensor, top_k: int) -> list[list[Prediction] | NonFiniteOutput]:
        """Per image of the batch: its top-k predictions, or ``NonFiniteOutput`` (NaN/inf logits)."""
        import torch

        k = min(top_k, self._class_count())
        count = len(batch)
        if self.compiled:
            batch = self._pad_for_compiled(batch)
        if self.device.type == "cuda":
            batch = batch.pin_memory()  # lets the copy below overlap with queued GPU work
        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.precision.dtype, enabled=self.precision.autocast):
                logits = self._run(x)[:count]
            logits = logits.float()
            finite = torch.isfinite(logits).all(dim=1).cpu().tolist()
            probabilities = torch.softmax(logits, dim=1)
            top = probabilities.topk(k, dim=1)
        values, indices = top.values.cpu().tolist(), top.indices.cpu().tolist()
        return [
            [
                Prediction(rank=r + 1, index=i, label=self._label(i), probability=p)
                for r, (i, p) in enumerate(zip(row_i, row_p, strict=True))
            ]
            if ok
            else NonFiniteOutput(
                f"the model's output for this input holds NaN or infinity ({self.entry.ref}), so it has no "
                "probabilities; check the weights (`ptm weights inspect`) and the catalog's mean and std"
            )
            for row_i, row_p, ok in zip(indices, values, finite, strict=True)
        ]

    def _pad_for_compiled(self, batch: torch.Tensor) -> torch.Tensor:
        """Zero images after the real ones, so a short last batch reuses the compiled graph."""
        import torch

        if self._compiled_batch is None or len(batch) > self._compiled_batch:
            return batch
        padding = batch.new_zeros((self._compiled_batch - len(batch), *batch.shape[1:]))
        return torch.cat([batch, padding])

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if not self.compiled or self._compiled_batch is not None:
            return self._forward(x)
        try:
            logits = self._forward(x)
        except Exception as e:  # the first call compiles; its failures are the compiler's
            raise CompileFailed(
                f"torch.compile failed ({type(e).__name__}: {first_line(e, 300)}); run without --compile, "
                "or install a C++ compiler (on CPU, torch.compile builds its kernels with one)"
            ) from e
        self._compiled_batch = len(x)
        return logits

    def _class_count(self) -> int:
        return len(self.labels) if self.labels else (_output_count(self.model) or 1000)

    def _label(self, index: int) -> str | None:
        return self.labels[index] if self.labels and index < len(self.labels) else None


def _output_count(model: nn.Module) -> int | None:
    """Size of the last Linear layer's output, when the model ends in one."""
    from torch import nn

    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return last.out_features if last is not None else None


class OpenMPPace:
    """How torch's OpenMP threads wait at their barriers during this run: spinning, or asleep.

    libgomp (torch's OpenMP on Linux) lets a thread that reaches a barrier
    spin while the process holds no more OpenMP threads than there are cores,
    and sleep almost at once when it holds more. Spinning is faster on an
    idle machine (ResNet101 on 2 cores: 6 % in fp32, 11 to 17 % in bf16), and
    a collapse when other processes compete for the cores, since a spinning
    thread burns the time slice its partner needs (measured 2.5 to 7 times
    slower). A classifier's first run starts asleep, with one idle thread
    holding an OpenMP team (the decoding threads run no torch operations, so
    they hold none); its later runs start the way its last pass left them
    (``spinning``). After each forward pass the keeper looks at the share of
    the cores the process got: at least ``SPIN_FROM`` lets the threads spin
    (the holder ends), under ``SLEEP_BELOW`` puts them back to sleep. The
    answers are the same either way.
    """

    SPIN_FROM = 0.8  # idle machine, threads asleep: 0.86 to 0.89 measured
    SLEEP_BELOW = 0.7  # busy machine: 0.3 to 0.5 measured, spinning or not
    MIN_WALL_S = 0.05  # shorter passes are mostly Python and timer noise: not judged

    def __init__(self, cores: int, *, spinning: bool = False):
        self.cores = cores
        self._holder: threading.Thread | None = None
        self._release = threading.Event()
        if not spinning:
            self._sleep()

    @property
    def spinning(self) -> bool:
        return self._holder is None

    def judge(self, cpu_s: float, wall_s: float) -> None:
        """Record one forward pass: CPU seconds of the whole process against its wall seconds."""
        if wall_s < self.MIN_WALL_S:
            return
        share = cpu_s / (self.cores * wall_s)
        if self.spinning and share < self.SLEEP_BELOW:
            self._sleep()
        elif not self.spinning and share >= self.SPIN_FROM:
            self.close()

    def close(self) -> None:
        """End the holder thread (and with it its OpenMP team): back to libgomp's own way of waiting."""
        if self._holder is not None:
            self._release.set()
            self._holder.join()
            self._holder = None

    def _sleep(self) -> None:
        import torch

        def hold(ready: threading.Event, release: threading.Event) -> None:
            try:
                torch.ones(1 << 17).add_(1)  # large enough to run on OpenMP threads: this thread's team
            finally:
                ready.set()
            release.wait()

        ready = threading.Event()
        self._release = threading.Event()
        self._holder = threading.Thread(target=hold, args=(ready, self._release), name="ptm-openmp-team",
                                        daemon=True)  # fmt: skip
        self._holder.start()
        ready.wait()


# A JPEG may be decoded at reduced DCT scale while its shorter side stays at
# least this many times the resize target: 3x faster on 12-megapixel photos,
# and the preprocessed tensor moves by under 0.003 on average (normalised units).
DRAFT_MARGIN = 2


def classify_images(
    inputs: Iterable[ImageInput],
    classifier: Classifier,
    *,
    top_k: int = 5,
    batch_size: int = 8,
    workers: int = 2,
    full_decode: bool = False,
    on_image: Callable[[ImageInput, Any], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> Iterator[Classification]:
    """Classify ``inputs`` in batches; one result per input, in input order.

    ``full_decode`` turns off reduced-scale JPEG decoding (see `DRAFT_MARGIN`).
    ``on_image(item, image)`` sees each decoded RGB image (in a decoding
    thread, before preprocessing), e.g. to keep a thumbnail for a report.
    ``on_note(message)`` hears about images that load with a caveat (a damaged
    colour profile); it may be called from the decoding threads.
    """
    if top_k < 1:
        raise UsageError("--top-k must be at least 1")
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    preprocess = classifier.preprocess
    short_side = preprocess.resize or preprocess.crop
    min_short_side = None if full_decode or short_side is None else DRAFT_MARGIN * short_side
    pace: OpenMPPace | None = None
    # The decoding threads run no torch operation (so they hold no OpenMP team) and take the fused
    # resize-and-crop, except for the warm server's shared classifier, which says no device: there
    # torch's own preprocessing gives every decoding thread a team, and that keeps the shared forward
    # passes' threads asleep, as several clients at once want them.
    without_torch = getattr(classifier, "device", None) is not None

    def load(item: ImageInput) -> Any:
        from ..images.transforms import preprocess as run_preprocess

        try:
            image = item.open(min_short_side=min_short_side, on_note=on_note)
        except InputError as exc:
            return exc
        if on_image is not None:
            on_image(item, image)
        try:
            return run_preprocess(image, preprocess, without_torch=without_torch)
        except InputError as exc:
            return exc

    from ..runtime.tuning import reused_heap

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ptm-decode")
    try:
        pace = _pace_for(classifier)
        with reused_heap():  # decoded images and activations reuse pages instead of faulting in new ones
            turns = _takes_turns(classifier)
            yield from _batched(inputs, pool, load, classifier, top_k, batch_size, batch_size + workers, pace, turns)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if pace is not None:
            classifier.openmp_spinning = pace.spinning
            pace.close()


def _batched(
    inputs: Iterable[ImageInput],
    pool: ThreadPoolExecutor,
    load: Callable[[ImageInput], Any],
    classifier: Classifier,
    top_k: int,
    batch_size: int,
    lookahead: int,
    pace: OpenMPPace | None,
    turns: bool,
) -> Iterator[Classification]:
    """Decode and run batch after batch.

    Overlapping, ``lookahead`` images are always being decoded ahead while
    the model runs (the model does not run on the cores the decoding needs:
    a GPU, or fewer torch threads than cores; or its OpenMP threads sleep at
    their barriers, on a busy machine). Taking ``turns``, the decoding
    threads fill the next batch and then the model runs with every core to
    itself (see `_takes_turns`), for as long as the threads spin.
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
            yield from _run_pending(pending, classifier, top_k, pace)
            pending = []
        if not queue:  # taking turns: this turn's images are in; the next turn, or the rest of a batch
            refill(lookahead if overlapping() else batch_size - decoded())
    yield from _run_pending(pending, classifier, top_k, pace)


def _takes_turns(classifier: Classifier) -> bool:
    """Whether decoding and the model should take turns instead of overlapping.

    They should where the model's OpenMP threads cover every core the
    process may use and spin at their barriers. A decoding thread would then
    take a core from one of them in the middle of a forward pass, and the
    others wait for it at the next barrier. Taking turns, decoding runs on
    all the cores at once, and so does the model. Measured on 2 cores
    (ResNet101 on 1280x720 photos, 4 alternating rounds): 41.9 against 41.6
    images/s in bf16, 24.6 against 24.5 in fp32: a small gain, and no loss.
    While the threads sleep (a busy machine: see `OpenMPPace`) a waiting
    thread gives its core away, and `_batched` overlaps again. Cores here
    are the logical CPUs the process may run on: where torch keeps to the
    physical cores of a machine with two threads per core, the decoding
    runs on the spare hardware threads without taking any of torch's, and
    overlapping stays. With a single torch thread there is no barrier to
    stall, and overlapping keeps file reads under the forward passes.
    """
    threads = _openmp_threads(classifier)
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every CPU counts
    cores = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    return threads is not None and threads >= cores


def _openmp_threads(classifier: Classifier) -> int | None:
    """How many OpenMP threads the model runs on: a CPU with more than one torch thread; else None.

    A classifier whose forward passes are shared with other callers (the warm
    server's) does not say where they run: None.
    """
    import torch

    device = getattr(classifier, "device", None)
    if device is None or device.type != "cpu" or torch.get_num_threads() < 2:
        return None
    return torch.get_num_threads()


def _pace_for(classifier: Classifier) -> OpenMPPace | None:
    """A pace keeper where the model runs on OpenMP threads; else None.

    The warm server's shared classifier keeps the threads asleep: its
    decoding threads preprocess with torch, whose OpenMP teams see to that.
    """
    threads = _openmp_threads(classifier)
    return None if threads is None else OpenMPPace(threads, spinning=classifier.openmp_spinning)


def _run_pending(
    pending: list[tuple[ImageInput, Any]], classifier: Classifier, top_k: int, pace: OpenMPPace | None
) -> Iterator[Classification]:
    """Run the model on the decoded images in ``pending``; keep the order."""
    import torch

    results: dict[int, list[Prediction] | NonFiniteOutput] = {}
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for position, (_, value) in enumerate(pending):
        if not isinstance(value, PtmError):
            by_shape.setdefault(tuple(value.shape), []).append(position)
    # Without a crop, images keep their own sizes: one forward pass per size.
    for positions in by_shape.values():
        batch = torch.stack([pending[p][1] for p in positions])
        wall, cpu = time.perf_counter(), time.process_time()
        outcomes = classifier.predict_each(batch, top_k)
        if pace is not None:
            pace.judge(time.process_time() - cpu, time.perf_counter() - wall)
        for position, predictions in zip(positions, outcomes, strict=True):
            results[position] = predictions
    for position, (item, value) in enumerate(pending):
        if isinstance(value, PtmError):
            yield Classification(item.name, error=value)
            continue
        result = results[position]
        if isinstance(result, NonFiniteOutput):
            yield Classification(item.name, error=result)
        else:
            yield Classification(item.name, predictions=result)


def to_record(result: Classification, classifier: Classifier) -> dict[str, Any]:
    """The JSON record ptm writes for one input."""
    from ..output.records import round_float

    if result.error is not None:
        return {"input": result.input, "error": result.error.record()}
    return {
        "input": result.input,
        "model": classifier.entry.model,
        "weights": classifier.weights_label,
        "predictions": [
            {"rank": p.rank, "index": p.index, "label": p.label, "probability": round_float(p.probability)}
            for p in result.predictions or []
        ],
    }
