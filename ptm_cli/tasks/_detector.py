"""The detector itself: torchvision's model behind a lock, its outputs as :class:`Detection` objects, and tiles.

What the model sees is what torchvision's documentation feeds it: the
decoded image (EXIF orientation applied, sRGB) as floats in [0, 1]
(``weights.transforms()``); the detector resizes and normalises it itself and
gives boxes in the input's pixels.

Tiles (``--tile N``, for small objects in large photos): the image also runs
in overlapping N x N tiles, each at the detector's own input size, so a small
object is seen several times larger than in the whole-image pass. A box that
touches a tile's inner edge is dropped (the object is cut there; a
neighbouring tile, overlapping by a quarter tile, or the whole-image pass
sees it whole), and the rest are merged with class-aware non-maximum
suppression: every object is reported once, with the box of its best view.

Importing this module imports neither torch nor torchvision.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, NonFiniteOutput, PtmError, UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..cache.catalog import Entry
    from ..nets.device import Precision

DEFAULT_MIN_SCORE = 0.5
DEFAULT_MAX_DETECTIONS = 100
MAX_DETECTIONS = 10_000
MERGE_IOU = 0.5
"""Boxes of one class overlapping more than this (intersection over union) are one object when merging tiles."""
EDGE_MARGIN = 2
"""A tile's box within this many pixels of an inner tile edge is taken to be cut by it."""
WITH_CLASSES_KEEP = 1000
"""With --classes, the model keeps at least this many boxes before ptm filters, so others cannot crowd them out."""
MIN_TILE = 64


@dataclass(frozen=True)
class Keypoint:
    name: str
    x: float
    y: float
    score: float


@dataclass(frozen=True)
class Detection:
    """One object: its class, score and box (xmin, ymin, xmax, ymax) in the input's pixels."""

    category_id: int
    label: str | None
    score: float
    box: tuple[float, float, float, float]
    keypoints: tuple[Keypoint, ...] | None = None


@dataclass(frozen=True)
class ImageDetections:
    """The outcome for one input: its size and detections, or the error that stopped it."""

    input: str
    width: int = 0
    height: int = 0
    detections: list[Detection] | None = None
    error: PtmError | None = None
    pixels: Any = None  # the decoded image [3, H, W] uint8, when drawing or cropping needs it

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Limits:
    """What a call keeps: boxes scoring at least ``min_score``, at most ``max_detections``, of ``classes``."""

    min_score: float = DEFAULT_MIN_SCORE
    max_detections: int = DEFAULT_MAX_DETECTIONS
    classes: frozenset[int] | None = None


