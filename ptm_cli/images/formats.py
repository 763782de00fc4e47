"""Which bytes are which image format, and which formats ptm opens.

:mod:`ptm_cli.images.decode` asks this module three questions about a file before
any decoder sees it:

* is it a camera RAW file (:func:`camera_raw`)? Most RAW formats are TIFF
  files whose first image is a small preview; Pillow would open that preview
  and ptm would classify a thumbnail without a word. RAW files are decoded
  by LibRaw when the ``raw`` extra (rawpy) is installed
  (:func:`decode_camera_raw`), and refused otherwise;
* is it an ISO media container (HEIF from phones, AVIF), and how large are
  the images it declares (:func:`container_kind`, :func:`declared_sizes`)?
  HEIF is decoded by the ``heif`` extra (pillow-heif), AVIF by Pillow's own
  plugin;
* which Pillow plugins may try it (:func:`open_order`) and which formats are
  accepted (:func:`accepted_formats`): the default list, plus those named by
  ``$PTM_EXTRA_FORMATS``.

The default list is short on purpose: every decoder is attack surface, and
the formats in it are the ones cameras, phones and the web produce. The
rest of Pillow's readers (TGA, SGI, PCX, XPM...) are one setting away.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from functools import cache
from typing import IO, TYPE_CHECKING

from .. import settings
from ..errors import ConfigError, UnreadableImage, UnsupportedFormat, first_line

if TYPE_CHECKING:
    from PIL import Image

ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF", "HEIF"})
"""Pillow format names ptm opens by default (``Image.format`` of what it returns).

MPO is what Pillow calls the multi-picture JPEGs many phones write. HEIF is
opened only when the ``heif`` extra is installed; AVIF when Pillow has its
AVIF plugin (its wheels do).
"""

# Pillow's try order; MPO is reached through the JPEG plugin.
_DEFAULT_ORDER = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF")
_PLUGIN_MODULES = (
    "JpegImagePlugin",
    "MpoImagePlugin",
    "PngImagePlugin",
    "WebPImagePlugin",
    "GifImagePlugin",
    "BmpImagePlugin",
    "TiffImagePlugin",
    "PpmImagePlugin",
    "AvifImagePlugin",
)

NEVER_OPENED: dict[str, str] = {
    "EPS": "Pillow renders it by running Ghostscript",
    "ICO": "Pillow decodes it while merely opening it, before its size can be checked",
}
"""Pillow formats that even ``PTM_EXTRA_FORMATS=all`` leaves out, and why."""

HEIF_INSTALL = "pip install 'ptm[heif]'"
RAW_INSTALL = "pip install 'ptm[raw]'"
DEFAULT_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF, PPM, AVIF, HEIC"


# --- the formats ptm accepts ---------------------------------------------------------------


@cache
def _pillow_formats() -> frozenset[str]:
    """Every format this Pillow build reads (all plugins imported)."""
    from PIL import Image

    Image.init()
    return frozenset(Image.OPEN)


@cache
def _default_available() -> tuple[str, ...]:
    from PIL import Image

    for module in _PLUGIN_MODULES:
        try:
            importlib.import_module(f"PIL.{module}")
        except ImportError:  # e.g. Pillow built without libwebp, or too old for AVIF
            continue
    return tuple(fmt for fmt in _DEFAULT_ORDER if fmt in Image.OPEN)


def extra_formats() -> tuple[str, ...]:
    """The formats ``$PTM_EXTRA_FORMATS`` adds, checked against this Pillow (ConfigError if unknown)."""
    wanted = settings.extra_formats()
    if not wanted:
        return ()
    readable = _pillow_formats()
    if "ALL" in wanted:
        return tuple(sorted(readable - ALLOWED_FORMATS - set(NEVER_OPENED)))
    for name in sorted(wanted):
        if name in NEVER_OPENED:
            raise ConfigError(f"PTM_EXTRA_FORMATS names {name}, which ptm never opens: {NEVER_OPENED[name]}")
        if name not in readable:
            known = ", ".join(sorted(readable - set(NEVER_OPENED)))
            raise ConfigError(f"PTM_EXTRA_FORMATS names {name}, which this Pillow cannot read; it reads {known}")
    return tuple(sorted(wanted - ALLOWED_FORMATS))


def open_order() -> tuple[str, ...]:
    """The Pillow plugins that may try a file, in order (HEIF only once its plugin is registered)."""
    return _default_available() + extra_formats()


def accepted_formats() -> frozenset[str]:
    return ALLOWED_FORMATS | set(extra_formats())


def probe_order() -> tuple[str, ...]:
    """Pillow's other readers, tried only to name a file ptm refuses (never :data:`NEVER_OPENED`)."""
    return tuple(sorted(_pillow_formats() - set(open_order()) - set(NEVER_OPENED) - {"HEIF"}))


