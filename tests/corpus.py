"""The hostile-image corpus: every format ptm opens, intact, truncated, lying about its size, or junk.

Built in the test run (the encoders are this machine's); ``write_corpus``
writes it into a folder and says what each file should give.
"""

from __future__ import annotations

import importlib.util
import io
import random
import struct
import zlib
from pathlib import Path
from typing import Any

from photofiles import camera_raw
from PIL import Image, features

from ptm_cli.images import formats

HAS_WEBP = features.check("webp")
HAS_AVIF = features.check("avif")
HAS_HEIF = formats.enable_heif()  # also lets Pillow write HEIC for the corpus
HAS_RAWPY = importlib.util.find_spec("rawpy") is not None
KNOWN_ERRORS = frozenset({"InputNotFound", "UnreadableImage", "UnsupportedFormat", "ImageTooLarge"})
OK = "ok"


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_by_hand(width: int, height: int, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_claiming(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR (CRC fixed up) claims another size: the pixels are not there."""
    data = bytearray(encode(Image.new("RGBA", (1, 1), "red"), "PNG"))
    at = data.index(b"IHDR")
    data[at + 4 : at + 12] = struct.pack(">II", width, height)
    data[at + 17 : at + 21] = struct.pack(">I", zlib.crc32(bytes(data[at : at + 17])))
    return bytes(data)


def png_bomb(width: int, height: int) -> bytes:
    """A complete, valid 1-bit PNG of ``width`` x ``height`` zeros: ~50 kB that decodes to gigabytes as RGB."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return png_by_hand(width, height, 1, 0, idat)


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # logical screen
    at = data.index(b",", 13)  # first image descriptor
    data[at + 5 : at + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (1, 1)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (8, 8)), "JPEG"))
    at = data.index(b"\xff\xc0")  # baseline SOF: length, precision, height, width
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_claiming(width: int, height: int) -> bytes:
    """A hand-written 8-bit grayscale TIFF header for ``width`` x ``height`` with 64 bytes of data."""
    entries = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 200),
        (277, 3, 1),
        (278, 4, height),
        (279, 4, (width * height) & 0xFFFFFFFF),
    ]
    body = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        body += struct.pack("<HHI", tag, kind, 1) + (
            struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        )
    return b"II*\x00" + struct.pack("<I", 8) + body + b"\x00" * 4 + b"\x00" * 64


