"""Files the photo tests build byte by byte: ICC colour profiles, camera RAW (DNG and TIFF-based) files.

Nothing here is copied from a camera or an editor: each file is written from
the format's specification, small enough to reason about its exact content.
"""

from __future__ import annotations

import struct
from fractions import Fraction
from typing import Any

# --- ICC profiles (version 2, matrix/TRC) ------------------------------------------------------

D50 = (0.9642, 1.0, 0.8249)
# sRGB's primaries adapted to D50 (Bradford), as every sRGB profile states them.
SRGB_RED = (0.4360747, 0.2225045, 0.0139322)
SRGB_GREEN = (0.3850649, 0.7168786, 0.0971045)
SRGB_BLUE = (0.1430804, 0.0606169, 0.7141733)
# sRGB's tone curve as an ICC parametric curve of type 3: gamma, a, b, c, d.
SRGB_CURVE = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(values: tuple[float, float, float]) -> bytes:
    return b"XYZ \x00\x00\x00\x00" + b"".join(_s15(v) for v in values)


def _gamma_curve(gamma: float) -> bytes:
    """A ``curv`` tag: the identity for gamma 1.0, else one u8Fixed8 exponent."""
    if gamma == 1.0:
        return b"curv\x00\x00\x00\x00" + struct.pack(">I", 0)
    return b"curv\x00\x00\x00\x00" + struct.pack(">IH", 1, round(gamma * 256)) + b"\x00\x00"


def _parametric_curve(params: tuple[float, ...]) -> bytes:
    return b"para\x00\x00\x00\x00" + struct.pack(">HH", 3, 0) + b"".join(_s15(p) for p in params)


def _description(text: str) -> bytes:
    ascii_text = text.encode("ascii") + b"\x00"
    return (
        b"desc\x00\x00\x00\x00"
        + struct.pack(">I", len(ascii_text))
        + ascii_text
        + struct.pack(">II", 0, 0)
        + struct.pack(">HB", 0, 0)
        + b"\x00" * 67
    )


def icc_profile(space: str, tags: dict[str, bytes]) -> bytes:
    """An ICC v2.1 display profile for ``space`` ("RGB " or "GRAY") with these tags."""
    entries = []
    data = b""
    offset = 128 + 4 + 12 * len(tags)
    for signature, body in tags.items():
        entries.append(signature.encode() + struct.pack(">II", offset + len(data), len(body)))
        data += body + b"\x00" * (-len(body) % 4)
    size = offset + len(data)
    header = (
        struct.pack(">I", size)
        + b"\x00" * 4
        + struct.pack(">I", 0x02100000)
        + b"mntr"
        + space.encode()
        + b"XYZ "
        + b"\x00" * 12
        + b"acsp"
        + b"\x00" * 24
        + struct.pack(">I", 0)
        + b"".join(_s15(v) for v in D50)
        + b"\x00" * 4
    )
    header += b"\x00" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + b"".join(entries) + data


def rgb_profile(
    description: str,
    red: tuple[float, float, float] = SRGB_RED,
    green: tuple[float, float, float] = SRGB_GREEN,
    blue: tuple[float, float, float] = SRGB_BLUE,
    gamma: float | None = None,
) -> bytes:
    """A matrix/TRC RGB profile: sRGB's curve unless ``gamma`` is given."""
    curve = _parametric_curve(SRGB_CURVE) if gamma is None else _gamma_curve(gamma)
    return icc_profile(
        "RGB ",
        {
            "desc": _description(description),
            "wtpt": _xyz(D50),
            "rXYZ": _xyz(red),
            "gXYZ": _xyz(green),
            "bXYZ": _xyz(blue),
            "rTRC": curve,
            "gTRC": curve,
            "bTRC": curve,
        },
    )


def gray_profile(description: str, gamma: float) -> bytes:
    return icc_profile("GRAY", {"desc": _description(description), "wtpt": _xyz(D50), "kTRC": _gamma_curve(gamma)})


def srgb_encode(linear: float) -> int:
    """The 8-bit sRGB value of a linear light level in 0..1."""
    value = 12.92 * linear if linear <= 0.0031308 else 1.055 * linear ** (1 / 2.4) - 0.055
    return round(255 * value)


# --- TIFF-based camera RAW ------------------------------------------------------------------------

_TYPE_CODES = {1: "B", 3: "H", 4: "I"}
BYTE, ASCII, SHORT, LONG, RATIONAL, SRATIONAL = 1, 2, 3, 4, 5, 10


def _pack(kind: int, values: Any) -> bytes:
    if kind == ASCII:
        return values.encode() + b"\x00"  # type: ignore[no-any-return]
    if kind in (RATIONAL, SRATIONAL):
        out = b""
        for value in values:
            fraction = Fraction(value).limit_denominator(10000)
            out += struct.pack("<ii" if kind == SRATIONAL else "<II", fraction.numerator, fraction.denominator)
        return out
    return struct.pack("<" + _TYPE_CODES[kind] * len(values), *values)


Entry = tuple[int, int, Any]  # (tag, type, values); a value ("ifd", i) or ("blob", j) is an offset