@cache
def enable_heif() -> bool:
    """Register pillow-heif's HEIF plugin with Pillow, once; False when the extra is not installed."""
    try:
        pillow_heif = importlib.import_module("pillow_heif")
    except ImportError:
        return False
    # Only the primary image is ever used: skip parsing thumbnails, depth maps and auxiliary images.
    pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
    return True


def support() -> dict[str, object]:
    """What this installation opens, for ``ptm doctor``: formats, and the optional decoders' versions."""
    from PIL import features

    heif = enable_heif()
    try:
        rawpy = importlib.import_module("rawpy")
        raw: str | None = f"rawpy {rawpy.__version__} (LibRaw {'.'.join(map(str, rawpy.libraw_version))})"
    except ImportError:
        raw = None
    return {
        "formats": sorted(set(open_order()) | ({"HEIF"} if heif else set())),
        "avif": f"libavif {features.version('avif')}" if avif_available() else None,
        "heif": f"pillow-heif {importlib.import_module('pillow_heif').__version__}" if heif else None,
        "raw": raw,
        "colour_profiles": f"LittleCMS {features.version('littlecms2')}" if features.check("littlecms2") else None,
    }


def avif_available() -> bool:
    return "AVIF" in _default_available()


# --- sniffing -------------------------------------------------------------------------------------

_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1", b"mif2"}
)
_AVIF_BRANDS = frozenset({b"avif", b"avis"})


def ftyp_brands(head: bytes) -> frozenset[bytes]:
    """The major and compatible brands of an ISO media file's leading ``ftyp`` box (empty if none)."""
    if head[4:8] != b"ftyp":
        return frozenset()
    size = min(struct.unpack(">I", head[:4])[0], len(head)) if len(head) >= 4 else 0
    brands = {head[8:12]} | {head[at : at + 4] for at in range(16, size - 3, 4)}
    return frozenset(brands)


def container_kind(head: bytes) -> str | None:
    """``"AVIF"`` or ``"HEIF"`` for an ISO media image file, from its brands (never its name)."""
    brands = ftyp_brands(head)
    if brands & _AVIF_BRANDS:
        return "AVIF"
    if brands & _HEIF_BRANDS:
        return "HEIF"
    return None


_BOX_CONTAINERS = {b"meta": 4, b"iprp": 0, b"ipco": 0}  # header bytes to skip inside each (meta is a full box)


_MAX_META_BYTES = 4 << 20  # a phone's meta box is a few kB; item properties never need more
_MAX_TOP_LEVEL_BOXES = 64


def declared_sizes(stream: IO[bytes]) -> list[tuple[int, int]]:
    """Every image size (``ispe`` property) an ISO media file declares, wherever its ``meta`` box is.

    Walks the top-level boxes by their sizes (seeking over ``mdat``, which
    some encoders put first) and reads at most 4 MiB of ``meta``; damaged
    boxes end the walk rather than raise. Leaves the stream at 0.
    """
    try:
        at = 0
        for _ in range(_MAX_TOP_LEVEL_BOXES):
            header = _read_at(stream, at, 16)
            if len(header) < 8:
                break
            size, kind = struct.unpack(">I4s", header[:8])
            if size == 1 and len(header) == 16:
                size = struct.unpack(">Q", header[8:16])[0]
            if kind == b"meta":
                return _ispe_sizes(_read_at(stream, at, min(size or _MAX_META_BYTES, _MAX_META_BYTES)))
            if size < 8:
                break  # 0 means "to the end of the file": nothing follows
            at += size
        return []
    finally:
        stream.seek(0)


