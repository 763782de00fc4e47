"""Image loading and preprocessing: safe decoding, mode conversion and torchvision-exact preprocessing.

Every image is built here with Pillow (or by hand, byte by byte); nothing is
downloaded or read from outside the test's temporary folder.
"""

from __future__ import annotations

import io
import os
import random
import resource
import struct
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, features

from ptm_cli.errors import ConfigError, ImageTooLarge, InputNotFound, UnreadableImage, UnsupportedFormat
from ptm_cli.images import formats
from ptm_cli.images.decode import ALLOWED_FORMATS, DEFAULT_MAX_PIXELS, load_image, load_image_with_format, to_rgb
from ptm_cli.images.transforms import Preprocess, preprocess, resize_and_crop, to_tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
CORAL = (200, 100, 50)


# --- helpers ---------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, bit_depth: int, color_type: int, rows: list[bytes]) -> bytes:
    """A PNG written by hand, so tests can state sizes and depths Pillow will not write."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + row for row in rows)  # filter type 0 on every row
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    value = image.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def _close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))


def _jpeg_bytes() -> bytes:
    return _encode(_noise(64, 48), "JPEG", quality=90)


def _png_bytes() -> bytes:
    return _encode(_noise(64, 48), "PNG")


# --- formats -----------------------------------------------------------------------

# (format, file name, save parameters, tolerance): lossy formats get a little slack.
ROUND_TRIPS = [
    ("JPEG", "a.jpg", {"quality": 95}, 3),
    ("PNG", "a.png", {}, 0),
    ("GIF", "a.gif", {}, 0),
    ("BMP", "a.bmp", {}, 0),
    ("TIFF", "a.tif", {}, 0),
    ("PPM", "a.ppm", {}, 0),
    ("WEBP", "a.webp", {"lossless": True}, 0),
]


@pytest.mark.parametrize(("fmt", "file_name", "params", "tolerance"), ROUND_TRIPS)
def test_allowed_formats_round_trip_to_rgb(
    tmp_path: Path, fmt: str, file_name: str, params: dict[str, object], tolerance: int
) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    path = _write(tmp_path, file_name, _encode(Image.new("RGB", (32, 24), CORAL), fmt, **params))
    image, detected = load_image_with_format(path)
    assert detected == fmt
    assert image.mode == "RGB"
    assert image.size == (32, 24)
    assert _close(_pixel(image, (5, 7)), CORAL, tolerance)
    assert _close(_pixel(image, (31, 23)), CORAL, tolerance)


@pytest.mark.parametrize("fmt", sorted(ALLOWED_FORMATS - {"MPO"}))
def test_every_allowed_format_really_opens(fmt: str) -> None:
    """Each name in the list is a format a real file of which loads (MPO has its own test below)."""
    if fmt in ("WEBP", "AVIF") and not features.check(fmt.lower()):
        pytest.skip(f"this Pillow has no {fmt}")
    if fmt == "HEIF" and not formats.enable_heif():
        pytest.skip("the heif extra (pillow-heif) is not installed")
    image, detected = load_image_with_format(_encode(Image.new("RGB", (6, 4), CORAL), fmt))
    assert (detected, image.size) == (fmt, (6, 4))


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "SGI", "TGA"])
def test_formats_outside_the_list_are_refused(fmt: str) -> None:
    """Valid files Pillow could read: refused as a format ptm does not open, never called broken."""
    with pytest.raises(UnsupportedFormat, match=fmt):
        load_image(_encode(Image.new("RGB", (6, 4), CORAL), fmt))


def test_format_is_detected_from_bytes_not_extension(tmp_path: Path) -> None:
    path = _write(tmp_path, "liar.jpg", _encode(Image.new("RGB", (4, 4), BLUE), "PNG"))
    image, detected = load_image_with_format(path)
    assert detected == "PNG"
    assert _pixel(image, (0, 0)) == BLUE


def test_mpo_first_picture_is_loaded(tmp_path: Path) -> None:
    first, second = Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[second], quality=95)
    image, detected = load_image_with_format(_write(tmp_path, "phone.jpg", buffer.getvalue()))
    assert detected == "MPO"
    assert _close(_pixel(image, (8, 8)), RED, 3)


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (10, 10), color) for color in (RED, GREEN, BLUE)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    image = load_image(_write(tmp_path, "anim.gif", buffer.getvalue()))
    assert _pixel(image, (5, 5)) == RED


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_animated_webp_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (10, 10), color) for color in (GREEN, RED, BLUE)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], duration=50, lossless=True)
    with Image.open(io.BytesIO(buffer.getvalue())) as check:
        assert getattr(check, "n_frames", 1) == 3
    image = load_image(buffer.getvalue())
    assert _pixel(image, (5, 5)) == GREEN


def test_multi_page_tiff_gives_first_page(tmp_path: Path) -> None:
    pages = [Image.new("RGB", (8, 8), color) for color in (BLUE, RED)]
    buffer = io.BytesIO()
    pages[0].save(buffer, "TIFF", save_all=True, append_images=pages[1:])
    assert load_image(buffer.getvalue()).getpixel((0, 0)) == BLUE


@pytest.mark.parametrize(("width", "height"), [(1, 1), (10000, 3), (3, 10000)])
def test_extreme_shapes_load(tmp_path: Path, width: int, height: int) -> None:
    path = _write(tmp_path, "thin.png", _encode(Image.new("RGB", (width, height), CORAL), "PNG"))
    image = load_image(path)
    assert image.size == (width, height)
    assert _pixel(image, (width - 1, height - 1)) == CORAL


# --- sources ---------------------------------------------------------------------------


class _PipeLike:
    """A read-only, non-seekable binary stream, like stdin."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._data.read(size)

    def seekable(self) -> bool:
        return False


