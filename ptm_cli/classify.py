"""Image classification: a catalog entry in, ranked labels out, batch by batch.

`Classifier` holds one model ready to run (weights verified and loaded,
device and precision chosen, preprocessing fixed); a ready one comes from
:func:`ptm_cli.loading.load_classifier`. `classify_images` feeds
it: worker threads decode and preprocess the next images while the model
runs on the current batch, and results come back in input order, one per
input, with failed inputs carrying their error instead of predictions (never
another image's prediction).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import CompileFailed, ConfigError, InputError, NonFiniteOutput, PtmError, UsageError, first_line
from .inputs import ImageInput

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .catalog import Entry
    from .device import Precision
    from .transforms import Preprocess


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

    def load(item: ImageInput) -> Any:
        from .transforms import preprocess as run_preprocess

        try:
            image = item.open(min_short_side=min_short_side, on_note=on_note)
        except InputError as exc:
            return exc
        if on_image is not None:
            on_image(item, image)
        # The preprocessing's torch operations give each decoding thread an
        # OpenMP team of its own. With more OpenMP threads than cores, libgomp
        # sleeps at its barriers instead of spinning, which keeps the model's
        # pace when other processes want the cores too (several times faster
        # then; see README, Performance): keep torch operations here.
        try:
            return run_preprocess(image, preprocess)
        except InputError as exc:
            return exc

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ptm-decode")
    try:
        yield from _batched(inputs, pool, load, classifier, top_k, batch_size, lookahead=batch_size + workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _batched(
    inputs: Iterable[ImageInput],
    pool: ThreadPoolExecutor,
    load: Callable[[ImageInput], Any],
    classifier: Classifier,
    top_k: int,
    batch_size: int,
    lookahead: int,
) -> Iterator[Classification]:
    queue: collections.deque[tuple[ImageInput, Future[Any]]] = collections.deque()
    pending: list[tuple[ImageInput, Any]] = []
    source = iter(inputs)

    def refill() -> None:
        while len(queue) < lookahead:
            item = next(source, None)
            if item is None:
                return
            queue.append((item, pool.submit(load, item)))

    refill()
    while queue:
        item, future = queue.popleft()
        refill()
        pending.append((item, future.result()))
        if sum(1 for _, value in pending if not isinstance(value, PtmError)) >= batch_size:
            yield from _run_pending(pending, classifier, top_k)
            pending = []
    yield from _run_pending(pending, classifier, top_k)


def _run_pending(
    pending: list[tuple[ImageInput, Any]], classifier: Classifier, top_k: int
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
        for position, predictions in zip(positions, classifier.predict_each(batch, top_k), strict=True):
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
    from .output import round_float

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
