"""Opening images safely: one module owns every decision about which bytes become pixels.

:func:`load_image` opens a path, ``bytes`` or binary file object, accepts only
the formats in :data:`ALLOWED_FORMATS`, refuses decompression bombs before any
pixel is decoded, decodes fully so that corrupt or truncated files fail here,
applies the EXIF orientation, keeps only the first frame of animations and
converts every Pillow mode to 8-bit RGB (:func:`to_rgb`). Every failure is one
of the :mod:`ptm_cli.errors` classes with a one-sentence message naming the
input; Pillow's own exceptions and warnings never reach the user.

Decisions callers may rely on:

* The pixel limit is ``max_pixels`` if given, else ``$PTM_MAX_PIXELS``, else
  :data:`DEFAULT_MAX_PIXELS` (twice Pillow's default ``MAX_IMAGE_PIXELS``, the
  size at which Pillow itself refuses to open an image). It is checked
  against the size in the file header, before decoding.
* Transparent pixels are composited onto white.
* 16-bit grayscale (``I;16*``) and 32-bit integer (``I``) images are read as
  0..65535 and scaled to 0..255 by ``round(v / 257)`` (values outside the
  range are clipped first); ``F`` images whose finite values are all <= 1.0
  are read as 0..1 and multiplied by 255, otherwise as 0..255; both are then
  rounded and clipped to 0..255, and NaN becomes 0.

numpy is imported only by the conversions that need it; torch never.
"""

from __future__ import annotations

import importlib
import io
import math
import os
import struct
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import IO

from PIL import Image

from . import jpegdata, settings
from .errors import ConfigError, ImageTooLarge, InputNotFound, UnreadableImage, UnsupportedFormat, first_line

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ImageSource",
    "load_image",
    "load_image_with_format",
    "read_limited",
    "to_rgb",
]

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes]
"""What :func:`load_image` reads: a path, the encoded bytes, or a binary file."""

# --- formats ---------------------------------------------------------------

ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM"})
"""Pillow format names ptm opens (``Image.format`` of what it returns).

MPO is what Pillow calls the multi-picture JPEGs many phones write.  TGA is
left out because it has no magic number, so Pillow would try to parse any
unrecognised bytes as TGA; ICO because Pillow decodes it while merely opening.
"""

# The order Pillow tries plugins in; MPO is reached through the JPEG plugin.
_OPEN_ORDER = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
_PLUGIN_MODULES = (
    "JpegImagePlugin",
    "MpoImagePlugin",
    "PngImagePlugin",
    "WebPImagePlugin",
    "GifImagePlugin",
    "BmpImagePlugin",
    "TiffImagePlugin",
    "PpmImagePlugin",
)
_ACCEPTED = ", ".join(sorted(ALLOWED_FORMATS))

# How many leading bytes name a format; DICOM puts its magic at offset 128.
_SNIFF_BYTES = 1024


_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})


def _is_heif(head: bytes) -> bool:
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def _is_svg(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in text)