@pytest.mark.parametrize(
    "make_source",
    [
        pytest.param(lambda data, path: data, id="bytes"),
        pytest.param(lambda data, path: bytearray(data), id="bytearray"),
        pytest.param(lambda data, path: memoryview(data), id="memoryview"),
        pytest.param(lambda data, path: io.BytesIO(data), id="BytesIO"),
        pytest.param(lambda data, path: _PipeLike(data), id="pipe"),
        pytest.param(lambda data, path: str(path), id="str"),
        pytest.param(lambda data, path: path, id="Path"),
    ],
)
def test_every_source_kind_loads(tmp_path: Path, make_source: Callable[[bytes, Path], object]) -> None:
    data = _encode(Image.new("RGB", (6, 5), GREEN), "PNG")
    path = _write(tmp_path, "green.png", data)
    image = load_image(make_source(data, path))  # type: ignore[arg-type]
    assert (image.size, _pixel(image, (0, 0))) == ((6, 5), GREEN)


def test_open_file_object_loads_and_stays_open(tmp_path: Path) -> None:
    path = _write(tmp_path, "g.png", _encode(Image.new("RGB", (3, 3), GREEN), "PNG"))
    with path.open("rb") as handle:
        handle.read(5)  # a stream not at its start still loads from byte 0
        assert load_image(handle).getpixel((1, 1)) == GREEN
        assert not handle.closed


def test_text_stream_is_refused_clearly() -> None:
    with pytest.raises(UnreadableImage, match="binary mode"):
        load_image(io.StringIO("not bytes"), name="notes")  # type: ignore[arg-type]


def test_name_is_used_in_messages() -> None:
    with pytest.raises(UnreadableImage, match=r"^- is empty"):
        load_image(b"", name="-")


def test_missing_path_is_input_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(InputNotFound) as info:
        load_image(missing)
    assert str(missing) in str(info.value)