class Detector:
    """A torchvision detector ready to run on batches of images of one size."""

    def __init__(
        self,
        entry: Entry,
        model: nn.Module,
        *,
        weights_label: str,
        labels: list[str] | None,
        device: torch.device,
        precision: Precision,
    ):
        self.entry = entry
        self.model = model
        self.weights_label = weights_label
        self.labels = labels
        self.keypoint_names = entry.keypoint_names
        self.device = device
        self.precision = precision
        self.openmp_spinning = False
        # A call's limits are set on the model for its forward pass: one pass at a time per Detector.
        self._lock = threading.Lock()

    # -- public --------------------------------------------------------------------------------

    def detect_each(self, batch: torch.Tensor, limits: Limits) -> list[list[Detection] | NonFiniteOutput]:
        """Per image of ``batch`` ([N, 3, H, W] uint8, one size): its detections, best first, or NonFiniteOutput."""
        return [self._detections(raw, limits) for raw in self._raw(list(batch), limits)]

    def detect(
        self,
        pixels: torch.Tensor,
        limits: Limits,
        *,
        tile: int | None = None,
        on_tile: Callable[[int, int], None] | None = None,
    ) -> list[Detection] | NonFiniteOutput:
        """One image's detections ([3, H, W] uint8), in tiles of side ``tile`` when it is larger than one."""
        height, width = int(pixels.shape[1]), int(pixels.shape[2])
        if tile is None or (height <= tile and width <= tile):
            return self.detect_each(pixels.unsqueeze(0), limits)[0]
        return self._detect_tiled(pixels, limits, tile, on_tile)

    def class_ids(self, names: Iterable[str]) -> frozenset[int]:
        """The category ids of class ``names``; UsageError listing the model's classes for an unknown one."""
        from ..cache.catalog import is_class

        known = {label.lower(): i for i, label in enumerate(self.labels or []) if is_class(label)}
        return class_ids(names, known, self.entry.ref)

    # -- running the model ----------------------------------------------------------------------

    def _raw(self, images: list[torch.Tensor], limits: Limits) -> list[dict[str, torch.Tensor]]:
        """The model's own outputs for ``images`` (uint8 [3, H, W] each), on the CPU in float32."""
        import torch

        from ..nets.detection import limited

        keep = max(limits.max_detections, WITH_CLASSES_KEEP if limits.classes is not None else 0)
        with self._lock, torch.inference_mode():
            # Pixels laid out as a decoded image is (channels last, as torchvision's pil_to_tensor gives them):
            # the detector's own resizing takes another path, with other rounding, on a plain [3, H, W] tensor.
            inputs = [_as_decoded(image.to(self.device, non_blocking=True)).float().div(255) for image in images]
            with (
                limited(self.model, min_score=limits.min_score, max_detections=keep),
                torch.autocast(self.device.type, dtype=self.precision.dtype, enabled=self.precision.autocast),
            ):
                outputs = self.model(inputs)
            return [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()} for o in outputs]

    def _detections(self, raw: Mapping[str, torch.Tensor], limits: Limits) -> list[Detection] | NonFiniteOutput:
        import torch

        boxes, scores, labels = raw["boxes"], raw["scores"], raw["labels"]
        points, point_scores = raw.get("keypoints"), raw.get("keypoints_scores")
        if not _finite(raw):
            return NonFiniteOutput(
                f"the detector's output for this input holds NaN or infinity ({self.entry.ref}); "
                "check the weights (`ptm weights inspect`)"
            )
        keep = scores >= limits.min_score
        if limits.classes is not None:
            keep &= torch.isin(labels, torch.tensor(sorted(limits.classes), dtype=labels.dtype))
        order = torch.argsort(scores[keep], descending=True, stable=True)
        index = torch.nonzero(keep).flatten()[order][: limits.max_detections].tolist()
        box_rows, score_rows, label_rows = boxes.tolist(), scores.tolist(), labels.tolist()
        point_rows = None if points is None else points.tolist()
        point_score_rows = None if point_scores is None else point_scores.tolist()
        found = []
        for i in index:
            keypoints = None
            if point_rows is not None:
                keypoints = tuple(
                    Keypoint(self._point_name(j), p[0], p[1], point_score_rows[i][j] if point_score_rows else p[2])
                    for j, p in enumerate(point_rows[i])
                )
            category = int(label_rows[i])
            xmin, ymin, xmax, ymax = box_rows[i]
            found.append(Detection(category, self._label(category), score_rows[i], (xmin, ymin, xmax, ymax), keypoints))
        return found

    def _label(self, index: int) -> str | None:
        return self.labels[index] if self.labels and 0 <= index < len(self.labels) else None

    def _point_name(self, index: int) -> str:
        return self.keypoint_names[index] if index < len(self.keypoint_names) else f"point{index}"

    # -- tiles ----------------------------------------------------------------------------------

    def _detect_tiled(
        self, pixels: torch.Tensor, limits: Limits, tile: int, on_tile: Callable[[int, int], None] | None
    ) -> list[Detection] | NonFiniteOutput:
        """The whole image and its overlapping tiles, merged (see the module's docstring)."""
        import torch
        from torchvision.ops import batched_nms

        height, width = int(pixels.shape[1]), int(pixels.shape[2])
        overlap = tile // 4
        ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
        views = [(0, 0, height, width)] + [(y, x, min(tile, height), min(tile, width)) for y in ys for x in xs]
        # Every box above the smallest wanted score takes part in the merge; the limits apply after it.
        wide = Limits(limits.min_score, MAX_DETECTIONS, limits.classes)
        parts: list[dict[str, torch.Tensor]] = []
        for done, (top, left, tile_h, tile_w) in enumerate(views, start=1):
            raw = self._raw([pixels[:, top : top + tile_h, left : left + tile_w]], wide)[0]
            if not _finite(raw):
                return self._detections(raw, limits)  # the NonFiniteOutput
            if done > 1:
                raw = _inside_tile(raw, top, left, tile_h, tile_w, height, width)
            parts.append(raw)
            if on_tile is not None:
                on_tile(done, len(views))
        merged = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        kept = batched_nms(merged["boxes"], merged["scores"], merged["labels"], MERGE_IOU)
        return self._detections({key: value[kept] for key, value in merged.items()}, limits)


