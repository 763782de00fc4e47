"""Fuzzing the image loader: ``images.load_image`` then ``images.preprocess`` on mutated and random bytes.

The only outcomes allowed are an RGB image (which then preprocesses into a
finite tensor of the expected shape) or one of the documented per-input
errors. Anything else (a Pillow exception, a warning, a crash, a non-RGB
image) is a bug; the pytest configuration turns warnings into errors, so a
Pillow warning that escapes ptm fails here too.

The suite runs a short budget; ``PTM_FUZZ_EXAMPLES`` sets a longer one
(``make fuzz`` uses 20000). Hypothesis keeps the failures it finds in
``.hypothesis/`` and tries them first on the next run.
"""

from __future__ import annotations

import io
import os
import random
import warnings
from functools import cache
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from photofiles import camera_raw, gray_profile, rgb_profile
from PIL import Image, features

from ptm_cli.errors import ImageTooLarge, InputNotFound, UnreadableImage, UnsupportedFormat
from ptm_cli.images import formats
from ptm_cli.images.decode import load_image
from ptm_cli.images.transforms import Preprocess, preprocess

EXAMPLES = int(os.environ.get("PTM_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ALLOWED_ERRORS = (InputNotFound, UnreadableImage, UnsupportedFormat, ImageTooLarge)
# A low pixel limit keeps every example small. It is the same code path as the
# default limit, and it bounds what a mutated header can make ptm decode.
MAX_PIXELS = 250_000
PREPROCESS = Preprocess(resize=16, crop=16, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


@cache
def seeds() -> tuple[bytes, ...]:
    """Small real images in every format ptm opens, in many modes: what the mutations start from."""
    rng = random.Random(5)
    rgb = Image.frombytes("RGB", (24, 16), rng.randbytes(24 * 16 * 3))
    frames = [Image.new("RGB", (12, 8), colour) for colour in ("red", "green", "blue")]
    exif = Image.Exif()
    exif[0x0112] = 6
    made = [
        _encode(rgb, "JPEG", quality=80),
        _encode(rgb, "JPEG", quality=80, progressive=True),
        _encode(rgb, "JPEG", quality=80, exif=exif),
        _encode(rgb.convert("CMYK"), "JPEG"),
        _encode(rgb.convert("L"), "JPEG"),
        _encode(rgb, "PNG"),
        _encode(rgb.convert("RGBA"), "PNG"),
        _encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8), "PNG", transparency=2),
        _encode(rgb.convert("LA"), "PNG"),
        _encode(rgb.convert("1"), "PNG"),
        _encode(Image.new("I;16", (24, 16), 40000), "PNG"),
        _encode(rgb, "GIF"),
        _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        _encode(rgb, "BMP"),
        _encode(rgb.convert("1"), "BMP"),
        _encode(rgb.convert("P"), "BMP"),
        _encode(rgb, "TIFF"),
        _encode(rgb, "TIFF", compression="tiff_lzw"),
        _encode(rgb.convert("CMYK"), "TIFF"),
        _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        _encode(rgb, "PPM"),
        _encode(rgb.convert("L"), "PPM"),
        _encode(rgb.convert("1"), "PPM"),
    ]
    if features.check("webp"):
        made += [
            _encode(rgb, "WEBP", quality=70),
            _encode(rgb.convert("RGBA"), "WEBP", lossless=True),
            _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50, lossless=True),
        ]
    if features.check("avif"):
        sequence = _encode(frames[0], "AVIF", save_all=True, append_images=frames[1:], quality=60)
        made += [_encode(rgb, "AVIF", quality=60, exif=exif), sequence]
    if formats.enable_heif():
        made += [_encode(rgb, "HEIF", quality=60), _encode(frames[0], "HEIF", save_all=True, append_images=frames[1:])]
    made += [
        _encode(rgb, "PNG", icc_profile=rgb_profile("linear", gamma=1.0)),
        _encode(rgb.convert("L"), "PNG", icc_profile=gray_profile("grey", 2.2)),
        camera_raw(32, 32, (3000, 2000, 1000), thumbnail=Image.new("RGB", (6, 4), "green")),
    ]
    return tuple(made)


# Values that break parsers: zero, all ones, sign bits, the largest 16- and 32-bit numbers.
INTERESTING = [
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\x00\x00",
    b"\xff\xff",
    b"\x7f\xff",
    b"\x80\x00",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x80\x00\x00\x00",
]
MAGICS = [
    b"\xff\xd8\xff\xe0",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"GIF87a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"P6\n",
    b"P5\n",
    b"P4\n",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\x00\x00\x00\x00WEBPVP8L",
]

