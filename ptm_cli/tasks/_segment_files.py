"""What ``ptm segment`` writes besides its records: class masks, overlays, cut-outs, per-object masks, COCO files.

The rules are detect's and translate's: nothing existing is replaced without
``--force`` (checked before the input's forward pass), every file is written
whole or not at all, two inputs never share an output, and a folder named by
a symbolic link is refused.

Names, beside the input or in the chosen folder (``--mask-dir`` for masks,
``--output-dir`` for the rest): ``photo.mask.png`` (class indices),
``photo.overlay.jpg``, ``photo.cutout.png``; for instance models
``photo.person.1.mask.png`` and ``photo.person.1.cutout.png`` per object
(class and rank, as ``ptm detect --crops`` names crops). ``-o FILE`` names the
one image an input gets (its mask, else its overlay or cut-out).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import OutputError, UsageError
from ._detect_files import CocoFile, check_output_folder, crop_name

if TYPE_CHECKING:
    from PIL import Image

    from ..images.inputs import ImageInput


@dataclass(frozen=True)
class Wanted:
    """The image outputs of a call, and where they go."""

    mask: bool = False
    overlay: bool = False
    cutout: bool = False
    output: str | None = None  # -o FILE or '-' (one input, one image)
    output_dir: Path | None = None
    mask_dir: Path | None = None

    @property
    def any(self) -> bool:
        return self.mask or self.overlay or self.cutout

    def kinds(self) -> list[str]:
        return [kind for kind in ("mask", "overlay", "cutout") if getattr(self, kind)]


def wanted(params: Mapping[str, Any]) -> Wanted:
    """The outputs ``params`` ask for; a UsageError for a mix that cannot work."""
    mask_dir = params.get("mask_dir")
    output, output_dir = params.get("output"), params.get("output_dir")
    chosen = Wanted(
        mask=bool(params.get("mask") or mask_dir is not None),
        overlay=bool(params.get("overlay")),
        cutout=params.get("cutout") is not None,
        output=output,
        output_dir=None if output_dir is None else Path(output_dir),
        mask_dir=None if mask_dir is None else Path(mask_dir),
    )
    if output is not None:
        if output_dir is not None or mask_dir is not None:
            raise UsageError("use either -o/--output or --output-dir/--mask-dir, not both")
        if not chosen.any:
            chosen = Wanted(mask=True, output=output)
        elif len(chosen.kinds()) > 1:
            raise UsageError(
                f"-o names one image, but this call writes {' and '.join(chosen.kinds())}; use --output-dir"
            )
    for option, folder in (("--output-dir", chosen.output_dir), ("--mask-dir", chosen.mask_dir)):
        if folder is not None:
            check_output_folder(folder, option)
    return chosen


_DEFAULT_FORMAT = {"mask": "PNG", "overlay": "JPEG", "cutout": "PNG"}
_EXTENSION = {"PNG": ".png", "JPEG": ".jpg"}


class SegmentOutputs:
    """Where one run's images go, and the rules for existing files."""

    def __init__(self, chosen: Wanted, *, force: bool, emit_bytes: Any = None):
        self.chosen = chosen
        self.force = force
        self.emit_bytes = emit_bytes
        self._written: dict[Path, str] = {}

    # -- names

    def path_for(self, item: ImageInput, kind: str, name: str | None = None) -> Path | None:
        """The file of output ``kind`` for ``item`` (``name``: an object's ``label.rank`` part); None: stdout."""
        chosen = self.chosen
        if chosen.output is not None and name is None:
            return None if chosen.output == "-" else Path(chosen.output)
        stem = "stdin" if item.name == "-" else Path(item.name).stem or "image"
        middle = f".{name}" if name is not None else ""
        file_name = f"{stem}{middle}.{kind}{_EXTENSION[_DEFAULT_FORMAT[kind]]}"
        folder = chosen.mask_dir if kind == "mask" and chosen.mask_dir is not None else chosen.output_dir
        if folder is not None:
            return folder / file_name
        if item.path is None:
            raise UsageError("an image read from stdin has no folder to write beside; give -o FILE or --output-dir")
        return item.path.with_name(file_name)

    def format_for(self, path: Path | None, kind: str) -> str:
        if path is None or self.chosen.output is None:
            return _DEFAULT_FORMAT[kind]
        from ..output.imagefiles import image_format_for

        fmt = image_format_for(str(path))
        if kind != "overlay" and fmt not in ("PNG", "WEBP", "TIFF"):
            raise UsageError(f"a {kind} needs a lossless format with transparency; name -o FILE.png")
        return fmt

    def before_run(self, item: ImageInput) -> None:
        """Refuse an input whose whole-image outputs exist (without --force), before its forward pass."""
        from ._imagejobs import check_writable

        for kind in self.chosen.kinds():
            if self.per_object and kind != "overlay":
                continue  # an object's files are named after its class and rank: known once it is found
            path = self.path_for(item, kind)
            if path is not None:
                check_writable(item, path, self.force)

    per_object = False  # instance models name masks and cut-outs per object

    # -- writing

    def write(self, item: ImageInput, kind: str, image: Image.Image, name: str | None = None) -> str | None:
        """Write one output image; its path as records show it (None: stdout)."""
        from ..output.imagefiles import encode_image, write_output

        path = self.path_for(item, kind, name)
        data = encode_image(image, self.format_for(path, kind))
        if path is None:
            if self.emit_bytes is None:
                raise UsageError("stdout output needs a byte sink")
            self.emit_bytes(data)
            return None
        key = path.resolve()
        if key in self._written:
            raise OutputError(
                f"{path} was already written for {self._written[key]} in this run (same file name in another "
                "folder); use separate runs or folders"
            )
        write_output(path, data, force=self.force)
        self._written[key] = item.name
        return str(path)


def object_name(label: str | None, rank: int) -> str:
    """``person.1``: an object's part of its files' names (the class made safe for a file name, and its rank)."""
    return crop_name("", label, rank, "").strip(".")


class SegmentCocoFile(CocoFile):
    """A COCO file of instance segmentation results: detect's, with each object's ``segmentation`` (RLE) and area."""

    def add(self, record: Mapping[str, Any]) -> None:
        if "error" in record:
            return
        first = len(self.annotations)
        super().add(record)
        for annotation, d in zip(self.annotations[first:], record["detections"], strict=True):
            annotation["segmentation"] = d["mask"]
            annotation["area"] = d["area"]
