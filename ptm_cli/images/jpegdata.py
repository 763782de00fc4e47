"""Whether a decoded JPEG's rows came from its data, or from libjpeg's grey filler.

libjpeg meets an end-of-image marker that comes too early (a file cut short
and closed with one, or a frame header declaring more rows than the data
holds) with a warning, which Pillow does not report, and fills every
remaining block with zero coefficients: flat grey. Only a JPEG whose last
pixel is that grey (:func:`looks_zero_filled`, cheap) is checked further
(:func:`data_ends_early`): its data is decoded once more without the final
marker, so the decoder stops where the data stops. Rows the data really holds
come out the same; rows only the filler made stay empty.

Baseline JPEGs only: a progressive one shows nothing until its last scan. A
cut within the last two MCU rows is not seen (the decoder holds those back
while it waits for more data).

Importing this module imports Pillow only.
"""

from __future__ import annotations

import io

from PIL import Image

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA


def looks_zero_filled(image: Image.Image) -> bool:
    """Whether the bottom-right pixel is the grey a block without data decodes to (any mode)."""
    pixel = image.getpixel((image.width - 1, image.height - 1))
    values = pixel if isinstance(pixel, tuple) else (pixel,)
    return all(value in (127, 128) for value in values)


def scan_end(data: bytes) -> int | None:
    """Where the end-of-image marker that closes the first frame's scans is, walking the markers.

    Segments are skipped by their length (an EXIF thumbnail inside APP1 is
    never mistaken for the image); inside entropy-coded data only ``FF00``
    (a literal FF), fill bytes and restart markers can follow an FF.
    """
    if not data.startswith(bytes((0xFF, SOI))):
        return None
    pos, size = 2, len(data)
    while pos + 2 <= size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == EOI:
            return pos
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if pos + 4 > size:
            return None
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == SOS:
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= size:
                    return None
                following = data[pos + 1]
                if following == 0x00 or 0xD0 <= following <= 0xD7:
                    pos += 2
                elif following == 0xFF:
                    pos += 1
                else:
                    break
    return None


def data_ends_early(data: bytes) -> bool:
    """Whether decoding ``data`` makes up rows its data does not hold (see the module docstring).

    Pillow errors propagate; the caller decides what a failed check means.
    """
    end = scan_end(data)
    if end is None:
        return False
    whole = Image.open(io.BytesIO(data))
    if whole.info.get("progressive") or len(whole.tile) != 1:
        return False
    whole.load()
    # The same decoder Pillow's load() uses, fed the data without its final marker: it decodes
    # what it can and then waits for bytes that never come, instead of filling the rest with grey.
    partial = Image.open(io.BytesIO(data[:end]))
    partial.load_prepare()
    codec, extents, offset, args = partial.tile[0]
    decoder = Image._getdecoder(partial.mode, codec, args, partial.decoderconfig)
    decoder.setimage(partial.im, extents)
    decoder.decode(data[offset:end])
    decoder.cleanup()
    # Probe above the last MCU rows, which the decoder may hold back waiting for more data.
    mcu_height = 8 * max((layer[2] for layer in getattr(whole, "layer", [])), default=2)
    y = whole.height - 3 * mcu_height - 1
    if y < 0:
        return False
    probe = (whole.width - 1, y)
    return bool(whole.im.getpixel(probe) != partial.im.getpixel(probe))
