"""Write the golden corpus in tests/golden/images/ (run once; the files are committed, not regenerated).

Encoders change between Pillow and library versions, so the golden test reads
these committed bytes and never encodes its inputs itself. Run it again only
to add a case, and regenerate the expected records in the same commit.
"""

from __future__ import annotations

import io
import random
import struct
import sys
import zlib
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from photofiles import rgb_profile  # noqa: E402


def noise(width: int, height: int, seed: int) -> Image.Image:
    rng = random.Random(seed)
    return Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))


def gradient(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 255 // width, y * 255 // height, (x + y) % 256) for y in range(height) for x in range(width)])
    return image


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def main() -> None:
    out = HERE / "images"
    out.mkdir(exist_ok=True)
    base = gradient(48, 36)
    cases: dict[str, bytes] = {
        "gradient.jpg": encode(base, "JPEG", quality=90),
        "gradient.png": encode(base, "PNG"),
        "noise.webp": encode(noise(40, 30, 1), "WEBP", quality=80),
        "noise.gif": encode(noise(40, 30, 2), "GIF"),
        "gray.png": encode(base.convert("L"), "PNG"),
        "palette-alpha.png": encode(base.convert("P"), "PNG", transparency=3),
        "rgba.png": encode(base.convert("RGBA"), "PNG"),
        "cmyk.jpg": encode(base.convert("CMYK"), "JPEG", quality=90),
        "one-pixel.png": encode(Image.new("RGB", (1, 1), (200, 30, 60)), "PNG"),
        "tall-strip.png": encode(gradient(4, 90), "PNG"),
        "wide-profile.jpg": encode(base, "JPEG", quality=90, icc_profile=rgb_profile("wide gamut", gamma=2.2)),
        "empty.jpg": b"",
        "notes.png": b"these are my holiday notes, not a picture\n" * 8,
        "cut-in-half.jpg": encode(base, "JPEG", quality=90)[:400],
        "valid.tga": encode(base, "TGA"),
        "claims-20000x20000.png": png_claiming(20000, 20000),
    }
    rotated = base.copy()
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    cases["exif-rotated.jpg"] = encode(rotated, "JPEG", quality=90, exif=exif.tobytes())
    for name, data in sorted(cases.items()):
        (out / name).write_bytes(data)
    print(f"wrote {len(cases)} files into {out}")


if __name__ == "__main__":
    main()