def test_directory_is_input_not_found(tmp_path: Path) -> None:
    with pytest.raises(InputNotFound, match="directory") as info:
        load_image(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads everything")
def test_unreadable_path_is_input_not_found(tmp_path: Path) -> None:
    path = _write(tmp_path, "secret.png", _png_bytes())
    path.chmod(0)
    with pytest.raises(InputNotFound, match="permission"):
        load_image(path)


@pytest.mark.parametrize(
    ("error", "match"),
    [
        (PermissionError(13, "Permission denied"), "permission denied"),
        (OSError(5, "Input/output error"), "Input/output"),
    ],
)
def test_open_errors_are_input_not_found(monkeypatch: pytest.MonkeyPatch, error: OSError, match: str) -> None:
    import ptm_cli.images.decode as images

    def refuse(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(images, "open", refuse, raising=False)
    with pytest.raises(InputNotFound, match=match) as info:
        load_image("/photos/cat.jpg")
    assert "/photos/cat.jpg" in str(info.value)


# --- unreadable input --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_name", "data"),
    [
        ("empty.jpg", b""),
        ("noise.png", random.Random(7).randbytes(4096)),
        ("notes.txt", b"these are my holiday notes, not a picture\n" * 20),
        ("one-byte.gif", b"G"),
    ],
)
def test_junk_is_unreadable_and_names_the_file(tmp_path: Path, file_name: str, data: bytes) -> None:
    path = _write(tmp_path, file_name, data)
    with pytest.raises(UnreadableImage) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert "Traceback" not in str(info.value)


@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.3, 0.5, 0.75, 0.95])
@pytest.mark.parametrize(("fmt", "make"), [("jpg", _jpeg_bytes), ("png", _png_bytes)])
def test_truncated_files_are_unreadable(tmp_path: Path, fraction: float, fmt: str, make: Callable[[], bytes]) -> None:
    data = make()
    path = _write(tmp_path, f"cut.{fmt}", data[: int(len(data) * fraction)])
    with pytest.raises(UnreadableImage) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_corrupt_png_data_is_unreadable() -> None:
    data = bytearray(_png_bytes())
    idat = data.index(b"IDAT")
    data[idat + 20 : idat + 40] = b"\x00" * 20  # CRC no longer matches
    with pytest.raises(UnreadableImage, match=r"photo\.png"):
        load_image(bytes(data), name="photo.png")


# --- unsupported formats ----------------------------------------------------------------------


def _pillow_written(fmt: str) -> Callable[[], bytes]:
    return lambda: _encode(Image.new("RGB", (32, 32), CORAL), fmt)


UNSUPPORTED = [
    pytest.param("doc.pdf", _pillow_written("PDF"), "PDF", id="pdf"),
    pytest.param("icon.ico", _pillow_written("ICO"), "ICO", id="ico"),
    pytest.param("icon.icns", _pillow_written("ICNS"), "ICNS", id="icns"),
    pytest.param("pic.qoi", _pillow_written("QOI"), "QOI", id="qoi"),
    pytest.param("layers.psd", lambda: b"8BPS\x00\x01" + b"\x00" * 40, "PSD", id="psd"),
    pytest.param(
        "logo.svg",
        lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "SVG",
        id="svg",
    ),
]


@pytest.mark.parametrize(("file_name", "make", "label"), UNSUPPORTED)
def test_unsupported_formats_are_refused(tmp_path: Path, file_name: str, make: Callable[[], bytes], label: str) -> None:
    path = _write(tmp_path, file_name, make())
    with pytest.raises(UnsupportedFormat) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message
    assert label in message
    assert "JPEG" in message and "PNG" in message  # says what would work


# --- decompression bombs -------------------------------------------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 RGBA PNG whose IHDR (with a valid CRC) claims another size."""
    data = bytearray(_encode(Image.new("RGBA", (1, 1), RED), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def test_huge_png_header_is_refused_before_decoding(tmp_path: Path) -> None:
    path = _write(tmp_path, "bomb.png", _png_claiming(20000, 20000))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge) as info:
        load_image(path)
    assert time.perf_counter() - started < 2
    # 20000x20000 RGBA would be 1.6 GB; ru_maxrss is in KiB on Linux.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 200 * 1024
    message = str(info.value)
    assert str(path) in message
    assert "20000x20000" in message
    assert "PTM_MAX_PIXELS" in message


def test_max_pixels_argument_is_honoured() -> None:
    data = _encode(Image.new("RGB", (200, 100), CORAL), "PNG")
    with pytest.raises(ImageTooLarge, match="200x100"):
        load_image(data, max_pixels=19_999)
    assert load_image(data, max_pixels=20_000).size == (200, 100)


def test_env_limit_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _encode(Image.new("RGB", (200, 100), CORAL), "PNG")
    monkeypatch.setenv("PTM_MAX_PIXELS", "10000")
    with pytest.raises(ImageTooLarge, match="10,000"):
        load_image(data)
    assert load_image(data, max_pixels=50_000).size == (200, 100)  # the argument wins
    monkeypatch.setenv("PTM_MAX_PIXELS", "20000")
    assert load_image(data).size == (200, 100)


@pytest.mark.parametrize("value", ["lots", "-5", "0", "1.5"])
def test_malformed_env_limit_is_a_config_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PTM_MAX_PIXELS", value)
    with pytest.raises(ConfigError, match="PTM_MAX_PIXELS"):
        load_image(_png_bytes())


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_bad_max_pixels_argument_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match="max_pixels"):
        load_image(_png_bytes(), max_pixels=value)  # type: ignore[arg-type]