def _ispe_sizes(data: bytes) -> list[tuple[int, int]]:
    """The ``ispe`` properties inside ``data`` (boxes starting at 0), by a bounded walk."""
    sizes: list[tuple[int, int]] = []
    stack = [(0, len(data))]
    visited = 0
    while stack and visited < 4096:
        start, end = stack.pop()
        at = start
        while at + 8 <= end and visited < 4096:
            visited += 1
            size, kind = struct.unpack(">I4s", data[at : at + 8])
            header = 8
            if size == 1 and at + 16 <= end:
                size, header = struct.unpack(">Q", data[at + 8 : at + 16])[0], 16
            elif size == 0:
                size = end - at
            if size < header or at + size > end:
                size = end - at  # the rest is cut off or damaged: look inside what there is
            if kind in _BOX_CONTAINERS:
                stack.append((at + header + _BOX_CONTAINERS[kind], at + size))
            elif kind == b"ispe" and at + header + 12 <= end:
                sizes.append(struct.unpack(">II", data[at + header + 4 : at + header + 12]))
            at += size
    return sizes


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
    # A TGA file can start with the same four bytes; an icon directory lists at least one image.
    (
        "ICO/CUR",
        lambda h: h.startswith((b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")) and h[4:6] not in (b"", b"\x00\x00"),
    ),
    ("JPEG 2000", lambda h: h.startswith((b"\x00\x00\x00\x0cjP  ", b"\xffO\xffQ"))),
    ("JPEG XL", lambda h: h.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL "))),
    ("QOI", lambda h: h.startswith(b"qoif")),
    ("DDS", lambda h: h.startswith(b"DDS ")),
    ("GIMP XCF", lambda h: h.startswith(b"gimp xcf")),
    ("FITS", lambda h: h.startswith(b"SIMPLE  =")),
    ("DICOM", lambda h: h[128:132] == b"DICM"),
    ("SVG", _is_svg),
)

_ALLOWED_SIGNATURES: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("JPEG", lambda h: h.startswith(b"\xff\xd8\xff")),
    ("PNG", lambda h: h.startswith(b"\x89PNG\r\n\x1a\n")),
    ("WEBP", lambda h: h.startswith(b"RIFF") and h[8:12] == b"WEBP"),
    ("GIF", lambda h: h.startswith((b"GIF87a", b"GIF89a"))),
    ("BMP", lambda h: h.startswith(b"BM")),
    ("TIFF", lambda h: h.startswith((b"II*\x00", b"MM\x00*"))),
    ("PPM", lambda h: h.startswith((b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"Pf", b"PF"))),
    ("AVIF", lambda h: container_kind(h) == "AVIF"),
    ("HEIF", lambda h: container_kind(h) == "HEIF"),
)


def sniff(head: bytes) -> tuple[str | None, str | None]:
    """Name the format the leading bytes announce: (allowed, unsupported)."""
    for label, matches in _ALLOWED_SIGNATURES:
        if matches(head):
            return label, None
    for label, matches in _UNSUPPORTED_SIGNATURES:
        if matches(head):
            return None, label
    return None, None


# --- camera RAW ----------------------------------------------------------------------------------

# RAW formats that are not TIFF files, by their leading bytes.
_RAW_SIGNATURES: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("Olympus ORF", lambda h: h.startswith((b"IIRO", b"IIRS", b"MMOR"))),
    ("Panasonic RW2", lambda h: h.startswith(b"IIU\x00")),
    ("Fujifilm RAF", lambda h: h.startswith(b"FUJIFILMCCD-RAW")),
    ("Canon CR3", lambda h: b"crx " in ftyp_brands(h)),
    ("Canon CRW", lambda h: h.startswith(b"II\x1a\x00\x00\x00HEAPCCDR")),
    ("Minolta MRW", lambda h: h.startswith(b"\x00MRM")),
    ("Sigma X3F", lambda h: h.startswith(b"FOVb")),
)

# The maker's name (TIFF tag Make) of RAW files built on TIFF, and what the format is called.
_RAW_MAKERS = {
    "NIKON": "Nikon NEF",
    "SONY": "Sony ARW",
    "PENTAX": "Pentax PEF",
    "RICOH": "Pentax PEF",
    "SAMSUNG": "Samsung SRW",
    "CANON": "Canon CR2",
    "HASSELBLAD": "Hasselblad 3FR",
    "KODAK": "Kodak DCR",
    "LEAF": "Leaf MOS",
    "PHASE ONE": "Phase One IIQ",
    "SEIKO EPSON": "Epson ERF",
    "MAMIYA": "Mamiya MEF",
    "LEICA": "Leica RAW",
}

