"""Opening images safely: one module owns every decision about which bytes become pixels.

:func:`load_image` opens a path, ``bytes`` or binary file object, accepts only
the formats :mod:`ptm_cli.images.formats` allows (recognised from the bytes, never
the name), refuses decompression bombs before any pixel is decoded, decodes
fully so that corrupt or truncated files fail here, applies the EXIF
orientation, keeps only the first frame of animations (the primary image of
a HEIF file), develops camera RAW files with LibRaw when the ``raw`` extra is
installed (and never opens their embedded preview instead), and converts
every Pillow mode and colour profile to 8-bit sRGB (:mod:`ptm_cli.images.colour`).
Every failure is one of the :mod:`ptm_cli.errors` classes with a
one-sentence message naming the input; Pillow's own exceptions and warnings
never reach the user.

Decisions callers may rely on:

* The pixel limit is ``max_pixels`` if given, else ``$PTM_MAX_PIXELS``, else
  :data:`DEFAULT_MAX_PIXELS` (twice Pillow's default ``MAX_IMAGE_PIXELS``, the
  size at which Pillow itself refuses to open an image). It is checked
  against the size in the file header, before decoding; for AVIF and HEIF
  against every image size the container declares, before their decoders
  parse it.
* A file in a format Pillow reads but ptm does not accept is
  ``UnsupportedFormat`` naming the format; only bytes no reader recognises
  are ``UnreadableImage``.
* Transparent pixels are composited onto white.

numpy is imported only by the conversions that need it; torch never.
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from PIL import Image

from .. import settings
from ..errors import ConfigError, ImageTooLarge, InputNotFound, UnreadableImage, UnsupportedFormat, first_line
from . import formats, jpegdata
from .colour import ImageNote, NoteCallback, srgb_pixels, to_rgb
from .formats import ALLOWED_FORMATS

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ImageNote",
    "ImageSource",
    "load_image",
    "load_image_with_format",
    "read_limited",
    "to_rgb",
]

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]
"""What :func:`load_image` reads: a path, the encoded bytes, or a binary file."""

_ACCEPTED = ", ".join(sorted(ALLOWED_FORMATS - {"MPO"}))

# How many leading bytes name a format; DICOM puts its magic at offset 128.
_SNIFF_BYTES = 1024


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


# The largest colour profile a PNG may carry: what a JPEG can (255 APP2 segments of 64 KiB). Pillow
# allows 1 MiB for any compressed PNG chunk, so a printer's 3 MB profile made a good PNG unreadable.
MAX_PNG_PROFILE = 16 << 20


@contextmanager
def _pillow_bomb_limit(limit: int | None) -> Iterator[None]:
    """Replace Pillow's ``MAX_IMAGE_PIXELS``; use only inside :func:`_quiet_pillow`.

    Our header check decides what is too large, so Pillow's limit is switched
    off (``None``) while the header is read, and raised to ours while an image
    we accepted is decoded. A PNG's compressed chunks (colour profile, text)
    may expand to :data:`MAX_PNG_PROFILE` each meanwhile; Pillow's own cap on
    all text together (64 MiB) still holds.
    """
    from PIL import PngImagePlugin

    saved = Image.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_CHUNK
    Image.MAX_IMAGE_PIXELS = limit
    PngImagePlugin.MAX_TEXT_CHUNK = max(saved[1], MAX_PNG_PROFILE)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_CHUNK = saved


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


def _open_path(path: str | os.PathLike[str], name: str) -> IO[bytes]:
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


def image_size(path: str | os.PathLike[str]) -> tuple[int, int] | tuple[None, None]:
    """An image's width and height from its header (nothing decoded); (None, None) when Pillow cannot tell.

    Only a regular file is opened: a path from an index someone else wrote may name a FIFO or a device.
    """
    from PIL import Image

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None, None
        with _quiet_pillow(), Image.open(path) as image:
            width, height = image.size
    except Exception:  # any file at all: a header Pillow cannot read is just an unknown size
        return None, None
    return int(width), int(height)


def read_file(path: str | os.PathLike[str], name: str) -> tuple[bytes, os.stat_result]:
    """A file's bytes and its stat, from one open (so they describe the same file), bounded as stdin is."""
    with _open_path(path, name) as stream:
        info = os.fstat(stream.fileno())
        if not stat.S_ISREG(info.st_mode):
            return read_limited(stream, name), info
        if info.st_size > settings.tuning.max_stream_bytes:
            raise ImageTooLarge(f"{name} is {info.st_size >> 20} MiB, more than any image ptm reads.")
        return stream.read(), info


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
    on_note: NoteCallback | None = None,
    keep_alpha: bool = False,
) -> Image.Image:
    """Decode `source` into a fully loaded 8-bit sRGB image.

    `name` is what error messages call the input (default: the path, the
    file object's ``name``, or ``<bytes>``); pass ``"-"`` for stdin.
    `max_pixels` overrides ``$PTM_MAX_PIXELS`` and :data:`DEFAULT_MAX_PIXELS`.
    `min_short_side` lets a large JPEG be decoded at 1/2, 1/4 or 1/8 scale
    (in the DCT domain, several times faster) as long as its shorter side
    stays at least that many pixels; other formats are decoded in full.
    An embedded colour profile is applied (:func:`ptm_cli.images.colour.to_srgb`);
    one that cannot be used is reported to `on_note` (default: an
    :class:`ImageNote` warning) and the image still loads.

    `keep_alpha` gives an image with transparency as RGBA (its colours made
    sRGB, not flattened); otherwise transparency is composited onto white.

    Raises InputNotFound, UnreadableImage, UnsupportedFormat, ImageTooLarge,
    or ConfigError for a malformed ``$PTM_MAX_PIXELS`` or ``$PTM_EXTRA_FORMATS``.
    """
    return load_image_with_format(
        source, name=name, max_pixels=max_pixels, min_short_side=min_short_side, on_note=on_note, keep_alpha=keep_alpha
    )[0]


