"""Detections drawn onto pictures: boxes, labels and keypoint skeletons, in one colour per class.

``ptm detect`` gives records whose boxes and keypoints are in pixels of the
image as the user sees it; :func:`draw_detections` puts them on a copy of
that image so people can check them at a glance, and :func:`crop_box` cuts
one detection out.

Decisions callers may rely on:

* A class keeps its colour everywhere: :func:`class_colour` is derived from a
  stable hash of the name (never Python's salted ``hash``), so the same label
  has the same colour in every run, on every machine, in drawn images and on
  the results page (:func:`hex_colour`).
* Sizes follow the image, not a fixed number of pixels: a label stays
  readable on a 4000x3000 photo and does not cover a 640x480 one
  (:func:`font_size_for`, :func:`line_width_for`).
* Bad numbers never fail a run: a box or point with a NaN or infinite
  coordinate is skipped, anything partly outside the image is clipped to it,
  and a box wholly outside draws nothing.
* The best detections end on top: detections are drawn lowest score first.
* The font is Pillow's own built-in one, so nothing is fetched or looked up on
  the system; without FreeType it falls back to Pillow's small bitmap font.

Pillow is imported only by the functions that draw, so importing this module
costs nothing to commands that never draw.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "COCO_KEYPOINT_EDGES",
    "COCO_KEYPOINT_NAMES",
    "class_colour",
    "crop_box",
    "draw_detections",
    "font_size_for",
    "hex_colour",
    "line_width_for",
    "skeleton_for",
    "text_colour_on",
]

Colour = tuple[int, int, int]

# --- colours ------------------------------------------------------------------------------------------

# Saturation and value stay in these bands: below them colours turn greyish or dark and two classes
# become hard to tell apart on a photo; at full value every hue looks washed out next to the others.
_SATURATION = (0.70, 0.95)
_VALUE = (0.80, 0.98)


@functools.lru_cache(maxsize=1024)
def class_colour(label: str) -> Colour:
    """The RGB colour of class ``label``: the same in every run and on every machine.

    The hue, saturation and value come from a BLAKE2 digest of the UTF-8 name,
    so the colour depends on the name alone (not on the order classes appear
    in, and not on ``PYTHONHASHSEED``); saturation and value are kept high so
    boxes stand out on ordinary photos.
    """
    digest = hashlib.blake2b(label.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    hue = int.from_bytes(digest[0:2], "big") / 65536.0
    saturation = _SATURATION[0] + (_SATURATION[1] - _SATURATION[0]) * digest[2] / 255.0
    value = _VALUE[0] + (_VALUE[1] - _VALUE[0]) * digest[3] / 255.0
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return (round(red * 255), round(green * 255), round(blue * 255))


def hex_colour(label: str) -> str:
    """``#rrggbb`` of :func:`class_colour`, for HTML: a class has one colour on the page and in images."""
    red, green, blue = class_colour(label)
    return f"#{red:02x}{green:02x}{blue:02x}"


def _luminance(colour: Colour) -> float:
    """WCAG relative luminance (0 black .. 1 white) of an sRGB colour."""

    def linear(channel: int) -> float:
        c = channel / 255.0
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    red, green, blue = colour
    return 0.2126 * linear(red) + 0.7152 * linear(green) + 0.0722 * linear(blue)


def text_colour_on(background: Colour) -> Colour:
    """Black or white, whichever has the higher WCAG contrast ratio on ``background``."""
    lum = _luminance(background)
    # (lum + 0.05) / 0.05 against black versus 1.05 / (lum + 0.05) against white.
    return (0, 0, 0) if (lum + 0.05) ** 2 >= 0.05 * 1.05 else (255, 255, 255)


# --- keypoints ----------------------------------------------------------------------------------------

COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
"""The 17 COCO person keypoints, in the order keypoint models give them."""

