"""Pixels to 8-bit sRGB: every Pillow mode (:func:`to_rgb`) and every embedded colour profile (:func:`to_srgb`).

ImageNet models, and the CycleGAN generators, were trained on sRGB pictures.
A photo whose pixels are in another colour space (Display P3 from iPhones,
Adobe RGB from cameras, a linear scan) carries an ICC profile that says so;
fed to a network as if it were sRGB, its colours are off (P3 reds look
duller, linear data far too dark). :func:`to_srgb` converts such pixels to
sRGB with Pillow's ImageCms (LittleCMS), perceptual intent.

Decisions callers may rely on:

* RGB profiles convert RGB, palette and RGBA pixels (transparency is
  composited on white first, in the file's own colour space); grayscale
  profiles convert grayscale pixels. CMYK images are converted by Pillow's
  plain formula, without their profile.
* A profile that cannot be read, or that does not fit the pixels (an RGB
  profile on a grayscale image), is ignored: the pixels are used as sRGB and
  a note says so. A damaged profile is never a failure.
* Notes go to ``on_note(message)`` when given; otherwise they are issued as
  :class:`ImageNote` warnings, the usual way a library reports something a
  program may show or silence.
* 16-bit grayscale (``I;16*``) and 32-bit integer (``I``) images are read as
  0..65535 and scaled to 0..255 by ``round(v / 257)`` (values outside the
  range are clipped first); ``F`` images whose finite values are all <= 1.0
  are read as 0..1 and multiplied by 255, otherwise as 0..255; both are then
  rounded and clipped to 0..255, and NaN becomes 0.

numpy and ImageCms are imported only by the conversions that need them.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable
from functools import cache

from PIL import Image

from ..errors import first_line

__all__ = ["ImageNote", "NoteCallback", "srgb_pixels", "srgb_profile", "to_rgb", "to_srgb"]

NoteCallback = Callable[[str], None]
"""Receives one line for people about an image that loaded anyway (a damaged colour profile...)."""


class ImageNote(UserWarning):
    """Something about an image that did not stop it from loading; see :func:`to_srgb`."""


def _notify(message: str, on_note: NoteCallback | None) -> None:
    if on_note is not None:
        on_note(message)
    else:
        warnings.warn(ImageNote(message), stacklevel=5)


# --- colour profiles --------------------------------------------------------------------------------

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_RGB_MODES = frozenset({"RGB", "RGBA", "RGBa", "RGBX", "P", "PA"})
# Profiles that describe sRGB itself: converting would only add rounding.
_SRGB_NAMES = ("srgb iec61966-2.1", "srgb iec61966-2-1", "srgb built-in", "srgb")


# The ICC header's creation date (bytes 24-35: year, month, day, hour, minute, second as big-endian
# uint16). LittleCMS stamps the current time; a fixed one keeps written images byte for byte the same
# whenever and wherever they are made (a warm server and the command itself must agree).
_PROFILE_DATE = struct.pack(">6H", 2024, 1, 1, 0, 0, 0)


@cache
def srgb_profile() -> bytes:
    """The ICC profile of sRGB (LittleCMS's built-in one, with a fixed date), for embedding in written images."""
    from PIL import ImageCms

    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    data[24:36] = _PROFILE_DATE
    data[84:100] = bytes(16)  # the profile ID is an MD5 that would cover the date: zero means "not computed"
    return bytes(data)


def to_srgb(
    image: Image.Image,
    *,
    profile: bytes | None = None,
    name: str = "the image",
    on_note: NoteCallback | None = None,
) -> Image.Image:
    """``image`` as 8-bit RGB in sRGB: :func:`to_rgb`, then its ICC profile applied.

    ``profile`` defaults to ``image.info["icc_profile"]``. The result carries
    no profile in its ``info`` (its pixels are sRGB). ``name`` is what notes
    call the image.
    """
    converted = srgb_pixels(image, profile=profile, name=name, on_note=on_note)
    if "icc_profile" in converted.info:
        converted = converted.copy() if converted is image else converted
        converted.info.pop("icc_profile", None)
    return converted


def srgb_pixels(
    image: Image.Image, *, profile: bytes | None = None, name: str = "the image", on_note: NoteCallback | None = None
) -> Image.Image:
    """Like :func:`to_srgb`, but may return ``image`` itself with its ``info`` untouched."""
    if profile is None:
        profile = image.info.get("icc_profile")
    rgb = to_rgb(image)
    if profile:
        rgb = _apply_profile(image, rgb, bytes(profile), name, on_note)
    return rgb


def _apply_profile(
    image: Image.Image, rgb: Image.Image, profile: bytes, name: str, on_note: NoteCallback | None
) -> Image.Image:
    from PIL import ImageCms

    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        space = source.profile.xcolor_space.strip()
        description = (source.profile.profile_description or "").strip().lower()
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        _notify(f"{name}: its colour profile is damaged ({_reason(exc)}); its colours are used as sRGB", on_note)
        return rgb
    if space == "RGB" and description in _SRGB_NAMES:
        return rgb  # already sRGB (grey images are sometimes tagged so too)
    if space == "RGB" and image.mode in _RGB_MODES:
        pixels, in_mode = rgb, "RGB"
    elif space == "GRAY" and image.mode in _GRAY_MODES:
        pixels, in_mode = rgb.convert("L"), "L"  # to_rgb made R = G = B: nothing is lost
    elif space == "CMYK" and image.mode == "CMYK":
        return rgb
    else:
        _notify(
            f"{name}: its colour profile is for {space or 'unknown'} colours but its pixels are {image.mode}; "
            "the profile is ignored",
            on_note,
        )
        return rgb
    try:
        transform = ImageCms.buildTransform(
            source,
            ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")),
            in_mode,
            "RGB",
            renderingIntent=ImageCms.Intent.PERCEPTUAL,
        )
        converted = ImageCms.applyTransform(pixels, transform)
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        _notify(f"{name}: its colour profile is damaged ({_reason(exc)}); its colours are used as sRGB", on_note)
        return rgb
    return converted if converted is not None else rgb


def _reason(exc: BaseException) -> str:
    return first_line(exc, 100)


# --- modes --------------------------------------------------------------------------------------------

_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_INT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_UINT16_MAX = 65535


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; returns `image` itself if already RGB.

    Transparency is composited onto white; 16/32-bit and float grayscale are
    scaled as the module docstring describes; everything else (1, L, P,
    CMYK, YCbCr, LAB, HSV, RGBX...) goes through Pillow's ``convert``.
    Colour profiles are not applied: see :func:`to_srgb`.
    """
    mode = image.mode
    if mode in _INT_MODES:
        return _int_to_uint8(image).convert("RGB")
    if mode == "F":
        return _float_to_uint8(image).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _flatten_on_white(image)
    if mode == "RGB":
        return image
    if mode == "LAB":
        return _lab_to_rgb(image)
    return image.convert("RGB")


def _lab_to_rgb(image: Image.Image) -> Image.Image:
    try:
        return image.convert("RGB")
    except ValueError:  # Pillow < 11 converts LAB only through a colour profile
        pass
    from PIL import ImageCms

    transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
    converted = ImageCms.applyTransform(image, transform)
    if converted is None:  # only in-place transforms return None
        raise ValueError("LAB to RGB conversion failed")
    return converted


def _flatten_on_white(image: Image.Image) -> Image.Image:
    # Pillow has no La -> RGBA conversion, but has La -> LA.
    source = image.convert("LA") if image.mode == "La" else image
    rgba = source.convert("RGBA")
    canvas = Image.new("RGB", rgba.size, _WHITE)
    canvas.paste(rgba, (0, 0), rgba)
    return canvas


def _int_to_uint8(image: Image.Image) -> Image.Image:
    import numpy as np

    values = np.clip(np.asarray(image), 0, _UINT16_MAX).astype(np.uint32)
    # (v + 128) // 257 is round(v / 257): 257 is odd, so there are no ties.
    return Image.fromarray(((values + 128) // 257).astype(np.uint8))


def _float_to_uint8(image: Image.Image) -> Image.Image:
    import numpy as np

    values = np.asarray(image, dtype=np.float64)
    finite = values[np.isfinite(values)]
    scale = 255.0 if finite.size == 0 or finite.max() <= 1.0 else 1.0
    scaled = np.nan_to_num(values * scale, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
