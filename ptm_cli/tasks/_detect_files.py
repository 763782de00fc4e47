"""What ``ptm detect`` writes besides its records: drawn images, crops and a COCO file.

The rules are translate's: nothing existing is replaced without ``--force``,
every file is written whole or not at all, two inputs never share an output,
and a folder named by a symbolic link is refused (crops land where the user
can see them, not where a link planted in a shared folder points).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import OutputError, UsageError
from .base import RunContext

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ..images.inputs import ImageInput
    from ._detector import Detector

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def crop_name(stem: str, label: str | None, rank: int, extension: str) -> str:
    """``photo.person.1.png``: the input's stem, the class (made safe for a file name) and the rank."""
    safe = _UNSAFE.sub("_", label or "object").strip("_") or "object"
    return f"{stem}.{safe[:64]}.{rank}{extension}"


def check_crops_folder(folder: Path) -> Path:
    """The folder for --crops, made if missing; a symbolic link or a file is refused before any work."""
    return check_output_folder(folder, "--crops")


def check_output_folder(folder: Path, option: str) -> Path:
    """A folder named by ``option`` for output files, made if missing; a symbolic link or a file is refused."""
    if os.path.islink(folder):
        raise UsageError(f"{option} {folder} is a symbolic link; give the real folder, so files land where you can see")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {folder}: cannot make the folder ({exc.strerror or exc})") from None
    return folder


def check_coco_path(path: Path, *, force: bool) -> Path:
    """Refuse a --coco FILE that cannot be written, or that exists (without --force), before any work."""
    from ..output.imagefiles import check_output_file

    return check_output_file(path, "--coco", force=force, suffix=".json")


@dataclass
class CocoFile:
    """A COCO file of a run's detections: ``images`` (ids for the inputs), ``categories`` and ``annotations``.

    ``annotations`` is a list of COCO results (``image_id``, ``category_id``,
    ``bbox`` as [x, y, width, height], ``score``; ``keypoints`` as x, y,
    visibility triples for keypoint models), which pycocotools'
    ``COCO.loadRes`` accepts; the whole file loads as a COCO dataset.
    """

    categories: list[dict[str, Any]]
    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def add(self, record: Mapping[str, Any]) -> None:
        if "error" in record:
            return
        image_id = len(self.images) + 1
        self.images.append(
            {"id": image_id, "file_name": record["input"], "width": record["width"], "height": record["height"]}
        )
        for d in record["detections"]:
            box = d["box"]
            w, h = box["xmax"] - box["xmin"], box["ymax"] - box["ymin"]
            result: dict[str, Any] = {
                "id": len(self.annotations) + 1,
                "image_id": image_id,
                "category_id": d["category_id"],
                "bbox": [box["xmin"], box["ymin"], w, h],
                "area": w * h,
                "iscrowd": 0,
                "score": d["score"],
            }
            if "keypoints" in d:
                result["keypoints"] = [v for k in d["keypoints"] for v in (k["x"], k["y"], 2)]
                result["num_keypoints"] = len(d["keypoints"])
            self.annotations.append(result)

    def data(self) -> bytes:
        doc = {
            "info": {"description": "ptm detect"},
            "images": self.images,
            "categories": self.categories,
            "annotations": self.annotations,
        }
        return (json.dumps(doc, ensure_ascii=False) + "\n").encode("utf-8")


def coco_categories(detector: Detector) -> list[dict[str, Any]]:
    """COCO's category list for the detector's classes (ids as the model reports them)."""
    from ..cache.catalog import is_class

    categories = []
    for i, label in enumerate(detector.labels or []):
        if is_class(label):
            category: dict[str, Any] = {"id": i, "name": label, "supercategory": "object"}
            if detector.keypoint_names:
                from ..output.drawing import skeleton_for

                category["keypoints"] = list(detector.keypoint_names)
                category["skeleton"] = [[a + 1, b + 1] for a, b in skeleton_for(list(detector.keypoint_names))]
            categories.append(category)
    return categories


class SideOutputs:
    """Where a run's drawn images and crops go, and the rules for existing files (as translate's outputs)."""

    def __init__(self, context: RunContext, crops: Path | None, image_format: str | None):
        self.destination = context.destination
        self.videos = context.videos
        self.force = context.force
        self.emit_bytes = context.emit_bytes
        self.crops = crops
        self.crop_format = image_format
        self._written: dict[Path, str] = {}

    @property
    def active(self) -> bool:
        return self.destination is not None or self.crops is not None

    def before_run(self, item: ImageInput) -> None:
        """Refuse an input whose drawn image exists (without --force), before its forward pass."""
        from ._imagejobs import check_writable

        if self.destination is None or item.frame is not None:
            return  # a video's output is checked when its first frame is written
        path = self.destination.path_for(item)
        if path is not None:
            check_writable(item, path, self.force)

    def write(self, item: ImageInput, pixels: torch.Tensor, record: dict[str, Any]) -> None:
        """The drawn image and the crops of one successful input; OutputError when one cannot be written."""
        from PIL import Image

        from ..output.drawing import draw_detections

        image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
        if self.destination is not None:
            drawn = draw_detections(image, record["detections"])
            path = self.destination.path_for(item)
            if item.frame is not None and path is not None and self.videos is not None:
                self.videos.write(item, path, drawn)
            else:
                self._write(path, drawn, self.destination.format_for(path), item.name)
            if path is not None:
                record["drawn"] = str(path)
        if self.crops is not None:
            self._write_crops(image, item, record)

    def _write_crops(self, image: Image.Image, item: ImageInput, record: dict[str, Any]) -> None:
        from ..output.drawing import crop_box
        from ..output.imagefiles import IMAGE_FORMATS

        assert self.crops is not None
        fmt = self.crop_format or "PNG"
        extension = next(ext for ext, name in IMAGE_FORMATS.items() if name == fmt)
        stem = "stdin" if item.name == "-" else Path(item.name).stem or "image"
        if item.frame is not None:
            stem = f"{stem}.{item.frame.index:06d}"  # each frame's crops: clip.000042.person.1.png
        names = []
        for rank, d in enumerate(record["detections"], start=1):
            crop = crop_box(image, d["box"], width=image.width, height=image.height)
            if crop is None:
                continue
            path = self.crops / crop_name(stem, d["label"], rank, extension)
            self._write(path, crop, fmt, item.name)
            names.append(str(path))
        record["crops"] = names

    def _write(self, path: Path | None, image: Image.Image, fmt: str, owner: str) -> None:
        from ..output.imagefiles import encode_image, write_output

        data = encode_image(image, fmt)
        if path is None:
            if self.emit_bytes is None:
                raise UsageError("stdout output needs a byte sink")
            self.emit_bytes(data)
            return
        key = path.resolve()
        if key in self._written:
            raise OutputError(
                f"{path} was already written for {self._written[key]} in this run (same file name in another "
                "folder); use separate runs or folders"
            )
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        write_output(path, data, force=self.force)
        self._written[key] = owner
