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
class InstanceMask:
    """One object's mask (instance models): COCO RLE over the whole image, its pixel count, and its soft edges.

    ``soft`` (kept only when asked for: cut-outs) is the mask probability,
    0..255, in the window at (``left``, ``top``) where the model pasted it.
    """

    rle: dict[str, Any]
    area: int
    left: int = 0
    top: int = 0
    soft: Any = None  # numpy uint8 [h, w], or None


@dataclass(frozen=True)
class Detection:
    """One object: its class, score and box (xmin, ymin, xmax, ymax) in the input's pixels."""

    category_id: int
    label: str | None
    score: float
    box: tuple[float, float, float, float]
    keypoints: tuple[Keypoint, ...] | None = None
    mask: InstanceMask | None = None


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
    soft_masks: frozenset[int] = frozenset()  # instance models: classes whose soft mask is kept (cut-outs)


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

        from ..nets.detection import limited, masks_unpasted

        keep = max(limits.max_detections, WITH_CLASSES_KEEP if limits.classes is not None else 0)
        with self._lock, torch.inference_mode(), masks_unpasted(self.model):
            # Pixels laid out as a decoded image is (channels last, as torchvision's pil_to_tensor gives them):
            # the detector's own resizing takes another path, with other rounding, on a plain [3, H, W] tensor.
            inputs = [_as_decoded(image.to(self.device, non_blocking=True)).float().div(255) for image in images]
            with (
                limited(self.model, min_score=limits.min_score, max_detections=keep),
                torch.autocast(self.device.type, dtype=self.precision.dtype, enabled=self.precision.autocast),
            ):
                outputs = self.model(inputs)
            found = [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()} for o in outputs]
            for raw, image in zip(found, images, strict=True):
                if "mask_probs" in raw:  # where to paste each mask (instance models do not run in tiles)
                    raw["size"] = torch.tensor([int(image.shape[1]), int(image.shape[2])])
            return found

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
            mask = None
            if "mask_probs" in raw:
                height, width = (int(v) for v in raw["size"])
                soft = category in limits.soft_masks
                mask = instance_mask(raw["mask_probs"][i], boxes[i], height, width, soft=soft)
            box = (xmin, ymin, xmax, ymax)
            found.append(Detection(category, self._label(category), score_rows[i], box, keypoints, mask))
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


MASK_THRESHOLD = 0.5
"""A pixel belongs to an object where its pasted mask probability is above this (torchvision's examples' value)."""


def instance_mask(probs: torch.Tensor, box: torch.Tensor, height: int, width: int, *, soft: bool) -> InstanceMask:
    """One object's mask as torchvision pastes it into the image, computed in the object's window only.

    ``probs`` is the mask head's [1, M, M] probabilities for the object and
    ``box`` its box in the image's pixels. The result equals row ``i`` of the
    ``masks`` torchvision's model returns (``paste_masks_in_image``), whose
    full-image float array per object ptm never makes.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

    from ..output.masks import encode_rle

    padded, scale = expand_masks(probs[None], padding=1)
    b = [int(v) for v in expand_boxes(box[None], scale).to(dtype=torch.int64)[0]]
    w, h = max(b[2] - b[0] + 1, 1), max(b[3] - b[1] + 1, 1)
    pasted = F.interpolate(padded[0].expand((1, 1, -1, -1)), size=(h, w), mode="bilinear", align_corners=False)[0][0]
    x0, x1, y0, y1 = max(b[0], 0), min(b[2] + 1, width), max(b[1], 0), min(b[3] + 1, height)
    window = pasted[y0 - b[1] : y1 - b[1], x0 - b[0] : x1 - b[0]] if x1 > x0 and y1 > y0 else pasted[:0, :0]
    inside = (window > MASK_THRESHOLD).numpy()
    rle = encode_rle(inside, x0, y0, height, width)
    kept = window.mul(255).round_().clamp_(0, 255).to(torch.uint8).numpy() if soft else None
    return InstanceMask(rle, int(np.count_nonzero(inside)), x0, y0, kept)


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


def class_ids(names: Iterable[str], known: Mapping[str, int], ref: str, option: str = "--classes") -> frozenset[int]:
    """The ids of class ``names`` (any case) among ``known``; UsageError listing them for an unknown one."""
    wanted = [name.strip() for name in names if name.strip()]
    if not wanted:
        raise UsageError(f"{option} names no class; give names such as person,dog")
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
    task: str = "detect",
) -> Detector:
    """A ready detector for a catalog entry (or one made in code), with its weights or ``weights_file``.

    ``task="segment"`` builds an instance segmentation model (Mask R-CNN): a detector whose objects have masks.
    """
    from ..cache.catalog import load_labels
    from ..nets import architectures
    from ..nets.device import check_device_spec, choose_device, choose_precision

    check_device_spec(device)
    check_entry(entry, task)
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


def check_entry(entry: Entry, task: str = "detect") -> None:
    if entry.task != task:
        raise ConfigError(f"{entry.ref} is a model for `ptm {entry.task}`, not for `ptm {task}`")