_TAG_NEW_SUBFILE_TYPE, _TAG_COMPRESSION, _TAG_PHOTOMETRIC, _TAG_MAKE = 0x00FE, 0x0103, 0x0106, 0x010F
_TAG_SUB_IFDS, _TAG_DNG_VERSION = 0x014A, 0xC612
_PHOTOMETRIC_RAW = frozenset({32803, 34892})  # CFA (a colour filter mosaic), LinearRaw
_COMPRESSION_RAW = frozenset({32767, 32769, 32770, 34713, 65000, 65535})  # Sony, Nikon, Kodak, Pentax...
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_MAX_IFDS = 16


def _read_at(stream: IO[bytes], offset: int, size: int) -> bytes:
    stream.seek(offset)
    return stream.read(size)


def _tiff_ifd(stream: IO[bytes], offset: int, endian: str) -> dict[int, tuple[int, ...] | bytes]:
    """The entries of one TIFF IFD that RAW detection reads; values longer than 64 bytes are skipped."""
    count_bytes = _read_at(stream, offset, 2)
    if len(count_bytes) < 2:
        return {}
    count = min(struct.unpack(endian + "H", count_bytes)[0], 512)
    table = _read_at(stream, offset + 2, 12 * count)
    entries: dict[int, tuple[int, ...] | bytes] = {}
    for at in range(0, len(table) - 11, 12):
        tag, kind, n = struct.unpack(endian + "HHI", table[at : at + 8])
        size = _TIFF_TYPE_SIZES.get(kind, 0) * n
        if (
            tag
            not in (
                _TAG_NEW_SUBFILE_TYPE,
                _TAG_COMPRESSION,
                _TAG_PHOTOMETRIC,
                _TAG_MAKE,
                _TAG_SUB_IFDS,
                _TAG_DNG_VERSION,
            )
            or not 0 < size <= 64
        ):
            continue
        raw = (
            table[at + 8 : at + 8 + size]
            if size <= 4
            else _read_at(stream, struct.unpack(endian + "I", table[at + 8 : at + 12])[0], size)
        )
        if kind == 2 or kind in (1, 7):
            entries[tag] = raw
        elif kind in (3, 4) and len(raw) == size:
            entries[tag] = struct.unpack(endian + ("H" if kind == 3 else "I") * n, raw)
    return entries


def _holds_raw_data(ifd: dict[int, tuple[int, ...] | bytes]) -> bool:
    photometric, compression = ifd.get(_TAG_PHOTOMETRIC, ()), ifd.get(_TAG_COMPRESSION, ())
    return bool(set(photometric) & _PHOTOMETRIC_RAW) or bool(set(compression) & _COMPRESSION_RAW)


def _raw_in_tiff(head: bytes, stream: IO[bytes]) -> str | None:
    """Name the RAW format of a TIFF file, or None for an ordinary TIFF."""
    endian = "<" if head.startswith(b"II") else ">"
    if endian == "<" and head[8:10] == b"CR":
        return "Canon CR2"
    first = struct.unpack(endian + "I", head[4:8])[0]
    ifd0 = _tiff_ifd(stream, first, endian)
    make = bytes(ifd0.get(_TAG_MAKE, b"")).split(b"\x00")[0].decode("latin-1").strip().upper()
    if _TAG_DNG_VERSION in ifd0:
        return "DNG"
    subfile = ifd0.get(_TAG_NEW_SUBFILE_TYPE, (0,))
    # A first image that is a reduced-size preview means the real one is elsewhere.
    found = isinstance(subfile, tuple) and bool(subfile) and bool(subfile[0] & 1)
    sub_offsets = ifd0.get(_TAG_SUB_IFDS, ())
    ifds = [ifd0] + [_tiff_ifd(stream, offset, endian) for offset in tuple(sub_offsets)[:_MAX_IFDS]]
    found = found or any(_holds_raw_data(ifd) for ifd in ifds)
    if not found:
        return None
    return next((name for maker, name in _RAW_MAKERS.items() if make.startswith(maker)), "camera RAW")


