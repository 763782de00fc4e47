"""The preprocessing every classifier shares: torchvision's transforms, bit for bit, without torchvision.

:class:`Preprocess` describes ``Resize(n) -> CenterCrop(c) -> ToTensor() ->
Normalize(mean, std)``; :func:`resize_and_crop`, :func:`to_tensor` and
:func:`preprocess` apply it to PIL images with the same float32 operations in
the same order as torchvision, so the tensors are identical.
:func:`fused_resize_crop` gets the same tensor from ptm's C extension,
resizing only what the crop keeps.

torch and numpy are imported only inside the functions that need them.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, ImageOps

from .. import settings
from ..errors import ConfigError, ImageTooLarge
from .colour import to_rgb, to_srgb

if TYPE_CHECKING:
    import torch

__all__ = [
    "INTERPOLATIONS",
    "Preprocess",
    "fused_available",
    "fused_resize_crop",
    "preprocess",
    "resize_and_crop",
    "to_tensor",
    "to_tensor_without_torch",
]

# --- preprocessing -------------------------------------------------------------------

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
"""Interpolation names :class:`Preprocess` accepts, as torchvision maps them to PIL."""


def _float32_is_zero(value: float) -> bool:
    """Whether `value` becomes 0 in float32, which is what torch divides by."""
    return bool(struct.unpack("f", struct.pack("f", value))[0] == 0.0)


@dataclass(frozen=True)
class Preprocess:
    """How to turn a loaded RGB image into a model input tensor.

    ``resize``: target length of the shorter side (None: keep the size);
    ``crop``: side of the centred square crop (None: no crop; larger than the
    image: zero padding, as torchvision does); ``interpolation``: one of
    :data:`INTERPOLATIONS`; ``mean``/``std``: per-channel normalisation on the
    0..1 scale, both or neither (None: no normalisation).  Lists are accepted
    and stored as tuples of floats.
    """

    resize: int | None = None
    crop: int | None = None
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        _check_side("resize", self.resize)
        _check_side("crop", self.crop)
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}.")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("mean and std must be given together, or neither.")
        if self.mean is not None and self.std is not None:
            object.__setattr__(self, "mean", _three_floats("mean", self.mean))
            std = _three_floats("std", self.std)
            if any(_float32_is_zero(s) for s in std):
                raise ConfigError(f"std must not contain zero, got {std}.")
            object.__setattr__(self, "std", std)


def _check_side(field: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{field} must be a positive whole number of pixels or None, got {value!r}.")


def _three_floats(field: str, values: object) -> tuple[float, float, float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 3:
        raise ConfigError(f"{field} must be three numbers (one per RGB channel), got {values!r}.")
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{field} must be three numbers, got {values!r}.") from None
    if not all(math.isfinite(v) and abs(v) < 3.0e38 for v in floats):
        raise ConfigError(f"{field} must be three finite float32 numbers, got {values!r}.")
    return floats[0], floats[1], floats[2]


def resize_and_crop(image: Image.Image, p: Preprocess) -> Image.Image:
    """Resize the shorter side, then centre-crop, exactly as torchvision does on PIL.

    The result is pixel-identical to ``transforms.Resize(p.resize,
    interpolation)`` followed by ``transforms.CenterCrop(p.crop)``.
    """
    resample = INTERPOLATIONS[p.interpolation]
    if p.resize is not None and p.crop is not None:
        width, height = _resized_size(image.width, image.height, p.resize)
        if width * height > _FUSE_PIXELS and p.crop <= min(width, height):
            return _resize_crop_region(image, (width, height), p.crop, resample)
    if p.resize is not None:
        width, height = _resized_size(image.width, image.height, p.resize)
        limit = settings.max_pixels()
        if width * height > limit:  # a thin strip resized without a crop to save it
            raise ImageTooLarge(
                f"resizing this {image.width}x{image.height} image to a short side of {p.resize} would make "
                f"{width}x{height} pixels, more than PTM_MAX_PIXELS ({limit:,})"
            )
        image = _resize_shorter_side(image, p.resize, resample)
    if p.crop is not None:
        image = _center_crop(image, p.crop)
    return image


# A resized image beyond this many pixels is never materialised; only the region
# the crop keeps is resized. Only extreme strips get there (a 40000x1 strip would
# become 2,880,000x72 on its way to 64x64); the region's pixels can differ from a
# full resize by one level where float rounding moves a filter tap.
_FUSE_PIXELS = 16_000_000


def _resize_crop_region(
    image: Image.Image, resized: tuple[int, int], side: int, resample: Image.Resampling
) -> Image.Image:
    """The centre crop of the resized image, computed from the source region it covers.

    Pillow's ``box`` keeps each output pixel's filter centre and support where
    a full resize would put them, so this matches resize-then-crop.
    """
    width, height = resized
    top = round((height - side) / 2.0)
    left = round((width - side) / 2.0)
    sx, sy = image.width / width, image.height / height
    box = (left * sx, top * sy, (left + side) * sx, (top + side) * sy)
    return image.resize((side, side), resample, box=box)


def _resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    # torchvision truncates the long side (int(), not round()).
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def _resize_shorter_side(image: Image.Image, short_side: int, resample: Image.Resampling) -> Image.Image:
    size = _resized_size(image.width, image.height, short_side)
    if size == image.size:
        return image
    return image.resize(size, resample)


def _center_crop(image: Image.Image, side: int) -> Image.Image:
    if side > image.width or side > image.height:
        image = _pad_to_at_least(image, side)
        if image.size == (side, side):
            return image
    # Python's round() (half to even) is what torchvision uses for the offset.
    top = round((image.height - side) / 2.0)
    left = round((image.width - side) / 2.0)
    return image.crop((left, top, left + side, top + side))


def _pad_to_at_least(image: Image.Image, side: int) -> Image.Image:
    """Zero-pad so both sides reach `side`; any odd pixel goes right/bottom."""
    extra_w = max(side - image.width, 0)
    extra_h = max(side - image.height, 0)
    border = (extra_w // 2, extra_h // 2, (extra_w + 1) // 2, (extra_h + 1) // 2)
    bands = len(image.getbands())
    fill: float | tuple[int, ...] = (0,) * bands if bands > 1 else 0
    padded = ImageOps.expand(image, border=border, fill=fill)  # type: ignore[arg-type]
    if image.mode == "P":
        palette = image.getpalette()
        if palette is not None:
            padded.putpalette(palette)
    return padded


def to_tensor(image: Image.Image, p: Preprocess) -> torch.Tensor:
    """A float32 ``[3, H, W]`` tensor of `image` / 255, normalised if `p` says so.

    Bit-identical to torchvision ``ToTensor()`` then ``Normalize(mean, std)``
    for RGB images (same float32 operations in the same order; a fused
    multiply-add was measured no faster and differs in the last bits).
    Other modes are converted with :func:`to_rgb` first.
    """
    import numpy as np
    import torch

    rgb = to_rgb(image)
    pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8))
    out = torch.empty((3, rgb.height, rgb.width), dtype=torch.float32)
    out.copy_(pixels.permute(2, 0, 1))
    out.div_(255)
    if p.mean is not None and p.std is not None:
        mean = torch.tensor(p.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(p.std, dtype=torch.float32).view(3, 1, 1)
        out.sub_(mean).div_(std)
    return out


def to_tensor_without_torch(image: Image.Image, p: Preprocess) -> torch.Tensor:
    """:func:`to_tensor`'s values bit for bit, computed by numpy into height x width x channel memory.

    The result is a ``[3, H, W]`` view of that memory (the channels_last
    layout the models run in). No torch operation runs, so a thread that
    calls this starts no OpenMP team of its own (see ``ptm_cli.tasks.classify``).
    The same correctly rounded float32 division, subtraction and division
    as :func:`to_tensor`, element by element, give the same numbers.
    """
    import numpy as np
    import torch

    pixels = np.asarray(to_rgb(image), dtype=np.uint8)
    out = pixels.astype(np.float32)
    out /= np.float32(255)
    if p.mean is not None and p.std is not None:
        out -= np.asarray(p.mean, dtype=np.float32)
        out /= np.asarray(p.std, dtype=np.float32)
    return torch.from_numpy(out).permute(2, 0, 1)


def preprocess(image: Image.Image, p: Preprocess, *, without_torch: bool = False) -> torch.Tensor:
    """The model input for `image`: :func:`~ptm_cli.images.colour.to_srgb`, :func:`resize_and_crop`, :func:`to_tensor`.

    An image from :func:`ptm_cli.images.decode.load_image` is sRGB already; one
    opened by other means has its colour profile applied here.
    ``without_torch`` runs no torch operation: :func:`fused_resize_crop`
    where it applies, else :func:`to_tensor_without_torch` (the same values).
    """
    image = to_srgb(image)
    if without_torch:
        fused = fused_resize_crop(image, p)
        if fused is not None:
            return fused
    tensor = to_tensor_without_torch if without_torch else to_tensor
    return tensor(resize_and_crop(image, p), p)


# --- the fused path -----------------------------------------------------------------


def fused_resize_crop(image: Image.Image, p: Preprocess) -> torch.Tensor | None:
    """:func:`to_tensor_without_torch` of :func:`resize_and_crop`, bit for bit, computed for the crop only.

    ``ptm_cli.images._resample`` (ptm's C extension) resizes only the source
    pixels the centre crop keeps, with Pillow's own filter weights,
    fixed-point arithmetic and order of passes, and writes the normalised
    float32 values straight into height x width x channel memory: three
    times faster than Pillow's whole-image resize on a 1280x720 photo.
    None where it does not apply (the extension was not built, a Pillow
    without Arrow export, a mode other than RGB, an image not stored in one
    block, nearest-neighbour interpolation, no resize or no crop, a crop
    larger than the resized image, a strip so thin that its resized size
    passes ``_FUSE_PIXELS``); the caller then takes the Pillow path.
    """
    if p.resize is None or p.crop is None or p.interpolation == "nearest" or image.mode != "RGB":
        return None
    width, height = _resized_size(image.width, image.height, p.resize)
    if p.crop > width or p.crop > height or width * height > _FUSE_PIXELS:
        return None  # the last: an extreme strip, whose Pillow path resizes a region (see _resize_crop_region)
    if width * height > settings.max_pixels():
        return None  # Pillow's path refuses it (ImageTooLarge): the same answer whichever path runs
    order = _pillow_pass_order()
    if order is None:
        return None
    return _run_fused(image, p, (width, height), p.crop, order)


def fused_available() -> bool:
    """Whether :func:`fused_resize_crop` can run here: the extension is built and agrees with this Pillow."""
    return _pillow_pass_order() is not None


def _run_fused(
    image: Image.Image,
    p: Preprocess,
    resized: tuple[int, int],
    side: int,
    vertical_first: Callable[[int, int, int, int], bool],
) -> torch.Tensor | None:
    import numpy as np
    import torch

    from ._resample import resize_crop  # type: ignore[import-not-found,unused-ignore]

    width, height = resized
    top, left = round((height - side) / 2.0), round((width - side) / 2.0)  # torchvision's CenterCrop offsets
    try:
        schema, array = image.__arrow_c_array__()
    except ValueError:  # rows in more than one block (a large image): Pillow's path
        return None
    out = np.empty((side, side, 3), dtype=np.float32)
    try:
        resize_crop(
            schema,
            array,
            image.width,
            image.height,
            width,
            height,
            left,
            top,
            side,
            side,
            int(INTERPOLATIONS[p.interpolation]),
            vertical_first(image.width, image.height, width, height),
            out,
            p.mean,
            p.std,
        )
    except ValueError:  # an export the kernel does not read (a future Pillow's), a resize beyond it: Pillow's path
        return None
    return torch.from_numpy(out).permute(2, 0, 1)


def _horizontal_always(width: int, height: int, out_width: int, out_height: int) -> bool:
    return False


def _vertical_when_height_shrinks_most(width: int, height: int, out_width: int, out_height: int) -> bool:
    """Pillow 13's choice: the vertical pass first when the height loses more than twice the pixels the width does."""
    return height - out_height > 0 and height - out_height > (width - out_width) * 2


# (size, resize, crop, interpolation): tall images on either side of Pillow 13's rule (the height
# shrinking by more than twice the width's pixels, exactly twice, and enlarging), on each of which the
# two orders give different pixels, and one for each of the other filters. Tiny, so that finding the
# order costs about a millisecond.
_PROBES = (
    ((12, 31), 7, 7, "bilinear"),
    ((6, 13), 2, 2, "bilinear"),
    ((6, 7), 5, 5, "bilinear"),
    ((6, 7), 7, 7, "bilinear"),
    ((40, 24), 16, 12, "bicubic"),
    ((24, 60), 10, 8, "lanczos"),
    ((30, 20), 9, 9, "hamming"),
    ((20, 30), 7, 5, "box"),
)


@functools.cache
def _pillow_pass_order() -> Callable[[int, int, int, int], bool] | None:
    """The order in which the installed Pillow runs its two passes, found by trying both on small images.

    Releases before 13 always resize horizontally first; 13 starts with the
    vertical pass when the height shrinks much more than the width. The
    fused path follows whichever rule gives Pillow's results on every probe
    (each filter included), and stays off (None) if neither does, the
    extension is missing, or anything in the trial fails.
    """
    try:
        return _find_pass_order()
    except Exception:  # a Pillow or an extension that behaves otherwise: Pillow's own path, always
        return None


def _find_pass_order() -> Callable[[int, int, int, int], bool] | None:
    import hashlib

    try:
        from ._resample import resize_crop  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return None
    if not hasattr(Image.Image, "__arrow_c_array__"):
        return None
    cases = []
    for (width, height), resize, crop, interpolation in _PROBES:
        pixels = hashlib.shake_128(b"ptm probe").digest(width * height * 3)  # noise, the same every time
        image = Image.frombytes("RGB", (width, height), pixels)
        p = Preprocess(resize=resize, crop=crop, interpolation=interpolation, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
        resized = _resize_shorter_side(image, resize, INTERPOLATIONS[interpolation])  # no PTM_MAX_PIXELS here
        cases.append((image, p, to_tensor_without_torch(_center_crop(resized, crop), p)))
    for rule in (_vertical_when_height_shrinks_most, _horizontal_always):
        if all(_fused_equals(image, p, rule, expected) for image, p, expected in cases):
            return rule
    return None


def _fused_equals(
    image: Image.Image, p: Preprocess, rule: Callable[[int, int, int, int], bool], expected: torch.Tensor
) -> bool:
    import torch

    got = _run_fused(image, p, _resized_size(image.width, image.height, p.resize or 0), p.crop or 0, rule)
    return got is not None and torch.equal(got, expected)


def pixels_chw(image: Image.Image) -> torch.Tensor:
    """An 8-bit RGB image as a uint8 tensor [3, H, W], as torchvision's ``pil_to_tensor`` gives it."""
    import numpy as np
    import torch

    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