def webp_claiming(width: int, height: int) -> bytes:
    """A 1x1 lossless WebP whose VP8L header claims ``width`` x ``height`` (14 bits each)."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "WEBP", lossless=True))
    header = data.index(b"VP8L") + 8
    assert data[header] == 0x2F
    bits = int.from_bytes(data[header + 1 : header + 5], "little")
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    data[header + 1 : header + 5] = bits.to_bytes(4, "little")
    return bytes(data)


def tiff_ifd(entries: list[tuple[int, int, int, bytes]], first_ifd: int = 8) -> bytes:
    body = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        body += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00")
    return b"II*\x00" + struct.pack("<I", first_ifd) + body + b"\x00\x00\x00\x00"


def iso_claiming(data: bytes, width: int, height: int) -> bytes:
    """An AVIF/HEIC file whose every image-size (``ispe``) property claims ``width`` x ``height``."""
    out, at = bytearray(data), 0
    while (at := out.find(b"ispe", at)) >= 0:
        out[at + 8 : at + 16] = struct.pack(">II", width, height)
        at += 4
    return bytes(out)


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def animated(fmt: str, **params: Any) -> bytes:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ("red", "green", "blue")]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **params)


def sixteen_bit_rgb_png() -> bytes:
    rows = b"".join(b"\x00" + struct.pack(">3H", 65535, 32768, 0) * 20 for _ in range(10))
    return png_by_hand(20, 10, 16, 2, zlib.compress(rows))


def corpus_cases() -> list[tuple[str, bytes | None, str]]:
    """(file name, bytes, expected outcome) for every hostile and odd image; None bytes: made specially."""
    base = noise(40, 30, seed=1)
    cases: list[tuple[str, bytes | None, str]] = []
    add = cases.append

    # Junk.
    add(("empty.jpg", b"", "UnreadableImage"))
    add(("empty.png", b"", "UnreadableImage"))
    add(("one-byte.gif", b"G", "UnreadableImage"))
    add(("noise-4k.jpg", random.Random(2).randbytes(4096), "UnreadableImage"))
    add(("noise-100k.webp", random.Random(3).randbytes(100_000), "UnreadableImage"))
    add(("notes.png", b"these are my holiday notes, not a picture\n" * 20, "UnreadableImage"))
    add(("error-page.jpg", b"<html><body>404 Not Found</body></html>\n", "UnreadableImage"))

    # Every supported format: intact, only its magic, and truncated at several points.
    encoded = {
        "jpg": encode(base, "JPEG", quality=90),
        "png": encode(base, "PNG"),
        "gif": encode(base, "GIF"),
        "bmp": encode(base, "BMP"),
        "tif": encode(base, "TIFF", compression="tiff_lzw"),
        "ppm": encode(base, "PPM"),
    }
    if HAS_WEBP:
        encoded["webp"] = encode(base, "WEBP", quality=80)
    magic = {
        "jpg": b"\xff\xd8\xff",
        "png": b"\x89PNG\r\n\x1a\n",
        "webp": b"RIFF\x00\x01\x00\x00WEBP",
        "gif": b"GIF89a",
        "bmp": b"BM",
        "tif": b"II*\x00",
        "ppm": b"P6\n",
    }
    for ext, data in encoded.items():
        add((f"intact.{ext}", data, OK))
        add((f"magic-only.{ext}", magic[ext], "UnreadableImage"))
        add((f"cut-at-8-bytes.{ext}", data[:8], "UnreadableImage"))
        for percent in (25, 50, 90):
            add((f"cut-at-{percent}pc.{ext}", data[: len(data) * percent // 100], "UnreadableImage"))
    add(("progressive-cut-at-60pc.jpg", encode(base, "JPEG", progressive=True)[:1000], "UnreadableImage"))

    # Phone formats: intact, truncated, declaring huge sizes, several images in one container.
    phone = {}
    if HAS_AVIF:
        phone["avif"] = encode(base, "AVIF", quality=80)
        add(("animated.avif", animated("AVIF", quality=80), OK))
    if HAS_HEIF:
        phone["heic"] = encode(base, "HEIF", quality=80)
        add(("three-images.heic", animated("HEIF", quality=80), OK))
    for ext, data in phone.items():
        add((f"intact.{ext}", data, OK))
        add((f"cut-at-8-bytes.{ext}", data[:8], "UnreadableImage"))
        for percent in (25, 50, 90):
            add((f"cut-at-{percent}pc.{ext}", data[: len(data) * percent // 100], "UnreadableImage"))
        add((f"claims-20000x20000.{ext}", iso_claiming(data, 20000, 20000), "ImageTooLarge"))
        add((f"claims-4000000000x1.{ext}", iso_claiming(data, 4_000_000_000, 1), "ImageTooLarge"))

    # Camera RAW: developed with the raw extra, refused without it; never read from its preview.
    raw = camera_raw(40, 30, (2000, 1000, 500), thumbnail=Image.new("RGB", (8, 6), "green"))
    add(("preview-inside.dng", raw, OK if HAS_RAWPY else "UnsupportedFormat"))
    nef = camera_raw(40, 30, (900, 900, 900), thumbnail=Image.new("RGB", (8, 6)), make="NIKON CORPORATION", dng=False)
    add(("nikon-named.jpg", nef, OK if HAS_RAWPY else "UnsupportedFormat"))

    # Valid files in formats ptm does not open by default: named, not called broken.
    add(("valid.tga", encode(base, "TGA"), "UnsupportedFormat"))
    add(("valid-sgi-named.png", encode(base, "SGI"), "UnsupportedFormat"))

    # Headers that claim huge sizes, and a real decompression bomb.
    add(("claims-20000x20000.png", png_claiming(20000, 20000), "ImageTooLarge"))
    add(("bomb-20000x20000-1bit.png", png_bomb(20000, 20000), "ImageTooLarge"))
    add(("claims-65535x65535.gif", gif_claiming(65535, 65535), "ImageTooLarge"))
    add(("claims-100000x100000.bmp", bmp_claiming(100000, 100000), "ImageTooLarge"))
    add(("claims-100000x-100000.bmp", bmp_claiming(100000, -100000), "ImageTooLarge"))
    add(("claims-65500x65500.jpg", jpeg_claiming(65500, 65500), "ImageTooLarge"))
    add(("claims-100000x100000.tif", tiff_claiming(100000, 100000), "ImageTooLarge"))
    add(("claims-100000x100000.ppm", b"P6\n100000 100000\n255\n" + b"\x00" * 64, "ImageTooLarge"))
    if HAS_WEBP:
        add(("claims-16384x16384.webp", webp_claiming(16384, 16384), "ImageTooLarge"))
    png = encode(base, "PNG")
    text_bomb = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * (50 << 20), 9))
    at = png.index(b"IDAT") - 4
    add(("ztxt-bomb.png", png[:at] + text_bomb + png[at:], "UnreadableImage"))

    # EXIF: all eight orientations, and malformed blocks (which must not stop the image).
    marked = Image.new("RGB", (48, 32), (128, 128, 128))
    marked.paste((255, 0, 0), (0, 0, 8, 8))
    for orientation in range(1, 9):
        data = encode(marked, "JPEG", quality=95, exif=exif_with_orientation(orientation))
        add((f"exif-orientation-{orientation}.jpg", data, OK))
    for label, exif in [
        ("garbage", b"Exif\x00\x00" + b"\xde\xad\xbe\xef" * 4),
        ("ifd-past-end", b"Exif\x00\x00" + tiff_ifd([], first_ifd=0xFFFFFF00)),
        ("orientation-as-text", b"Exif\x00\x00" + tiff_ifd([(0x0112, 2, 2, b"6\x00")])),
        ("orientation-9", b"Exif\x00\x00" + tiff_ifd([(0x0112, 3, 1, struct.pack("<H", 9))])),
        ("count-past-end", b"Exif\x00\x00" + tiff_ifd([(0x0112, 3, 1000, struct.pack("<I", 0x7FFFFFF0))])),
    ]:
        add((f"exif-{label}.jpg", encode(marked, "JPEG", quality=95, exif=exif), OK))

    # Every pixel mode.
    add(("cmyk.jpg", encode(Image.new("CMYK", (40, 30), (10, 80, 160, 20)), "JPEG"), OK))
    add(("cmyk.tif", encode(Image.new("CMYK", (40, 30), (10, 80, 160, 20)), "TIFF"), OK))
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    add(("palette-transparent.png", encode(palette, "PNG", transparency=3), OK))
    add(("palette-transparent.gif", encode(palette, "GIF", transparency=3), OK))
    add(("la.png", encode(Image.new("LA", (40, 30), (100, 50)), "PNG"), OK))
    add(("rgba.png", encode(Image.new("RGBA", (40, 30), (10, 200, 30, 128)), "PNG"), OK))
    for ext, fmt in (("png", "PNG"), ("bmp", "BMP"), ("tif", "TIFF")):
        add((f"one-bit.{ext}", encode(base.convert("1"), fmt), OK))
    add(("gray16.png", encode(Image.new("I;16", (40, 30), 30000), "PNG"), OK))
    add(("gray16.tif", encode(Image.new("I;16", (40, 30), 30000), "TIFF"), OK))
    add(("rgb16.png", sixteen_bit_rgb_png(), OK))

    # Extreme shapes.
    add(("1x1.png", encode(Image.new("RGB", (1, 1), "orange"), "PNG"), OK))
    add(("10000x3.png", encode(noise(10000, 3, seed=4), "PNG"), OK))
    add(("3x10000.png", encode(noise(3, 10000, seed=5), "PNG"), OK))
    add(("40000x1.png", encode(Image.new("RGB", (40000, 1), "orange"), "PNG"), OK))  # 2.9 Mpx x 72 if resized whole
    add(("1x40000.png", encode(Image.new("RGB", (1, 40000), "teal"), "PNG"), OK))

    # Animations and pages: the first frame.
    add(("animated.gif", animated("GIF"), OK))
    if HAS_WEBP:
        add(("animated.webp", animated("WEBP", lossless=True), OK))
        add(("webp-named.gif", encoded["webp"], OK))
    add(("pages.tif", animated("TIFF"), OK))

    # Extensions that lie.
    add(("png-named.jpg", encoded["png"], OK))
    add(("jpeg-named.png", encoded["jpg"], OK))
    add(("gif-named.bmp", encoded["gif"], OK))
    add(("pdf-named.jpg", encode(Image.new("RGB", (32, 32), "orange"), "PDF"), "UnsupportedFormat"))
    add(("psd-named.png", b"8BPS\x00\x01" + b"\x00" * 40, "UnsupportedFormat"))
    add(("svg-named.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "UnsupportedFormat"))

    # Paths that are not image files.
    add(("missing.jpg", None, "InputNotFound"))
    add(("a-folder.png", None, "InputNotFound"))
    add(("dangling-link.jpg", None, "InputNotFound"))
    return cases


def write_corpus(folder: Path) -> list[tuple[str, str]]:
    """Write the corpus into ``folder``; return (path, expected) in the order they are listed."""
    folder.mkdir(parents=True, exist_ok=True)
    listed = []
    for name, data, expected in corpus_cases():
        path = folder / name
        if data is not None:
            path.write_bytes(data)
        elif name == "a-folder.png":
            path.mkdir()
        elif name == "dangling-link.jpg":
            path.symlink_to(folder / "nowhere.jpg")
        listed.append((str(path), expected))
    return listed