def test_default_limit_is_where_pillow_refuses() -> None:
    """Pillow refuses images over twice its MAX_IMAGE_PIXELS; read its default from a fresh interpreter."""
    code = "from PIL import Image; print(Image.MAX_IMAGE_PIXELS)"
    pillow_default = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
    assert 2 * pillow_default == DEFAULT_MAX_PIXELS


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "GIF", "JPEG"])
def test_our_limit_decides_not_pillows(monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    """Images over Pillow's limit but under ours load, silently, and Pillow's limit is restored."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = _encode(Image.new("RGB", (100, 100), CORAL), fmt)
    image = load_image(data)  # 10,000 pixels: Pillow alone would raise DecompressionBombError
    assert image.size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(ImageTooLarge):
        load_image(data, max_pixels=9_999)
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_concurrent_loads_leave_pillow_and_warning_settings_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker threads decode in parallel; the globals we borrow must come back intact."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    noisy_exif = b"Exif\x00\x00" + _tiff_ifd([(0x0112, 3, 1000, struct.pack("<I", 0x7FFFFFF0))])
    sources = [
        _encode(Image.new("RGB", (100, 100), CORAL), "TIFF"),
        _encode(Image.new("RGB", (20, 20), CORAL), "JPEG", quality=95, exif=noisy_exif),
        _encode(Image.new("RGBA", (40, 30), (*CORAL, 255)), "PNG"),
    ] * 20
    filters_before = list(warnings.filters)
    with ThreadPoolExecutor(max_workers=8) as pool:
        sizes = list(pool.map(lambda data: load_image(data).size, sources))
    assert sizes == [(100, 100), (20, 20), (40, 30)] * 20
    assert Image.MAX_IMAGE_PIXELS == 1000
    assert warnings.filters == filters_before


# --- EXIF orientation ----------------------------------------------------------------------------

# For each orientation: (width and height swapped?, where the stored top-left
# pixel is displayed, where the stored top-right pixel is displayed), straight
# from the EXIF spec's description of where row 0 and column 0 belong.
ORIENTATIONS = {
    1: (False, "TL", "TR"),
    2: (False, "TR", "TL"),
    3: (False, "BR", "BL"),
    4: (False, "BL", "BR"),
    5: (True, "TL", "BL"),
    6: (True, "TR", "BR"),
    7: (True, "BR", "TR"),
    8: (True, "BL", "TL"),
}


def _corner(image: Image.Image, corner: str) -> tuple[int, ...]:
    x = 0 if corner[1] == "L" else image.width - 1
    y = 0 if corner[0] == "T" else image.height - 1
    return _pixel(image, (x, y))  # type: ignore[return-value]


def _marked(width: int, height: int, block: int = 1) -> Image.Image:
    """Gray image, red block at the top-left, blue block at the top-right."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    image.paste(RED, (0, 0, block, block))
    image.paste(BLUE, (width - block, 0, width, block))
    return image


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_all_exif_orientations(orientation: int, fmt: str) -> None:
    data = _encode(_marked(6, 4), fmt, exif=_exif(orientation))
    image = load_image(data)
    swapped, red_at, blue_at = ORIENTATIONS[orientation]
    assert image.size == ((4, 6) if swapped else (6, 4))
    assert _corner(image, red_at) == RED
    assert _corner(image, blue_at) == BLUE


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_in_jpeg(orientation: int) -> None:
    data = _encode(_marked(48, 32, block=8), "JPEG", quality=95, exif=_exif(orientation))
    image = load_image(data)
    swapped, red_at, blue_at = ORIENTATIONS[orientation]
    assert image.size == ((32, 48) if swapped else (48, 32))
    assert _close(_corner(image, red_at), RED, 12)
    assert _close(_corner(image, blue_at), BLUE, 12)


def _tiff_ifd(entries: list[tuple[int, int, int, bytes]], first_ifd: int = 8) -> bytes:
    """Little-endian TIFF/EXIF bytes: header, one IFD of (tag, type, count, value) entries."""
    body = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        body += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00")
    return b"II*\x00" + struct.pack("<I", first_ifd) + body + b"\x00\x00\x00\x00"


MALFORMED_EXIF = [
    pytest.param(b"Exif\x00\x00" + b"\xde\xad\xbe\xef" * 4, id="garbage"),
    pytest.param(b"Exif\x00\x00II*\x00", id="cut-after-header"),
    pytest.param(b"Exif\x00\x00" + _tiff_ifd([], first_ifd=0xFFFFFF00), id="ifd-offset-past-end"),
    pytest.param(b"Exif\x00\x00" + _tiff_ifd([(0x0112, 2, 2, b"6\x00")]), id="orientation-as-text"),
    pytest.param(b"Exif\x00\x00" + _tiff_ifd([(0x0112, 3, 1, struct.pack("<H", 9))]), id="orientation-9"),
    pytest.param(b"Exif\x00\x00" + _tiff_ifd([(0x0112, 3, 1000, struct.pack("<I", 0x7FFFFFF0))]), id="data-past-end"),
    pytest.param(b"Exif\x00\x00" + _tiff_ifd([(0x8769, 4, 1, struct.pack("<I", 0xFFFFFFF0))]), id="bad-sub-ifd"),
    pytest.param(b"Exif\x00\x00" + _tiff_ifd([(0x010F, 2, 100, struct.pack("<I", 26))]), id="text-past-end"),
    pytest.param(b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff", id="entry-count-past-end"),
]


@pytest.mark.parametrize("exif", MALFORMED_EXIF)
def test_malformed_exif_still_loads_unrotated(exif: bytes) -> None:
    data = _encode(_marked(48, 32, block=8), "JPEG", quality=95, exif=exif)
    image = load_image(data)
    assert image.size == (48, 32)
    assert _close(_corner(image, "TL"), RED, 12)


def test_orientation_with_extra_values_uses_the_first() -> None:
    """Pillow warns about the extra value (a warning that must not leak) and keeps the first."""
    exif = b"Exif\x00\x00" + _tiff_ifd([(0x0112, 3, 2, struct.pack("<HH", 6, 6))])
    image = load_image(_encode(_marked(48, 32, block=8), "JPEG", quality=95, exif=exif))
    assert image.size == (32, 48)
    assert _close(_corner(image, ORIENTATIONS[6][1]), RED, 12)


# --- mode conversion ----------------------------------------------------------------------------------


def test_transparent_rgba_becomes_white() -> None:
    image = load_image(_encode(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "PNG"))
    assert image.mode == "RGB"
    assert _pixel(image, (2, 2)) == WHITE


def test_half_transparent_red_is_composited_on_white() -> None:
    image = load_image(_encode(Image.new("RGBA", (4, 4), (255, 0, 0, 128)), "PNG"))
    assert _close(_pixel(image, (0, 0)), (255, 128, 128), 1)


def test_opaque_rgba_keeps_its_colour() -> None:
    image = load_image(_encode(Image.new("RGBA", (4, 4), (*CORAL, 255)), "PNG"))
    assert _pixel(image, (0, 0)) == CORAL


def test_la_is_composited_on_white() -> None:
    image = Image.new("LA", (2, 1), (0, 255))
    image.putpixel((1, 0), (0, 0))
    loaded = load_image(_encode(image, "PNG"))
    assert _pixel(loaded, (0, 0)) == (0, 0, 0)
    assert _pixel(loaded, (1, 0)) == WHITE


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparent_index(fmt: str) -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([*RED, *BLUE])
    image.putpixel((1, 1), 1)
    loaded = load_image(_encode(image, fmt, transparency=0))
    assert _pixel(loaded, (0, 0)) == WHITE
    assert _pixel(loaded, (1, 1)) == BLUE


def test_palette_without_transparency() -> None:
    image = Image.new("P", (2, 2), 1)
    image.putpalette([*RED, *CORAL])
    assert load_image(_encode(image, "PNG")).getpixel((0, 0)) == CORAL


def test_rgb_with_colour_key_transparency() -> None:
    image = Image.new("RGB", (2, 1), GREEN)
    image.putpixel((1, 0), CORAL)
    loaded = load_image(_encode(image, "PNG", transparency=GREEN))
    assert _pixel(loaded, (0, 0)) == WHITE
    assert _pixel(loaded, (1, 0)) == CORAL


def test_one_bit_and_grayscale() -> None:
    bits = Image.new("1", (2, 1), 0)
    bits.putpixel((1, 0), 1)
    loaded = load_image(_encode(bits, "PNG"))
    assert [_pixel(loaded, (x, 0)) for x in range(2)] == [(0, 0, 0), WHITE]
    assert load_image(_encode(Image.new("L", (2, 2), 77), "PNG")).getpixel((1, 1)) == (77, 77, 77)


def test_sixteen_bit_gray_png_is_scaled_not_clipped() -> None:
    values = [0, 128, 129, 257, 32768, 65535]
    row = b"".join(struct.pack(">H", v) for v in values)
    image = load_image(_png(len(values), 1, 16, 0, [row]))
    assert [_pixel(image, (x, 0))[0] for x in range(len(values))] == [0, 0, 1, 1, 128, 255]


def test_sixteen_bit_rgb_png() -> None:
    row = struct.pack(">HHH", 65535, 32768, 0)
    assert load_image(_png(1, 1, 16, 2, [row])).getpixel((0, 0)) == (255, 128, 0)


def test_thirty_two_bit_int_tiff_is_scaled_as_sixteen_bit() -> None:
    image = Image.new("I", (3, 1))
    for x, value in enumerate([65535, 32768, 70000]):
        image.putpixel((x, 0), value)
    loaded = load_image(_encode(image, "TIFF"))
    assert [_pixel(loaded, (x, 0))[0] for x in range(3)] == [255, 128, 255]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # all <= 1: the 0..1 convention
        ([0.0, 100.0, 300.0], [0, 100, 255]),  # otherwise 0..255, clipped
        ([-1.0, float("nan"), 0.25], [0, 0, 64]),
    ],
)
def test_float_images(values: list[float], expected: list[int]) -> None:
    image = Image.new("F", (len(values), 1))
    for x, value in enumerate(values):
        image.putpixel((x, 0), value)
    loaded = load_image(_encode(image, "TIFF"))
    assert [_pixel(loaded, (x, 0))[0] for x in range(len(values))] == expected