def _finite(raw: Mapping[str, torch.Tensor]) -> bool:
    """Whether every box, score and keypoint the model gave is a finite number (JSON has no NaN)."""
    import torch

    return all(bool(torch.isfinite(value).all()) for value in raw.values() if value.is_floating_point())


def _as_decoded(image: torch.Tensor) -> torch.Tensor:
    """``image`` [3, H, W] with the strides of a decoded image's pixels (height, width, channels in memory)."""
    return image.permute(1, 2, 0).contiguous().permute(2, 0, 1)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` over ``length`` pixels: evenly spread, the last ending at the edge.

    Neighbours overlap by at least ``overlap`` pixels; any start will do (no stride grid to keep to).
    """
    from ._tiles import tile_starts as spread

    return spread(length, tile, overlap, multiple=1)


def _inside_tile(
    raw: dict[str, torch.Tensor], top: int, left: int, tile_h: int, tile_w: int, height: int, width: int
) -> dict[str, torch.Tensor]:
    """A tile's boxes in the image's pixels, without those cut by one of its inner edges."""
    boxes = raw["boxes"]
    keep = boxes.new_ones(len(boxes), dtype=bool)  # type: ignore[call-overload]
    if left > 0:
        keep &= boxes[:, 0] > EDGE_MARGIN
    if top > 0:
        keep &= boxes[:, 1] > EDGE_MARGIN
    if left + tile_w < width:
        keep &= boxes[:, 2] < tile_w - EDGE_MARGIN
    if top + tile_h < height:
        keep &= boxes[:, 3] < tile_h - EDGE_MARGIN
    shifted = {key: value[keep] for key, value in raw.items()}
    offset = boxes.new_tensor([left, top, left, top])
    shifted["boxes"] = shifted["boxes"] + offset
    if "keypoints" in shifted:
        points = shifted["keypoints"].clone()
        points[..., 0] += left
        points[..., 1] += top
        shifted["keypoints"] = points
    return shifted


def class_ids(names: Iterable[str], known: Mapping[str, int], ref: str) -> frozenset[int]:
    """The ids of class ``names`` (any case) among ``known``; UsageError listing them for an unknown one."""
    wanted = [name.strip() for name in names if name.strip()]
    if not wanted:
        raise UsageError("--classes names no class; give names such as person,dog")
    unknown = [name for name in wanted if name.lower() not in known]
    if unknown:
        listed = ", ".join(sorted(known))
        raise UsageError(f"{ref} has no class {', '.join(map(repr, unknown))}; its classes are: {listed}")
    return frozenset(known[name.lower()] for name in wanted)


def build_detector(
    entry: Entry,
    *,
    weights_file: Path | str | None = None,
    weights_label: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    progress: bool = True,
) -> Detector:
    """A ready detector for a catalog entry (or one made in code), with its weights or ``weights_file``."""
    from ..cache.catalog import load_labels
    from ..nets import architectures
    from ..nets.device import check_device_spec, choose_device, choose_precision

    check_device_spec(device)
    check_entry(entry)
    labels = load_labels(entry)
    architectures.factory(entry)  # a catalog mistake fails before any download
    state_dict = architectures.load_weights(entry, weights_file, progress=progress)
    torch_device = choose_device(device)
    chosen = choose_precision(precision, torch_device)
    model = architectures.build(entry, state_dict).to(torch_device)
    if labels is not None and entry.num_classes and len(labels) != entry.num_classes:
        raise ConfigError(
            f"{entry.ref}: the model has {entry.num_classes} classes but its labels list {len(labels)}; "
            "fix `labels` or `num_classes` in the catalog entry"
        )
    label = weights_label or (str(weights_file) if weights_file is not None else entry.weights)
    return Detector(entry, model, weights_label=label, labels=labels, device=torch_device, precision=chosen)


def check_entry(entry: Entry) -> None:
    if entry.task != "detect":
        raise ConfigError(f"{entry.ref} is a model for `ptm {entry.task}`, not for detection")