# Formats users plausibly feed ptm by mistake, named so the error can say
# "this is a PDF" instead of "this is garbage".
_UNSUPPORTED_SIGNATURES: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("PDF", lambda h: h.startswith(b"%PDF")),
    ("PostScript/EPS", lambda h: h.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6"))),
    ("Photoshop (PSD)", lambda h: h.startswith(b"8BPS")),
    ("ICNS", lambda h: h.startswith(b"icns")),
    ("ICO/CUR", lambda h: h.startswith((b"\x00\x00\x01\x00", b"\x00\x00\x02\x00"))),
    ("HEIC/HEIF", _is_heif),
    ("AVIF", lambda h: h[4:8] == b"ftyp" and h[8:12] in {b"avif", b"avis"}),
    ("JPEG 2000", lambda h: h.startswith((b"\x00\x00\x00\x0cjP  ", b"\xffO\xffQ"))),
    ("JPEG XL", lambda h: h.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL "))),
    ("QOI", lambda h: h.startswith(b"qoif")),
    ("DDS", lambda h: h.startswith(b"DDS ")),
    ("GIMP XCF", lambda h: h.startswith(b"gimp xcf")),
    ("FITS", lambda h: h.startswith(b"SIMPLE  =")),
    ("DICOM", lambda h: h[128:132] == b"DICM"),
    ("SVG", _is_svg),
)

_ALLOWED_SIGNATURES: tuple[tuple[str, tuple[bytes, ...]], ...] = (
    ("JPEG", (b"\xff\xd8\xff",)),
    ("PNG", (b"\x89PNG\r\n\x1a\n",)),
    ("GIF", (b"GIF87a", b"GIF89a")),
    ("BMP", (b"BM",)),
    ("TIFF", (b"II*\x00", b"MM\x00*")),
    ("PPM", (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"Pf", b"PF")),
)


def _sniff(head: bytes) -> tuple[str | None, str | None]:
    """Name the format the leading bytes announce: (allowed, unsupported)."""
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP", None
    for label, prefixes in _ALLOWED_SIGNATURES:
        if head.startswith(prefixes):
            return label, None
    for label, matches in _UNSUPPORTED_SIGNATURES:
        if matches(head):
            return None, label
    return None, None


@cache
def _open_formats() -> tuple[str, ...]:
    """The allowed formats this Pillow build has a decoder for, in try order."""
    for module in _PLUGIN_MODULES:
        try:
            importlib.import_module(f"PIL.{module}")
        except ImportError:  # e.g. Pillow built without libwebp
            continue
    return tuple(fmt for fmt in _OPEN_ORDER if fmt in Image.OPEN)


# --- limits ------------------------------------------------------------------

MAX_PIXELS_ENV = "PTM_MAX_PIXELS"
DEFAULT_MAX_PIXELS = settings.DEFAULT_MAX_PIXELS


def _resolve_max_pixels(max_pixels: int | None) -> int:
    if max_pixels is not None:
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            raise ConfigError(f"max_pixels must be a positive whole number, got {max_pixels!r}.")
        return max_pixels
    return settings.max_pixels()


def _check_pixel_count(size: tuple[int, int], limit: int, name: str) -> None:
    width, height = size
    if width * height > limit:
        raise ImageTooLarge(
            f"{name} is {width}x{height} ({width * height:,} pixels), over the limit of "
            f"{limit:,} pixels; set {MAX_PIXELS_ENV} to a larger number if you trust this file."
        )


# --- Pillow's process-wide settings -------------------------------------------

# Pillow's bomb limit and Python's warning filters are process globals; this
# lock keeps ptm's own threads from saving and restoring them out of order.
# It is held only while parsing headers and EXIF, or while decoding an image
# larger than Pillow's own limit, so ordinary decodes still run in parallel.
# While it is held, Pillow's limit is only ever more lenient than the
# caller's, and warnings from other threads are briefly silenced too.
_PILLOW_GLOBALS = threading.Lock()


@contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Hold the lock and silence warnings while Pillow parses or decodes.

    Pillow's warnings (bomb, corrupt EXIF, malformed MPO...) would only repeat
    what our own errors say, or describe damage we already tolerate.
    """
    with _PILLOW_GLOBALS, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextmanager
def _pillow_bomb_limit(limit: int | None) -> Iterator[None]:
    """Replace Pillow's ``MAX_IMAGE_PIXELS``; use only inside :func:`_quiet_pillow`.

    Our header check decides what is too large, so Pillow's limit is switched
    off (``None``) while the header is read, and raised to ours while an image
    we accepted is decoded.
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _exceeds_pillow_limit(size: tuple[int, int]) -> bool:
    # Read under the lock: another thread may have switched the limit off.
    with _PILLOW_GLOBALS:
        limit = Image.MAX_IMAGE_PIXELS
    return limit is not None and size[0] * size[1] > limit


# What Pillow raises on junk input, beyond its documented OSError.
_PILLOW_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    struct.error,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    AttributeError,
    ZeroDivisionError,
    OverflowError,
    MemoryError,
    RuntimeError,  # includes RecursionError and NotImplementedError
)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "not enough memory"
    return first_line(exc, 120)


# --- sources -------------------------------------------------------------------