def test_cmyk_jpeg() -> None:
    loaded = load_image(_encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))
    assert _close(_pixel(loaded, (8, 8)), RED, 4)


@pytest.mark.parametrize(
    ("make", "expected", "tolerance"),
    [
        pytest.param(lambda: Image.new("PA", (1, 1), (0, 0)).convert("PA"), WHITE, 0, id="PA-transparent"),
        pytest.param(lambda: Image.new("RGBA", (1, 1), (*RED, 128)).convert("RGBa"), (255, 128, 128), 1, id="RGBa"),
        pytest.param(lambda: Image.new("LA", (1, 1), (0, 128)).convert("La"), (127, 127, 127), 1, id="La"),
        pytest.param(lambda: Image.new("RGB", (1, 1), CORAL).convert("YCbCr"), CORAL, 2, id="YCbCr"),
        pytest.param(lambda: Image.new("RGB", (1, 1), CORAL).convert("HSV"), CORAL, 2, id="HSV"),
        pytest.param(lambda: Image.new("LAB", (1, 1), (255, 128, 128)), WHITE, 2, id="LAB-white"),
        pytest.param(lambda: Image.new("RGB", (1, 1), CORAL).convert("RGBX"), CORAL, 0, id="RGBX"),
        pytest.param(lambda: Image.new("I;16B", (1, 1), 32768), (128, 128, 128), 0, id="I;16B"),
        pytest.param(lambda: Image.new("I;16L", (1, 1), 65535), WHITE, 0, id="I;16L"),
    ],
)
def test_to_rgb_modes(make: Callable[[], Image.Image], expected: tuple[int, int, int], tolerance: int) -> None:
    converted = to_rgb(make())
    assert converted.mode == "RGB"
    assert _close(_pixel(converted, (0, 0)), expected, tolerance)


