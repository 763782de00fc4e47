"""``ptm segment``'s runs: records and side outputs for semantic models and for instance models (Mask R-CNN)."""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import InputError, OutputError, PtmError
from ._segmenter import DEFAULT_TILE, SemanticResult, finite, non_finite
from .base import Outcome, RunContext

if TYPE_CHECKING:
    from PIL import Image

    from ..images.inputs import ImageInput
    from ._detector import Detector, ImageDetections
    from ._segment_files import SegmentOutputs
    from ._segmenter import Segmenter

DEFAULT_OPACITY = 0.5
REPORT_SIDE = 512
"""Long side of the overlay a results page gets when no overlay file is written (it only shows a thumbnail)."""


def segment_images(
    inputs: Iterable[ImageInput],
    segmenter: Segmenter,
    *,
    size: int | str | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    keep: Iterable[int] | None = None,
    batch_size: int = 1,
    workers: int = 2,
    keep_image: bool = False,
    on_image: Callable[[ImageInput, Image.Image], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    on_tile: Callable[[int, int], None] | None = None,
    before_run: Callable[[ImageInput], None] | None = None,
) -> Iterator[SemanticResult]:
    """Label every pixel of ``inputs``; one result per input, in input order.

    ``size``: the short side the network runs at (None: the weights' own,
    520), or ``"full"`` (the image's resolution, in tiles of ``tile``).
    ``keep``: class indices whose probability becomes the cut-out alpha.
    ``keep_image`` puts the decoded image on each result (for overlays and
    cut-outs). ``before_run(item)`` may refuse an input before its forward
    pass by raising an InputError.
    """
    from ..images.colour import to_rgb
    from ._pipeline import run_batched

    kept = None if keep is None else frozenset(keep)
    limit = (tile or DEFAULT_TILE) ** 2
    decoded: dict[int, Any] = {}

    def load(item: ImageInput) -> Any:
        import torch

        try:
            if before_run is not None:
                before_run(item)
            image = item.open(on_note=on_note, keep_alpha=True)
            if on_image is not None:
                on_image(item, image)
            tensor = segmenter.input_tensor(to_rgb(image), size)
            rows, cols = int(tensor.shape[1]), int(tensor.shape[2])
            large = rows * cols > limit
            decoded[id(item)] = (image.size, image if keep_image else None, tensor if large else None)
            # An input run in tiles stays here; the batch gets an empty stand-in (a batch would copy it whole).
            return torch.empty((0, rows, cols)) if large else tensor
        except InputError as exc:
            return exc

    def forward(batch: Any) -> list[Any]:
        if int(batch.shape[1]) == 0:
            return [("tiles", None)] * int(batch.shape[0])  # run alone, in tiles, below
        return [("logits", row) if finite(row) else non_finite() for row in segmenter.logits(batch)]

    results = run_batched(inputs, load, forward, model=segmenter, batch_size=batch_size, workers=workers)
    try:
        for item, outcome in results:
            (width, height), image, large = decoded.pop(id(item), ((0, 0), None, None))
            if isinstance(outcome, PtmError):
                yield SemanticResult(item.name, error=outcome)
                continue
            kind, tensor = outcome
            if kind == "tiles":
                tensor, large = large, None
            try:
                if kind == "logits":
                    sink = segmenter.upsampled(tensor, (height, width), keep=kept)
                else:
                    sink = segmenter.segment(
                        tensor, (height, width), keep=kept, tile=tile, overlap=overlap, on_tile=on_tile
                    )
            except PtmError as exc:
                yield SemanticResult(item.name, width, height, error=exc)
                continue
            yield SemanticResult(item.name, width, height, sink.mask, sink.counts, sink.alpha, image=image)
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()


def coverage(result: SemanticResult, labels: list[str]) -> list[tuple[int, float]]:
    """(class index, share of the pixels) of every class present, largest first (ties: lower index first)."""
    total = max(1, result.width * result.height)
    shares = [(i, int(n) / total) for i, n in enumerate(result.counts) if n]
    return sorted(shares, key=lambda pair: (-pair[1], pair[0]))


def semantic_record(result: SemanticResult, segmenter: Segmenter) -> dict[str, Any]:
    """The JSON record ptm writes for one input of a semantic model."""
    if result.error is not None:
        return {"input": result.input, "error": result.error.record()}
    return {
        "input": result.input,
        "model": segmenter.entry.model,
        "weights": segmenter.weights_label,
        "width": result.width,
        "height": result.height,
        "coverage": [
            {"label": segmenter.labels[i], "class_id": i, "share": round(share, 6)}
            for i, share in coverage(result, segmenter.labels)
        ],
    }


def _tracked(source: Iterable[ImageInput], items: collections.deque[ImageInput]) -> Iterator[ImageInput]:
    for item in source:
        items.append(item)
        yield item


def _size(params: Mapping[str, Any]) -> int | str | None:
    size = params.get("size")
    return size if size in (None, "full") else int(size)


def _guarded(record: dict[str, Any], write: Any) -> dict[str, Any]:
    """``write()``'s outputs added to ``record``, or the record of the error that stopped them."""
    try:
        write()
    except BrokenPipeError:
        raise
    except InputError as exc:
        return {"input": record["input"], "error": exc.record()}
    except OSError as exc:
        return {"input": record["input"], "error": OutputError(f"{record['input']}: {exc}").record()}
    return record


def run_semantic(
    model: Segmenter,
    inputs: Iterable[ImageInput],
    params: Mapping[str, Any],
    context: RunContext,
    outputs: SegmentOutputs,
) -> Iterator[Outcome]:
    from ._segmenter import class_indices

    chosen = outputs.chosen
    keep = None
    if params.get("cutout") is not None:
        keep = class_indices(str(params["cutout"]).split(","), model.labels, model.entry.ref)
    opacity = float(params.get("opacity", DEFAULT_OPACITY))
    items: collections.deque[ImageInput] = collections.deque()
    on_image = context.on_image
    results = segment_images(
        _tracked(inputs, items),
        model,
        size=_size(params),
        tile=params.get("tile"),
        overlap=params.get("overlap"),
        keep=keep,
        batch_size=int(params.get("batch_size", 1)),
        workers=int(params.get("workers", 2)),
        keep_image=chosen.overlay or chosen.cutout or context.keep_images,
        on_image=None if on_image is None else (lambda item, image: on_image(item.name, image)),
        on_note=context.on_note,
        on_tile=context.on_tile,
        before_run=outputs.before_run if chosen.any else None,
    )
    try:
        for result in results:
            item = items.popleft()
            record = semantic_record(result, model)
            shown: list[Any] = [None]
            if result.ok:
                write = functools.partial(
                    _semantic_outputs, item, result, model, record, outputs, opacity, context.keep_images, shown
                )
                record = _guarded(record, write)
            yield Outcome(record, shown[0] if context.keep_images else None)
    finally:
        _close(results)


def _close(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def _semantic_outputs(
    item: ImageInput,
    result: Any,
    model: Segmenter,
    record: dict[str, Any],
    outputs: SegmentOutputs,
    opacity: float,
    keep_image: bool,
    shown: list[Any],
) -> None:
    """The mask, overlay and cut-out of one input (those asked for); ``shown[0]``: the overlay for the page."""
    from ..images.colour import to_rgb
    from ..output.masks import class_mask_image, cutout, overlay

    chosen = outputs.chosen
    present = coverage(result, model.labels)
    if chosen.mask:
        _put(record, "mask", outputs.write(item, "mask", class_mask_image(result.mask, model.class_names)))
    if chosen.overlay:
        shown[0] = overlay(to_rgb(result.image), result.mask, model.class_names, present, opacity)
        _put(record, "overlay", outputs.write(item, "overlay", shown[0]))
    elif keep_image:
        image, mask = _small(to_rgb(result.image), result.mask)
        shown[0] = overlay(image, mask, model.class_names, present, opacity)
    if chosen.cutout:
        _put(record, "cutout", outputs.write(item, "cutout", cutout(result.image, result.alpha)))


def _put(record: dict[str, Any], key: str, path: str | None) -> None:
    if path is not None:
        record[key] = path


def _small(image: Image.Image, mask: Any) -> tuple[Image.Image, Any]:
    """``image`` and its mask shrunk to at most REPORT_SIDE pixels long (the mask by nearest neighbour)."""
    import numpy as np
    from PIL import Image

    scale = REPORT_SIDE / max(image.size)
    if scale >= 1:
        return image, mask
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small_mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    return image.resize(size, Image.Resampling.BILINEAR), small_mask


def instance_record(result: ImageDetections, detector: Detector) -> dict[str, Any]:
    """detect's record, with each object's mask area and COCO RLE."""
    from .detect import to_record

    record = to_record(result, detector)
    for d, found in zip(record.get("detections") or [], result.detections or [], strict=True):
        assert found.mask is not None
        d["area"] = found.mask.area
        d["mask"] = found.mask.rle
    return record


def run_instance(
    model: Detector,
    inputs: Iterable[ImageInput],
    params: Mapping[str, Any],
    context: RunContext,
    outputs: SegmentOutputs,
    coco: Any,
) -> Iterator[Outcome]:
    from ._detector import DEFAULT_MAX_DETECTIONS, DEFAULT_MIN_SCORE, Limits
    from .detect import detect_images

    chosen = outputs.chosen
    cut = frozenset() if params.get("cutout") is None else model.class_ids(str(params["cutout"]).split(","))
    classes = params.get("classes")
    limits = Limits(
        min_score=float(params.get("min_score", DEFAULT_MIN_SCORE)),
        max_detections=int(params.get("max_detections", DEFAULT_MAX_DETECTIONS)),
        classes=None if classes is None else model.class_ids(str(classes).split(",")),
        soft_masks=cut,
    )
    items: collections.deque[ImageInput] = collections.deque()
    on_image = context.on_image
    transparent: dict[int, Any] = {}  # photos with transparency, kept for their cut-outs

    def seen(item: ImageInput, image: Any) -> None:
        if on_image is not None:
            on_image(item.name, image)
        if chosen.cutout and image.mode == "RGBA":
            transparent[id(item)] = image

    results = detect_images(
        _tracked(inputs, items),
        model,
        limits=limits,
        batch_size=int(params.get("batch_size", 1)),
        workers=int(params.get("workers", 2)),
        keep_pixels=chosen.any or context.keep_images,
        on_image=seen,
        on_note=context.on_note,
        before_run=outputs.before_run if chosen.any else None,
        keep_alpha=chosen.cutout,
    )
    try:
        for result in results:
            item = items.popleft()
            record = instance_record(result, model)
            shown: list[Any] = [None]
            original = transparent.pop(id(item), None)
            if result.ok and (chosen.any or context.keep_images):
                write = functools.partial(
                    _instance_outputs, item, result, record, outputs, cut, context.keep_images, params, shown, original
                )
                record = _guarded(record, write)
            if coco is not None:
                coco.add(record)
            yield Outcome(record, shown[0] if context.keep_images else None)
    finally:
        _close(results)


def _instance_outputs(
    item: ImageInput,
    result: ImageDetections,
    record: dict[str, Any],
    outputs: SegmentOutputs,
    cut: frozenset[int],
    keep_image: bool,
    params: Mapping[str, Any],
    shown: list[Any],
    original: Image.Image | None = None,
) -> None:
    """Per-object masks and cut-outs, and the overlay (for a file or the results page)."""
    from PIL import Image

    from ..output.drawing import draw_detections
    from ..output.masks import binary_mask_image, cutout, decode_rle, tint
    from ._segment_files import object_name

    chosen = outputs.chosen
    image = Image.fromarray(result.pixels.permute(1, 2, 0).numpy())
    masks, cutouts = [], []
    for rank, (d, found) in enumerate(zip(record["detections"], result.detections or [], strict=True), start=1):
        name = object_name(d["label"], rank)
        if chosen.mask:
            masks.append(outputs.write(item, "mask", binary_mask_image(decode_rle(d["mask"])), name))
        if chosen.cutout and found.category_id in cut and found.mask is not None and found.mask.soft is not None:
            m = found.mask
            box = (m.left, m.top, m.left + m.soft.shape[1], m.top + m.soft.shape[0])
            if m.soft.size:
                source = original if original is not None else image  # RGBA keeps the photo's transparency
                cutouts.append(outputs.write(item, "cutout", cutout(source, m.soft, box), name))
    if chosen.mask:
        record["masks"] = [m for m in masks if m is not None]
    if chosen.cutout:
        record["cutouts"] = [c for c in cutouts if c is not None]
    if chosen.overlay or keep_image:
        opacity = float(params.get("opacity", DEFAULT_OPACITY))
        tinted = tint(image, [(d["label"], d["mask"]) for d in record["detections"]], opacity)
        shown[0] = draw_detections(tinted, record["detections"])
        if chosen.overlay:
            _put(record, "overlay", outputs.write(item, "overlay", shown[0]))