# The limbs by name, so they can be checked against a body rather than against numbers.
_COCO_LIMBS: tuple[tuple[str, str], ...] = (
    # face: eyes to the nose and to each other, ears to the eyes, and the head onto the shoulders
    ("nose", "left_eye"),
    ("nose", "right_eye"),
    ("left_eye", "right_eye"),
    ("left_eye", "left_ear"),
    ("right_eye", "right_ear"),
    ("left_ear", "left_shoulder"),
    ("right_ear", "right_shoulder"),
    # arms
    ("left_shoulder", "left_elbow"),
    ("left_elbow", "left_wrist"),
    ("right_shoulder", "right_elbow"),
    ("right_elbow", "right_wrist"),
    # torso
    ("left_shoulder", "right_shoulder"),
    ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"),
    ("left_hip", "right_hip"),
    # legs
    ("left_hip", "left_knee"),
    ("left_knee", "left_ankle"),
    ("right_hip", "right_knee"),
    ("right_knee", "right_ankle"),
)

COCO_KEYPOINT_EDGES: tuple[tuple[int, int], ...] = tuple(
    (COCO_KEYPOINT_NAMES.index(a), COCO_KEYPOINT_NAMES.index(b)) for a, b in _COCO_LIMBS
)
"""The COCO person skeleton: pairs of indices into :data:`COCO_KEYPOINT_NAMES`."""


def skeleton_for(names: Sequence[str]) -> list[tuple[int, int]]:
    """The edges to draw between keypoints called ``names``: COCO's skeleton for COCO's 17 points, else none.

    A point set ptm does not know gets dots only: joining points by guess
    would draw limbs that are not there.
    """
    return list(COCO_KEYPOINT_EDGES) if tuple(names) == COCO_KEYPOINT_NAMES else []


# --- sizes --------------------------------------------------------------------------------------------

MIN_FONT_SIZE = 12
MAX_FONT_SIZE = 200
_FONT_FRACTION = 0.022  # of the longer side: 14 px on 640x480, 28 px on 1280x720, 88 px on 4000x3000
_LINE_FRACTION = 0.0025  # of the longer side: 2 px on 640x480, 3 px on 1280x720, 10 px on 4000x3000


def font_size_for(width: int, height: int) -> int:
    """The label font size in pixels for a ``width`` x ``height`` image.

    Proportional to the longer side, so a label takes the same share of the
    picture whatever its resolution: fixed-size text is unreadable once a
    12-megapixel photo is shown to fit a screen. Never below 12 px (smaller is
    unreadable at 100%) nor above 200 px (beyond that a label only hides the
    picture).
    """
    longer = max(int(width), int(height), 0)
    return max(MIN_FONT_SIZE, min(MAX_FONT_SIZE, round(longer * _FONT_FRACTION)))