def _source_name(source: object, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return path if isinstance(path, str) else path.decode(errors="replace")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    file_name = getattr(source, "name", None)
    return file_name if isinstance(file_name, str) else "<stream>"


def _open_path(path: str | os.PathLike, name: str) -> IO[bytes]:
    try:
        return open(path, "rb")  # the caller's `with` closes it
    except FileNotFoundError:
        raise InputNotFound(f"{name} does not exist; check the path.") from None
    except IsADirectoryError:
        raise InputNotFound(f"{name} is a directory, not an image file.") from None
    except PermissionError:
        raise InputNotFound(f"{name} cannot be read: permission denied.") from None
    except OSError as exc:
        raise InputNotFound(f"{name} cannot be read ({exc.strerror or _reason(exc)}).") from None


def read_limited(source: IO[bytes], name: str) -> bytes:
    """All of a non-seekable stream, refusing (not buffering) more than ``settings.tuning.max_stream_bytes``."""
    limit = settings.tuning.max_stream_bytes
    data = source.read(limit + 1)
    if not isinstance(data, bytes):
        raise UnreadableImage(f"{name} is a text stream; open it in binary mode ('rb').")
    if len(data) > limit:
        raise ImageTooLarge(f"{name} sends more than {limit >> 20} MiB, more than any image ptm reads.")
    return data


def _seekable_stream(source: IO[bytes], name: str) -> IO[bytes]:
    try:
        if source.seekable():
            return source
        data = read_limited(source, name)
    except (OSError, ValueError, AttributeError) as exc:
        raise InputNotFound(f"{name} cannot be read ({_reason(exc)}).") from None
    return io.BytesIO(data)


@contextmanager
def _open_source(source: ImageSource, name: str) -> Iterator[IO[bytes]]:
    """Yield a seekable binary stream over `source`; close it only if we opened it."""
    if isinstance(source, (str, os.PathLike)):
        with _open_path(source, name) as stream:
            # A pipe named as a path (`ptm classify <(curl ...)`) cannot seek.
            yield _seekable_stream(stream, name)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(bytes(source))
    elif isinstance(source, io.TextIOBase):
        raise UnreadableImage(f"{name} is a text stream; open it in binary mode ('rb').")
    elif hasattr(source, "read"):
        yield _seekable_stream(source, name)
    else:
        raise TypeError(f"cannot load an image from {type(source).__name__}")


# --- loading ---------------------------------------------------------------------


def load_image(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    min_short_side: int | None = None,
) -> Image.Image:
    """Decode `source` into a fully loaded 8-bit RGB image.

    `name` is what error messages call the input (default: the path, the
    file object's ``name``, or ``<bytes>``); pass ``"-"`` for stdin.
    `max_pixels` overrides ``$PTM_MAX_PIXELS`` and :data:`DEFAULT_MAX_PIXELS`.
    `min_short_side` lets a large JPEG be decoded at 1/2, 1/4 or 1/8 scale
    (in the DCT domain, several times faster) as long as its shorter side
    stays at least that many pixels; other formats are decoded in full.

    Raises InputNotFound, UnreadableImage, UnsupportedFormat, ImageTooLarge,
    or ConfigError for a malformed ``$PTM_MAX_PIXELS``.
    """
    return load_image_with_format(source, name=name, max_pixels=max_pixels, min_short_side=min_short_side)[0]


def load_image_with_format(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    min_short_side: int | None = None,
) -> tuple[Image.Image, str]:
    """Like :func:`load_image`, also returning the detected format ("PNG", "MPO"...).

    The format comes from the bytes, never from the file name.
    """
    label = _source_name(source, name)
    limit = _resolve_max_pixels(max_pixels)
    with _open_source(source, label) as stream:
        image = _identify(stream, label)
        fmt = str(image.format)
        _check_pixel_count(image.size, limit, label)
        if min_short_side is not None:
            _reduce_jpeg_scale(image, min_short_side)
        _decode(image, limit, label)
        oriented = _apply_exif_orientation(image)
        return _convert_loaded(oriented, label), fmt


def _reduce_jpeg_scale(image: Image.Image, min_short_side: int) -> None:
    """Ask the JPEG decoder for the smallest DCT scale that keeps ``min_short_side``."""
    if image.format not in ("JPEG", "MPO") or min_short_side < 1:
        return
    width, height = image.size
    scale = min_short_side / min(width, height)
    if scale > 0.5:  # no reduction possible without going under the minimum
        return
    with _quiet_pillow():
        image.draft(image.mode, (math.ceil(width * scale), math.ceil(height * scale)))


def _identify(stream: IO[bytes], name: str) -> Image.Image:
    """Parse the header with one of the allowed plugins; no pixels are decoded."""
    try:
        stream.seek(0)
        head = stream.read(_SNIFF_BYTES)
        stream.seek(0)
    except OSError as exc:
        raise InputNotFound(f"{name} cannot be read ({_reason(exc)}).") from None
    if not isinstance(head, bytes):
        raise UnreadableImage(f"{name} is a text stream; open it in binary mode ('rb').")
    if not head:
        raise UnreadableImage(f"{name} is empty (0 bytes).")
    try:
        with _quiet_pillow(), _pillow_bomb_limit(None):
            image = Image.open(stream, formats=_open_formats())
    except _PILLOW_ERRORS as exc:
        raise _unidentified(head, name) from exc
    if image.format not in ALLOWED_FORMATS:
        raise UnsupportedFormat(f"{name} is a {image.format} image, which ptm does not open; it opens {_ACCEPTED}.")
    return image


def _unidentified(head: bytes, name: str) -> UnreadableImage | UnsupportedFormat:
    allowed, unsupported = _sniff(head)
    if unsupported is not None:
        return UnsupportedFormat(
            f"{name} is a {unsupported} file, which ptm does not open; convert it to one of {_ACCEPTED}."
        )
    if allowed is not None:
        return UnreadableImage(f"{name} starts like a {allowed} file but is corrupt or truncated.")
    return UnreadableImage(
        f"{name} is not an image ptm can read (unknown, corrupt or truncated data); ptm opens {_ACCEPTED}."
    )


def _decode(image: Image.Image, limit: int, name: str) -> None:
    """Decode every pixel now, so corrupt data fails here rather than mid-model."""
    source = getattr(image, "fp", None) if image.format in ("JPEG", "MPO") else None  # dropped once loaded
    try:
        if _exceeds_pillow_limit(image.size):
            with _quiet_pillow(), _pillow_bomb_limit(limit):
                image.load()
        elif image.format == "TIFF":
            # TIFF reads its EXIF block while decoding and warns about damage we
            # tolerate; other formats decode outside the lock, in parallel.
            with _quiet_pillow():
                image.load()
        else:
            image.load()
    except Image.DecompressionBombError:
        raise ImageTooLarge(
            f"{name} decodes to more than {limit:,} pixels; set {MAX_PIXELS_ENV} "
            "to a larger number if you trust this file."
        ) from None
    except _PILLOW_ERRORS as exc:
        raise UnreadableImage(
            f"{name} could not be decoded ({_reason(exc)}); the file is probably corrupt or truncated."
        ) from exc
    if source is not None and jpegdata.looks_zero_filled(image) and _jpeg_data_ends_early(source, limit):
        raise UnreadableImage(
            f"{name} could not be decoded (its image data ends before the last rows, which the decoder would "
            "fill with grey); the file is probably truncated."
        )


def _jpeg_data_ends_early(source: IO[bytes], limit: int) -> bool:
    """See :mod:`ptm_cli.jpegdata`; any failure of the check itself leaves the image as decoded."""
    try:
        source.seek(0)
        data = source.read()
        with _quiet_pillow(), _pillow_bomb_limit(limit):
            return jpegdata.data_ends_early(data)
    except _PILLOW_ERRORS:
        return False


_ORIENTATION_TAG = 0x0112
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8), or 1 when EXIF is absent or malformed."""
    try:
        with _quiet_pillow():
            value = image.getexif().get(_ORIENTATION_TAG, 1)
    except _PILLOW_ERRORS:
        return 1
    # Broken files store strings, tuples or out-of-range numbers here.
    return value if isinstance(value, int) and value in _ORIENTATION_TRANSPOSE else 1


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    method = _ORIENTATION_TRANSPOSE.get(_exif_orientation(image))
    return image if method is None else image.transpose(method)


def _convert_loaded(image: Image.Image, name: str) -> Image.Image:
    try:
        return to_rgb(image)
    except _PILLOW_ERRORS as exc:
        raise UnreadableImage(
            f"{name} has pixel mode {image.mode}, which ptm cannot convert to RGB ({_reason(exc)})."
        ) from exc


# --- modes -----------------------------------------------------------------------

_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_INT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_UINT16_MAX = 65535


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; returns `image` itself if already RGB.

    Transparency is composited onto white; 16/32-bit and float grayscale are
    scaled as the module docstring describes; everything else (1, L, P,
    CMYK, YCbCr, LAB, HSV, RGBX...) goes through Pillow's ``convert``.
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