def load_image_with_format(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int | None = None,
    min_short_side: int | None = None,
    on_note: NoteCallback | None = None,
    keep_alpha: bool = False,
) -> tuple[Image.Image, str]:
    """Like :func:`load_image`, also returning the detected format ("PNG", "MPO", "DNG"...).

    The format comes from the bytes, never from the file name.
    """
    label = _source_name(source, name)
    limit = _resolve_max_pixels(max_pixels)
    with _open_source(source, label) as stream:
        head = _read_head(stream, label)
        raw_kind = formats.camera_raw(head, stream)
        if raw_kind is not None:
            developed = formats.decode_camera_raw(
                stream, raw_kind, label, lambda size: _check_pixel_count(size, limit, label), on_note
            )
            return developed, raw_kind.split()[-1]
        image = _identify(stream, head, label, limit)
        fmt = str(image.format)
        _check_pixel_count(image.size, limit, label)
        if min_short_side is not None:
            _reduce_jpeg_scale(image, min_short_side)
        _decode(image, limit, label)
        profile = image.info.get("icc_profile")
        oriented = _apply_exif_orientation(image)
        if keep_alpha and has_alpha(oriented):
            return _convert_with_alpha(oriented, profile, label, on_note), fmt
        return _convert_loaded(oriented, profile, label, on_note), fmt


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


def _read_head(stream: IO[bytes], name: str) -> bytes:
    """The leading bytes that name the format; the stream is left at 0."""
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
    return head


def _identify(stream: IO[bytes], head: bytes, name: str, limit: int) -> Image.Image:
    """Parse the header with one of the accepted plugins; no pixels are decoded."""
    plugins = formats.open_order()
    container = formats.container_kind(head)
    if container is not None:
        _check_container(stream, container, name, limit)
        plugins = (container,)
    try:
        with _quiet_pillow(), _pillow_bomb_limit(None):
            image = Image.open(stream, formats=plugins)
    except _PILLOW_ERRORS as exc:
        raise _unidentified(stream, head, name) from exc
    if image.format not in formats.accepted_formats():
        raise UnsupportedFormat(f"{name} is in {image.format} format, which ptm does not open; it opens {_ACCEPTED}.")
    return image


