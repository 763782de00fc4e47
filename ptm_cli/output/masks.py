"""Masks as files and pictures: COCO RLE, palette PNGs of class indices, overlays with a legend, cut-outs.

Decisions callers may rely on:

* A class mask PNG is a palette ("P") image whose pixel values *are* the
  class indices, so any tool reads the classes back with ``numpy.asarray``;
  its palette gives each class the colour it has everywhere else in ptm
  (:func:`ptm_cli.output.drawing.class_colour`), the background black.
* An overlay tints every pixel of a class other than the background with the
  class's colour, at ``opacity``, and lists the classes present, largest
  first, in a legend in the bottom-left corner.
* A cut-out is RGBA: the photo's colours, and an alpha that is the
  probability of the chosen classes (soft edges), multiplied by the photo's
  own alpha when it had one (a transparent pixel stays transparent).
* RLE is COCO's compressed run-length encoding from pycocotools (the
  ``coco`` extra), with ``counts`` as text, as COCO result files hold it.

Pillow, numpy and pycocotools are imported by the functions that use them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

COCO_EXTRA = "pycocotools is needed for instance masks (COCO RLE); install it with: pip install 'ptm[coco]'"


def check_rle_encoder() -> None:
    """UsageError saying how to install pycocotools when it is missing."""
    try:
        import pycocotools.mask  # noqa: F401
    except ImportError:
        raise UsageError(COCO_EXTRA) from None


def encode_rle(window: np.ndarray, left: int, top: int, height: int, width: int) -> dict[str, Any]:
    """COCO compressed RLE of a [height, width] mask that is ``window`` (bool) at (left, top) and empty elsewhere."""
    import numpy as np

    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        raise UsageError(COCO_EXTRA) from None
    full = np.zeros((height, width), dtype=np.uint8, order="F")
    rows, cols = window.shape
    full[top : top + rows, left : left + cols] = window
    rle = coco_mask.encode(full)
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """The [height, width] uint8 (0/1) mask of a COCO RLE."""
    from pycocotools import mask as coco_mask

    counts = rle["counts"]
    encoded = counts.encode("ascii") if isinstance(counts, str) else counts
    with warnings.catch_warnings():
        # pycocotools' decoder asks numpy 2 for a copy in a way it has deprecated; the mask is right either way.
        warnings.simplefilter("ignore", DeprecationWarning)
        mask: np.ndarray = coco_mask.decode({"size": list(rle["size"]), "counts": encoded})
    return mask


Labels = Sequence["str | None"]  # a model's class names by index; None for an index that is no class (background)


def palette(labels: Labels) -> list[int]:
    """A PNG palette (768 values) giving each class index its class colour; the background black."""
    from .drawing import class_colour

    values: list[int] = []
    for label in list(labels)[:256]:
        values.extend(class_colour(label) if label is not None else (0, 0, 0))
    return values + [0] * (768 - len(values))


def class_mask_image(mask: np.ndarray, labels: Labels) -> Image.Image:
    """The palette PNG image of a class mask: pixel values are class indices."""
    from PIL import Image

    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    image.putpalette(palette(labels))
    return image


def binary_mask_image(mask: np.ndarray) -> Image.Image:
    """A one-object mask (0/1) as an 8-bit image: 255 inside, 0 outside."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(mask.astype(np.uint8) * 255)


def overlay(
    image: Image.Image, mask: np.ndarray, labels: Labels, present: Sequence[tuple[int, float]], opacity: float
) -> Image.Image:
    """``image`` (RGB) with each class's pixels tinted in its colour and a legend of ``present`` (index, share)."""
    import numpy as np
    from PIL import Image

    colours = np.asarray(palette(labels), dtype=np.float32).reshape(256, 3)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    classes = np.asarray([label is not None for label in list(labels)[:256]] + [False] * (256 - min(256, len(labels))))
    tinted = classes[mask]
    blend = pixels.copy()
    blend[tinted] = pixels[tinted] * (1 - opacity) + colours[mask[tinted]] * opacity
    out = Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8))
    _legend(out, [(labels[i], share) for i, share in present])
    return out


def _legend(image: Image.Image, entries: list[tuple[str | None, float]]) -> None:
    """Draw ``entries`` (class, share of the pixels) as swatches and names in the bottom-left corner."""
    from PIL import ImageDraw

    from .drawing import _font, _line_box, class_colour, font_size_for

    shown = [(label, share) for label, share in entries if label is not None][:12]
    if not shown:
        return
    size = max(10, font_size_for(image.width, image.height) * 3 // 4)
    font = _font(size)
    line = _line_box(size)[1] + size // 3
    draw = ImageDraw.Draw(image)
    texts = [f"{label} {share * 100:.1f}%" for label, share in shown]
    width = max(int(draw.textlength(text, font=font)) for text in texts) + line + size
    height = line * len(shown) + size // 2
    left, top = size // 2, max(0, image.height - height - size // 2)
    draw.rectangle((left, top, left + width, top + height), fill=(0, 0, 0))
    for n, ((label, _), text) in enumerate(zip(shown, texts, strict=True)):
        y = top + size // 4 + n * line
        swatch = line - size // 3
        draw.rectangle((left + size // 4, y, left + size // 4 + swatch, y + swatch), fill=class_colour(label))
        draw.text((left + size // 4 + swatch + size // 3, y), text, fill=(255, 255, 255), font=font)


def cutout(image: Image.Image, alpha: np.ndarray, box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """RGBA: ``image``'s colours with ``alpha`` (times its own alpha, if any); cropped to ``box`` when given.

    ``alpha`` covers ``box`` (left, top, right, bottom) when one is given, else the whole image.
    """
    import numpy as np
    from PIL import Image

    region = image if box is None else image.crop(box)
    rgba = np.array(region.convert("RGBA"))
    own = rgba[..., 3].astype(np.uint16) if region.mode in ("RGBA", "LA", "PA") else None
    combined = alpha.astype(np.uint16) if own is None else (alpha.astype(np.uint16) * own + 127) // 255
    rgba[..., 3] = combined.astype(np.uint8)
    return Image.fromarray(rgba)


def tint(image: Image.Image, objects: Sequence[tuple[str | None, dict[str, Any]]], opacity: float) -> Image.Image:
    """``image`` with each object's mask (label, COCO RLE) tinted in its class colour; later objects on top."""
    import numpy as np
    from PIL import Image

    from .drawing import class_colour

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for label, rle in reversed(list(objects)):  # the best object (first) ends on top
        inside = decode_rle(rle).astype(bool)
        colour = np.asarray(class_colour(label or "object"), dtype=np.float32)
        pixels[inside] = pixels[inside] * (1 - opacity) + colour * opacity
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