def tiff(ifds: list[list[Entry]], blobs: list[bytes], magic: bytes = b"II*\x00") -> bytes:
    """A little-endian TIFF: IFD 0 is the first image; others are reached through SubIFDs tags."""
    ifd_offsets, position = [], 8
    for entries in ifds:
        ifd_offsets.append(position)
        position += 2 + 12 * len(entries) + 4
    blob_offsets = [0] * len(blobs)
    for _ in range(2):  # the second pass knows where the blobs start
        values_area, tables = b"", []
        for entries in ifds:
            table = b""
            for tag, kind, values in sorted(entries, key=lambda e: e[0]):
                if kind != ASCII:
                    values = [
                        (ifd_offsets if v[0] == "ifd" else blob_offsets)[v[1]] if isinstance(v, tuple) else v
                        for v in values
                    ]
                data = _pack(kind, values)
                count = len(values) + 1 if kind == ASCII else len(values)
                if len(data) <= 4:
                    table += struct.pack("<HHI", tag, kind, count) + data.ljust(4, b"\x00")
                else:
                    table += struct.pack("<HHII", tag, kind, count, position + len(values_area))
                    values_area += data + b"\x00" * (len(data) % 2)
            tables.append(struct.pack("<H", len(entries)) + table + struct.pack("<I", 0))
        start = position + len(values_area)
        for i, blob in enumerate(blobs):
            blob_offsets[i] = start
            start += len(blob)
    return magic + struct.pack("<I", ifd_offsets[0]) + b"".join(tables) + values_area + b"".join(blobs)


# ColorMatrix1 maps XYZ to the camera's colours; this one makes the camera see linear sRGB.
XYZ_TO_LINEAR_SRGB = (3.2406, -1.5372, -0.4986, -0.9689, 1.8758, 0.0415, 0.0557, -0.2040, 1.0570)
RAW_WHITE = 4095


def camera_raw(
    width: int,
    height: int,
    levels: tuple[int, int, int],
    *,
    thumbnail: Any = None,
    make: str = "ptm",
    dng: bool = True,
    orientation: int = 1,
) -> bytes:
    """A RAW file whose RGGB mosaic holds one level per colour (white level 4095).

    With ``dng`` it is a DNG whose camera space is linear sRGB, so a correct
    developer gives ``srgb_encode(level / 4095)`` per channel. ``thumbnail``
    (a small PIL RGB image) becomes IFD 0, the way cameras write their files,
    with the RAW data in a SubIFD.
    """
    red, green, blue = levels
    rows = []
    for y in range(height):
        even = [red if x % 2 == 0 else green for x in range(width)]
        odd = [green if x % 2 == 0 else blue for x in range(width)]
        rows.append(struct.pack(f"<{width}H", *(even if y % 2 == 0 else odd)))
    mosaic = b"".join(rows)
    raw_ifd: list[Entry] = [
        (254, LONG, [0]),
        (256, LONG, [width]),
        (257, LONG, [height]),
        (258, SHORT, [16]),
        (259, SHORT, [1]),
        (262, SHORT, [32803]),
        (273, LONG, [("blob", 0)]),
        (277, SHORT, [1]),
        (278, LONG, [height]),
        (279, LONG, [len(mosaic)]),
        (284, SHORT, [1]),
        (33421, SHORT, [2, 2]),
        (33422, BYTE, [0, 1, 1, 2]),
        (50717, LONG, [RAW_WHITE]),
    ]
    common: list[Entry] = [(271, ASCII, make), (272, ASCII, "test camera"), (274, SHORT, [orientation])]
    if dng:
        common += [
            (50706, BYTE, [1, 4, 0, 0]),
            (50708, ASCII, f"{make} test camera"),
            (50721, SRATIONAL, XYZ_TO_LINEAR_SRGB),
            (50778, SHORT, [21]),
            (50728, RATIONAL, [1, 1, 1]),
        ]
    if thumbnail is None:
        return tiff([raw_ifd + common], [mosaic])
    pixels = thumbnail.tobytes()
    preview: list[Entry] = [
        (254, LONG, [1]),
        (256, LONG, [thumbnail.width]),
        (257, LONG, [thumbnail.height]),
        (258, SHORT, [8, 8, 8]),
        (259, SHORT, [1]),
        (262, SHORT, [2]),
        (273, LONG, [("blob", 1)]),
        (277, SHORT, [3]),
        (278, LONG, [thumbnail.height]),
        (279, LONG, [len(pixels)]),
        (284, SHORT, [1]),
        (330, LONG, [("ifd", 1)]),
    ]
    return tiff([preview + common, raw_ifd], [mosaic, pixels])


def camera_tiff(width: int, height: int, make: str) -> bytes:
    """An ordinary RGB TIFF that a camera wrote (Make set, one full-size image): not RAW."""
    pixels = bytes([90, 160, 30]) * (width * height)
    entries: list[Entry] = [
        (254, LONG, [0]),
        (256, LONG, [width]),
        (257, LONG, [height]),
        (258, SHORT, [8, 8, 8]),
        (259, SHORT, [1]),
        (262, SHORT, [2]),
        (271, ASCII, make),
        (273, LONG, [("blob", 0)]),
        (277, SHORT, [3]),
        (278, LONG, [height]),
        (279, LONG, [len(pixels)]),
        (284, SHORT, [1]),
    ]
    return tiff([entries], [pixels])