def test_to_rgb_returns_rgb_images_unchanged() -> None:
    image = Image.new("RGB", (2, 2), CORAL)
    assert to_rgb(image) is image


# --- Preprocess ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"resize": 0}, "resize"),
        ({"resize": -3}, "resize"),
        ({"resize": 2.5}, "resize"),
        ({"resize": True}, "resize"),
        ({"resize": "256"}, "resize"),
        ({"crop": 0}, "crop"),
        ({"interpolation": "cubic"}, "interpolation"),
        ({"mean": IMAGENET_MEAN}, "together"),
        ({"std": IMAGENET_STD}, "together"),
        ({"mean": (0.5, 0.5), "std": IMAGENET_STD}, "three"),
        ({"mean": "abc", "std": IMAGENET_STD}, "three"),
        ({"mean": ("a", 0.5, 0.5), "std": IMAGENET_STD}, "numbers"),
        ({"mean": IMAGENET_MEAN, "std": (0.2, 0.0, 0.2)}, "zero"),
        ({"mean": IMAGENET_MEAN, "std": (0.2, 1e-50, 0.2)}, "zero"),
        ({"mean": IMAGENET_MEAN, "std": (0.2, float("nan"), 0.2)}, "finite"),
    ],
)
def test_preprocess_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Preprocess(**kwargs)  # type: ignore[arg-type]