def line_width_for(width: int, height: int) -> int:
    """The width in pixels of box outlines and skeleton lines: proportional to the image, at least 2."""
    return max(2, round(max(int(width), int(height), 0) * _LINE_FRACTION))


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` px, loaded once per size; its fixed-size bitmap font without FreeType."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):  # Pillow built without FreeType: only the bitmap font exists
        return ImageFont.load_default()


@functools.lru_cache(maxsize=32)
def _line_box(size: int) -> tuple[int, int]:
    """(top offset, height) of a line of text in the font of ``size``, the same for every label.

    One height for all labels keeps the bands even; it is measured on letters
    with ascenders and descenders, so no label's text pokes out of its band.
    """
    from PIL import Image, ImageDraw

    _, top, _, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), "Ag|y", font=_font(size))
    return math.floor(top), max(1, math.ceil(bottom) - math.floor(top))


@functools.lru_cache(maxsize=8192)
def _text_width(size: int, text: str) -> int:
    """Width in pixels of ``text`` in the font of ``size``; labels repeat a lot, so it is measured once."""
    from PIL import Image, ImageDraw

    left, _, right, _ = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=_font(size))
    return max(0, math.ceil(right) - min(0, math.floor(left)))


# --- reading records ----------------------------------------------------------------------------------


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None for anything else (NaN, infinities, None, text)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


# Coordinates are clamped to this magnitude: far outside any image, yet small enough that sums, products
# and rounding of them stay finite and exact enough.
_FAR = 1e12


def _bounded(value: float) -> float:
    return max(-_FAR, min(_FAR, value))


def _box_of(detection: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """(xmin, ymin, xmax, ymax) of a detection's box with the corners in order, or None when unusable."""
    box = detection.get("box")
    if not isinstance(box, Mapping):
        return None
    numbers = [_finite(box.get(key)) for key in ("xmin", "ymin", "xmax", "ymax")]
    if any(n is None for n in numbers):
        return None
    x0, y0, x1, y1 = (_bounded(n) for n in numbers if n is not None)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _label_text(detection: Mapping[str, Any]) -> str:
    """``"person 0.98"``: the label and the score to two decimals (either alone when the other is missing)."""
    label = detection.get("label")
    name = "" if label is None else str(label)
    score = _finite(detection.get("score"))
    parts = [part for part in (name, None if score is None else f"{score:.2f}") if part]
    return " ".join(parts)


def _sort_key(detection: Mapping[str, Any]) -> float:
    score = _finite(detection.get("score"))
    return -math.inf if score is None else score


# --- drawing ------------------------------------------------------------------------------------------


def draw_detections(
    image: Image.Image,
    detections: Sequence[Mapping[str, Any]],
    *,
    min_keypoint_score: float = 0.0,
) -> Image.Image:
    """A new RGB copy of ``image`` with ``detections`` drawn on it; ``image`` itself is left as it was.

    Each detection (a ``ptm detect`` record's entry: ``label``, ``score``,
    ``box`` in pixels of ``image``, optional ``keypoints``) gets its box
    outlined in its class colour, a filled label ``"person 0.98"`` above the
    box (inside its top when there is no room above, always kept inside the
    image) in black or white, whichever reads better, and its keypoints whose
    score is at least ``min_keypoint_score`` as dots joined by the skeleton of
    :func:`skeleton_for`. Lowest scores are drawn first, so the best
    detections are on top. One drawing context and one font serve every
    detection, so thousands draw in well under a second.
    """
    from PIL import ImageDraw

    from ..images.colour import to_rgb

    rgb = to_rgb(image)
    canvas = rgb.copy() if rgb is image else rgb
    width, height = canvas.size
    if width <= 0 or height <= 0 or not detections:
        return canvas
    draw = ImageDraw.Draw(canvas)
    style = _Style(width, height)
    for detection in sorted(detections, key=_sort_key):
        if not isinstance(detection, Mapping):
            continue
        colour = class_colour(str(detection.get("label", "")))
        keypoints = detection.get("keypoints")
        if isinstance(keypoints, Sequence) and not isinstance(keypoints, str) and keypoints:
            _draw_keypoints(draw, style, keypoints, colour, min_keypoint_score)
        box = _box_of(detection)
        if box is not None:
            _draw_box(draw, style, box, colour, _label_text(detection))
    return canvas


class _Style:
    """Sizes for one image, worked out once per call rather than once per detection."""

    def __init__(self, width: int, height: int):
        self.width = width
        self.height = height
        self.line = line_width_for(width, height)
        self.radius = max(2, self.line)
        self.font_size = font_size_for(width, height)
        self.font = _font(self.font_size)
        self.text_top, self.text_height = _line_box(self.font_size)
        self.pad = max(1, self.font_size // 6)


def _draw_box(
    draw: ImageDraw.ImageDraw, style: _Style, box: tuple[float, float, float, float], colour: Colour, text: str
) -> None:
    """The outline of ``box`` (inside its edges) and its label; nothing when the box is wholly outside."""
    xmin, ymin, xmax, ymax = box
    # A box covers pixels floor(xmin) .. ceil(xmax) - 1; a zero-size box still shows as a line.
    left, top = math.floor(xmin), math.floor(ymin)
    right, bottom = max(left, math.ceil(xmax) - 1), max(top, math.ceil(ymax) - 1)
    if right < 0 or bottom < 0 or left >= style.width or top >= style.height:
        return
    left, top = max(0, left), max(0, top)
    right, bottom = min(style.width - 1, right), min(style.height - 1, bottom)
    draw.rectangle((left, top, right, bottom), outline=colour, width=style.line)
    if text:
        _draw_label(draw, style, left, top, colour, text)


def _draw_label(draw: ImageDraw.ImageDraw, style: _Style, left: int, top: int, colour: Colour, text: str) -> None:
    """A band of ``colour`` holding ``text``, above the box at (left, top) when it fits, else inside its top."""
    band_width = _text_width(style.font_size, text) + 2 * style.pad
    band_height = style.text_height + 2 * style.pad
    y = top - band_height if top - band_height >= 0 else top
    y = max(0, min(y, style.height - band_height))
    x = max(0, min(left, style.width - band_width))
    draw.rectangle((x, y, x + band_width - 1, y + band_height - 1), fill=colour)
    draw.text((x + style.pad, y + style.pad - style.text_top), text, fill=text_colour_on(colour), font=style.font)


def _draw_keypoints(
    draw: ImageDraw.ImageDraw,
    style: _Style,
    keypoints: Sequence[Any],
    colour: Colour,
    min_score: float,
) -> None:
    """Skeleton lines between visible points, then the points on top of them."""
    points: list[tuple[float, float] | None] = []
    names: list[str] = []
    for point in keypoints:
        names.append(str(point.get("name", "")) if isinstance(point, Mapping) else "")
        points.append(_visible_point(point, min_score))
    for a, b in skeleton_for(names):
        start, end = points[a], points[b]
        if start is None or end is None:
            continue
        segment = _clip_segment(start, end, style)
        if segment is not None:
            draw.line(segment, fill=colour, width=style.line)
    r = style.radius
    for xy in points:
        if xy is None:
            continue
        x, y = xy
        if -r <= x <= style.width - 1 + r and -r <= y <= style.height - 1 + r:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


def _visible_point(point: Any, min_score: float) -> tuple[float, float] | None:
    """(x, y) of a keypoint worth drawing: finite coordinates and a score (when it has one) >= ``min_score``."""
    if not isinstance(point, Mapping):
        return None
    x, y = _finite(point.get("x")), _finite(point.get("y"))
    if x is None or y is None:
        return None
    if point.get("score") is not None:
        score = _finite(point.get("score"))
        if score is None or score < min_score:
            return None
    return _bounded(x), _bounded(y)


def _clip_segment(
    start: tuple[float, float], end: tuple[float, float], style: _Style
) -> tuple[float, float, float, float] | None:
    """The part of the segment inside the image (widened by a line width), or None when none is.

    Clipping (Liang-Barsky) rather than clamping the ends keeps a limb that
    leaves the picture pointing the right way, and keeps huge coordinates
    away from Pillow's integer maths.
    """
    margin = style.line
    low_x, high_x = -margin, style.width - 1 + margin
    low_y, high_y = -margin, style.height - 1 + margin
    x0, y0 = start
    dx, dy = end[0] - x0, end[1] - y0
    t0, t1 = 0.0, 1.0
    for p, q in ((-dx, x0 - low_x), (dx, high_x - x0), (-dy, y0 - low_y), (dy, high_y - y0)):
        if p == 0:
            if q < 0:
                return None
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return None
    return x0 + t0 * dx, y0 + t0 * dy, x0 + t1 * dx, y0 + t1 * dy


# --- cropping -----------------------------------------------------------------------------------------


def crop_box(image: Image.Image, box: Mapping[str, Any], *, width: int, height: int) -> Image.Image | None:
    """The part of ``image`` inside ``box``, or None when that is empty or the box has a non-finite corner.

    ``box`` is in pixels of a ``width`` x ``height`` image (the record's
    size); when ``image`` has another size (a thumbnail, say) the box is
    scaled to it. The region is rounded outwards to whole pixels, so nothing
    of the object is cut off, and clipped to the image. The crop keeps
    ``image``'s mode.
    """
    corners = _box_of({"box": box})
    if corners is None or width <= 0 or height <= 0:
        return None
    scale_x, scale_y = image.width / width, image.height / height
    xmin, ymin, xmax, ymax = corners
    left = max(0, math.floor(xmin * scale_x))
    top = max(0, math.floor(ymin * scale_y))
    right = min(image.width, math.ceil(xmax * scale_x))
    bottom = min(image.height, math.ceil(ymax * scale_y))
    if right <= left or bottom <= top:
        return None
    return image.crop((left, top, right, bottom))