position = st.integers(min_value=0, max_value=2**16)
mutation = st.one_of(
    st.tuples(st.just("flip"), position, st.integers(0, 7)),
    st.tuples(st.just("truncate"), position),
    st.tuples(st.just("header"), st.integers(0, 63), st.sampled_from(INTERESTING)),
    st.tuples(st.just("set"), position, st.sampled_from(INTERESTING) | st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("splice"), st.integers(0, 63), position, position),
    st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), position, st.integers(1, 64)),
    st.tuples(st.just("repeat"), position, st.integers(1, 64), st.integers(2, 8)),
)


def mutate(data: bytes, steps: list[tuple[Any, ...]]) -> bytes:
    out = bytearray(data)
    for step in steps:
        kind, *args = step
        at = args[0] % (len(out) + 1) if kind not in ("header", "splice") else 0
        if kind == "flip" and out:
            out[at % len(out)] ^= 1 << args[1]
        elif kind == "truncate":
            del out[at:]
        elif kind == "header":
            offset, value = args
            out[offset : offset + len(value)] = value  # grows the file when it was shorter
        elif kind == "set":
            out[at : at + len(args[1])] = args[1]
        elif kind == "splice":
            other = seeds()[args[0] % len(seeds())]
            cut = args[1] % (len(out) + 1)
            out = out[:cut] + other[args[2] % (len(other) + 1) :]
        elif kind == "insert":
            out[at:at] = args[1]
        elif kind == "delete":
            del out[at : at + args[1]]
        elif kind == "repeat":
            block = out[at : at + args[1]]
            out[at:at] = block * (args[2] - 1)
    return bytes(out)


def check_outcome(data: bytes) -> None:
    """The property: an RGB image that preprocesses cleanly, or a documented error naming the input."""
    notes: list[str] = []
    try:
        image = load_image(data, name="fuzzed.img", max_pixels=MAX_PIXELS, min_short_side=32, on_note=notes.append)
    except ALLOWED_ERRORS as exc:
        message = str(exc)
        assert "fuzzed.img" in message and "\n" not in message
        return
    assert image.mode == "RGB"
    assert all(note.startswith("fuzzed.img: ") and "\n" not in note for note in notes)  # a damaged colour profile
    assert 0 < image.width * image.height <= MAX_PIXELS
    tensor = preprocess(image, PREPROCESS)
    assert tensor.shape == (3, 16, 16) and tensor.dtype == torch.float32
    assert bool(torch.isfinite(tensor).all())


def test_every_seed_loads() -> None:
    """The mutations start from images ptm reads: a seed that fails would make the fuzzing pointless."""
    for data in seeds():
        assert load_image(data).mode == "RGB"


@FUZZ
@given(seed=st.integers(min_value=0), steps=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_real_images_load_or_fail_cleanly(seed: int, steps: list[tuple[Any, ...]]) -> None:
    check_outcome(mutate(seeds()[seed % len(seeds())], steps))


@FUZZ
@given(
    data=st.binary(max_size=4096)
    | st.builds(lambda m, tail: m + tail, st.sampled_from(MAGICS), st.binary(max_size=2048))
)
def test_random_bytes_load_or_fail_cleanly(data: bytes) -> None:
    check_outcome(data)


@pytest.mark.parametrize("index", range(len(seeds())))
def test_each_seed_truncated_everywhere_fails_cleanly(index: int) -> None:
    """Deterministic companion to the fuzzing: every seed cut at every 7th byte."""
    data = seeds()[index]
    for cut in range(0, len(data), 7):
        check_outcome(data[:cut])


@pytest.mark.parametrize(
    ("mode", "warning"), [("RGB", "Corrupt EXIF data"), ("CMYK", "Tag data larger than file")], ids=["rgb", "cmyk"]
)
def test_tiff_with_damaged_exif_loads_without_a_warning(mode: str, warning: str) -> None:
    """Found by the fuzzer: one bit flipped in the IFD entry count of a plain TIFF."""
    rgb = Image.frombytes("RGB", (24, 16), random.Random(5).randbytes(24 * 16 * 3))
    data = bytearray(_encode(rgb.convert(mode), "TIFF"))
    data[9] ^= 0x01  # 256 more IFD entries than the file holds
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = load_image(bytes(data))
    assert image.mode == "RGB" and image.size == (24, 16)
    leaked = [str(w.message) for w in caught]
    assert not any(warning in text for text in leaked), f"Pillow's warning reached the caller: {leaked}"
    assert leaked == []