def test_preprocess_normalises_lists_to_tuples() -> None:
    p = Preprocess(resize=256, crop=224, mean=[0.5, 0.5, 0.5], std=[1, 2, 3])  # type: ignore[arg-type]
    assert p.mean == (0.5, 0.5, 0.5)
    assert p.std == (1.0, 2.0, 3.0)
    assert p == Preprocess(256, 224, "bilinear", (0.5, 0.5, 0.5), (1.0, 2.0, 3.0))
    assert hash(p) == hash(Preprocess(256, 224, "bilinear", (0.5, 0.5, 0.5), (1.0, 2.0, 3.0)))


# --- torchvision parity ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tv() -> object:
    pytest.importorskip("torch")
    return pytest.importorskip("torchvision.transforms")


def _torchvision_pipeline(tv: object, p: Preprocess) -> Callable[[Image.Image], object]:
    transforms = tv  # the torchvision.transforms module
    mode = transforms.InterpolationMode(p.interpolation)  # type: ignore[attr-defined]
    steps: list[object] = []
    if p.resize is not None:
        steps.append(transforms.Resize(p.resize, interpolation=mode))  # type: ignore[attr-defined]
    if p.crop is not None:
        steps.append(transforms.CenterCrop(p.crop))  # type: ignore[attr-defined]
    steps.append(transforms.ToTensor())  # type: ignore[attr-defined]
    if p.mean is not None:
        steps.append(transforms.Normalize(p.mean, p.std))  # type: ignore[attr-defined]
    return transforms.Compose(steps)  # type: ignore[attr-defined, no-any-return]