def camera_raw(head: bytes, stream: IO[bytes]) -> str | None:
    """The camera RAW format of the file (``"DNG"``, ``"Nikon NEF"``...), or None if it is not one.

    Reads only the TIFF directories it needs (bounded); leaves the stream at 0.
    """
    try:
        for label, matches in _RAW_SIGNATURES:
            if matches(head):
                return label
        if head.startswith((b"II*\x00", b"MM\x00*")) and len(head) >= 8:
            return _raw_in_tiff(head, stream)
        return None
    except (OSError, struct.error, ValueError):
        return None  # unreadable directories: let the TIFF decoder report the damage
    finally:
        stream.seek(0)


# LibRaw prints what it finds wrong in a file's data on the process's stderr, in its own words and
# without the file's name ("unknown file: Unexpected end of file"). While it reads a file, file
# descriptor 2 is a temporary file: LibRaw's lines become the error's reason or a note naming the
# input, and anything else written there meanwhile (another thread's message) is passed on
# unchanged afterwards. One RAW file at a time.
_LIBRAW_LINE = re.compile(rb"[^\n]*?: (Unexpected end of file|data corrupted at -?\d+)")
_STDERR_CAPTURE = threading.Lock()


@contextlib.contextmanager
def _libraw_says(said: list[str]) -> Iterator[None]:
    """Collect LibRaw's complaints into ``said`` while the block runs (see above)."""
    import tempfile

    with _STDERR_CAPTURE, tempfile.TemporaryFile() as capture:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to capture
            yield
            return
        try:
            os.dup2(capture.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            others = []
            for line in capture.read(1 << 20).splitlines(keepends=True):
                found = _LIBRAW_LINE.fullmatch(line.rstrip(b"\r\n"))
                if found:
                    said.append(found.group(1).decode("ascii"))
                else:
                    others.append(line)
            if others:
                with contextlib.suppress(OSError):
                    os.write(2, b"".join(others))


def decode_camera_raw(
    stream: IO[bytes],
    kind: str,
    name: str,
    check_size: Callable[[tuple[int, int]], None],
    on_note: Callable[[str], None] | None = None,
) -> Image.Image:
    """Develop a RAW file into 8-bit sRGB with LibRaw (the ``raw`` extra), or refuse it.

    The camera's white balance is used and the brightness is left as the
    camera exposed it (no automatic brightening); LibRaw applies the file's
    orientation. ``check_size((width, height))`` runs before any pixel is
    decoded. What LibRaw says of the file's data becomes part of the error,
    or a note (``on_note``) when the picture developed anyway.
    """
    try:
        rawpy = importlib.import_module("rawpy")
    except ImportError:
        raise UnsupportedFormat(
            f"{name} is a camera RAW file ({kind}); ptm does not use the small preview inside it. "
            f"Install RAW support with {RAW_INSTALL}, or convert it to JPEG, PNG or TIFF."
        ) from None
    from PIL import Image

    said: list[str] = []
    try:
        with _libraw_says(said), rawpy.imread(stream) as raw:
            sizes = raw.sizes
            check_size((sizes.width, sizes.height))
            pixels = raw.postprocess(
                use_camera_wb=True,
                no_auto_bright=True,
                output_bps=8,
                gamma=(2.4, 12.92),
                output_color=rawpy.ColorSpace.sRGB,
            )
    except rawpy.LibRawError as exc:
        detail = exc.args[0] if exc.args else exc
        reason = detail.decode(errors="replace") if isinstance(detail, bytes) else first_line(exc, 120)
        if said:
            reason = f"{reason}: {said[0].lower()}"
        raise UnreadableImage(
            f"{name} is a camera RAW file ({kind}) that LibRaw could not decode ({reason}); "
            "it is probably corrupt, or too new for the installed rawpy."
        ) from None
    except MemoryError:
        raise UnreadableImage(f"{name} could not be decoded (not enough memory).") from None
    if said:
        from .colour import ImageNote

        message = f"{name}: LibRaw found damaged data ({said[0].lower()}); the picture may be incomplete"
        if on_note is not None:
            on_note(message)
        else:
            import warnings

            warnings.warn(ImageNote(message), stacklevel=3)
    if pixels.ndim == 3 and pixels.shape[2] == 1:  # a monochrome sensor (or a mosaic LibRaw reads as one)
        return Image.fromarray(pixels[:, :, 0]).convert("RGB")
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise UnreadableImage(
            f"{name} is a camera RAW file ({kind}) that LibRaw developed into {pixels.shape} "
            "values instead of an RGB picture; it is probably corrupt."
        )
    return Image.fromarray(pixels)