def _check_container(stream: IO[bytes], kind: str, name: str, limit: int) -> None:
    """Before an AVIF/HEIF decoder parses it: a decoder to hand, and no declared image over the limit."""
    if kind == "HEIF" and not formats.enable_heif():
        raise UnsupportedFormat(
            f"{name} is a HEIC/HEIF image; install HEIF support with {formats.HEIF_INSTALL}, "
            f"or convert it to one of {_ACCEPTED}."
        )
    if kind == "AVIF" and not formats.avif_available():
        raise UnsupportedFormat(
            f"{name} is an AVIF image and this Pillow has no AVIF decoder; upgrade Pillow (pip install -U pillow)."
        )
    try:
        declared = formats.declared_sizes(stream)
    except OSError as exc:
        raise InputNotFound(f"{name} cannot be read ({_reason(exc)}).") from None
    for size in declared:
        _check_pixel_count(size, limit, name)


def _unidentified(stream: IO[bytes], head: bytes, name: str) -> UnreadableImage | UnsupportedFormat:
    allowed, unsupported = formats.sniff(head)
    if unsupported is not None:
        return UnsupportedFormat(
            f"{name} is in {unsupported} format, which ptm does not open; convert it to one of {_ACCEPTED}."
        )
    if allowed is not None:
        return UnreadableImage(f"{name} starts like a {allowed} file but is corrupt or truncated.")
    other = _pillow_format(stream)
    if other is not None:
        return UnsupportedFormat(
            f"{name} is in {other} format, which ptm does not open by default; convert it to one of {_ACCEPTED}, "
            f"or allow it with PTM_EXTRA_FORMATS={other}."
        )
    return UnreadableImage(
        f"{name} is not an image ptm can read (unknown, corrupt or truncated data); ptm opens {_ACCEPTED}."
    )


def _pillow_format(stream: IO[bytes]) -> str | None:
    """The name of another Pillow format whose header parses (no pixels are decoded), if any."""
    try:
        stream.seek(0)
        with _quiet_pillow(), _pillow_bomb_limit(None), Image.open(stream, formats=formats.probe_order()) as image:
            return str(image.format)
    except _PILLOW_ERRORS:
        return None


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
    """See :mod:`ptm_cli.images.jpegdata`; any failure of the check itself leaves the image as decoded."""
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


def _convert_with_alpha(
    image: Image.Image, profile: bytes | None, name: str, on_note: NoteCallback | None
) -> Image.Image:
    """An image with transparency as RGBA: its colours converted to sRGB as they are, its alpha kept."""
    from PIL import Image

    try:
        source = image.convert("LA") if image.mode == "La" else image
        rgba = source.convert("RGBA")
    except _PILLOW_ERRORS as exc:
        raise UnreadableImage(
            f"{name} has pixel mode {image.mode}, which ptm cannot convert ({_reason(exc)})."
        ) from exc
    red, green, blue, alpha = rgba.split()
    colours = Image.merge("RGB", (red, green, blue))
    colours = _convert_loaded(colours, profile, name, on_note)
    return Image.merge("RGBA", (*colours.split(), alpha))


def has_alpha(image: Image.Image) -> bool:
    """Whether ``image`` has transparency (an alpha band or a transparent colour)."""
    return image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info


def _convert_loaded(image: Image.Image, profile: bytes | None, name: str, on_note: NoteCallback | None) -> Image.Image:
    try:
        converted = srgb_pixels(image, profile=profile, name=name, on_note=on_note)
    except _PILLOW_ERRORS as exc:
        raise UnreadableImage(
            f"{name} has pixel mode {image.mode}, which ptm cannot convert to RGB ({_reason(exc)})."
        ) from exc
    converted.info.pop("icc_profile", None)  # its pixels are sRGB now (or taken as sRGB)
    return converted