PARITY_CASES = [
    pytest.param((517, 389), Preprocess(256, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD), id="wide-256-224"),
    pytest.param((389, 517), Preprocess(256, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD), id="tall-256-224"),
    pytest.param((300, 1201), Preprocess(232, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD), id="tall-232-224"),
    pytest.param((517, 389), Preprocess(256, 224, "bicubic", IMAGENET_MEAN, IMAGENET_STD), id="bicubic"),
    pytest.param((333, 250), Preprocess(299, 299, "lanczos", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), id="lanczos"),
    pytest.param((120, 90), Preprocess(None, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD), id="crop-pads-both"),
    pytest.param((301, 95), Preprocess(None, 224, "bilinear", IMAGENET_MEAN, IMAGENET_STD), id="crop-pads-one"),
    pytest.param((256, 300), Preprocess(256, None, "bilinear", None, None), id="already-sized-no-norm"),
    pytest.param((225, 224), Preprocess(None, 224, "nearest", None, None), id="half-pixel-offset"),
]


@pytest.mark.parametrize(("size", "p"), PARITY_CASES)
def test_preprocess_matches_torchvision(tv: object, size: tuple[int, int], p: Preprocess) -> None:
    import torch

    image = _noise(*size)
    ours = preprocess(image, p)
    theirs = _torchvision_pipeline(tv, p)(image)
    assert isinstance(theirs, torch.Tensor)
    assert ours.dtype == torch.float32
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-6
    assert torch.equal(ours, theirs)  # in fact bit-identical
    assert ours.is_contiguous()


@pytest.mark.parametrize(("resize", "crop"), [(232, 224), (256, 224), (342, 299)])
def test_preprocess_matches_torchvision_weight_presets(tv: object, resize: int, crop: int) -> None:
    from torchvision.transforms._presets import ImageClassification

    image = _noise(517, 389, seed=3)
    preset = ImageClassification(crop_size=crop, resize_size=resize)
    ours = preprocess(image, Preprocess(resize, crop, "bilinear", IMAGENET_MEAN, IMAGENET_STD))
    assert (ours - preset(image)).abs().max().item() <= 1e-6


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 48),
    height=st.integers(1, 48),
    resize=st.none() | st.integers(1, 64),
    crop=st.none() | st.integers(1, 64),
    interpolation=st.sampled_from(["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]),
)
def test_resize_and_crop_is_pixel_identical_to_torchvision(
    width: int, height: int, resize: int | None, crop: int | None, interpolation: str
) -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    image = _noise(width, height, seed=width * 100 + height)
    p = Preprocess(resize, crop, interpolation)
    ours = resize_and_crop(image, p)
    theirs = image
    if resize is not None:
        theirs = transforms.Resize(resize, interpolation=transforms.InterpolationMode(interpolation))(theirs)
    if crop is not None:
        theirs = transforms.CenterCrop(crop)(theirs)
    assert ours.size == theirs.size
    assert ours.tobytes() == theirs.tobytes()


def test_resize_shorter_side_truncates_the_longer() -> None:
    assert resize_and_crop(_noise(517, 389), Preprocess(resize=256)).size == (340, 256)  # 256*517/389 = 340.2
    assert resize_and_crop(_noise(389, 517), Preprocess(resize=256)).size == (256, 340)


def test_to_tensor_without_normalisation(tv: object) -> None:
    image = _noise(31, 17)
    ours = to_tensor(image, Preprocess())
    assert ours.shape == (3, 17, 31)
    assert float(ours.min()) >= 0.0 and float(ours.max()) <= 1.0
    assert ours[:, 0, 0].tolist() == pytest.approx([v / 255 for v in _pixel(image, (0, 0))], abs=1e-7)


def test_to_tensor_converts_other_modes_to_three_channels(tv: object) -> None:
    tensor = to_tensor(Image.new("L", (4, 3), 51), Preprocess())
    assert tensor.shape == (3, 3, 4)
    assert tensor.flatten().tolist() == pytest.approx([51 / 255] * 36, abs=1e-7)


def test_preprocess_flattens_alpha_before_resizing(tv: object) -> None:
    tensor = preprocess(Image.new("RGBA", (10, 10), (0, 0, 0, 0)), Preprocess(resize=5))
    assert tensor.shape == (3, 5, 5)
    assert set(tensor.flatten().tolist()) == {1.0}


# --- hygiene ------------------------------------------------------------------------------------------------------


def test_import_does_not_pull_in_torch_or_numpy() -> None:
    code = (
        "import sys, ptm_cli.images.decode, ptm_cli.images.transforms\n"
        "print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.stdout.strip() == "[]"
