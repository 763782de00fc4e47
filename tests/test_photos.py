"""Photos people actually have: AVIF, HEIC, colour profiles, camera RAW, and formats outside ptm's list.

Every file is made here: AVIF and HEIC with Pillow's and pillow-heif's
encoders, ICC profiles and RAW files byte by byte (``photofiles.py``).
"""

from __future__ import annotations

import io
import json
import struct
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, TinyClassifier, run_ptm
from photofiles import (
    SRGB_GREEN,
    SRGB_RED,
    camera_raw,
    camera_tiff,
    gray_profile,
    rgb_profile,
    srgb_encode,
)
from PIL import Image, ImageCms, features

from ptm_cli.errors import ConfigError, ImageTooLarge, UnreadableImage, UnsupportedFormat
from ptm_cli.images import formats
from ptm_cli.images.colour import ImageNote, srgb_profile, to_srgb
from ptm_cli.images.decode import load_image, load_image_with_format
from ptm_cli.images.inputs import iter_directory
from ptm_cli.images.transforms import Preprocess, preprocess

HAS_AVIF = features.check("avif")
needs_avif = pytest.mark.skipif(not HAS_AVIF, reason="this Pillow has no AVIF codec")

try:
    import pillow_heif  # noqa: F401

    HAS_HEIF = True
except ImportError:
    HAS_HEIF = False
needs_heif = pytest.mark.skipif(not HAS_HEIF, reason="the heif extra (pillow-heif) is not installed")
try:
    import rawpy  # noqa: F401

    HAS_RAWPY = True
except ImportError:
    HAS_RAWPY = False
needs_rawpy = pytest.mark.skipif(not HAS_RAWPY, reason="the raw extra (rawpy) is not installed")

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    if fmt == "HEIF":
        formats.enable_heif()  # registers the encoder as well as the decoder
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def photo() -> Image.Image:
    """A real photograph (the sample coffee cup, 600x400): codec loss on it is what users see."""
    with Image.open(DATA / "coffee.png") as image:
        return image.convert("RGB")


def mean_abs_difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


def marked(width: int = 48, height: int = 32) -> Image.Image:
    """Grey with a red block in the top-left corner, to see rotations."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    image.paste(RED, (0, 0, 16, 16))
    return image


def is_red(pixel: tuple[int, ...]) -> bool:
    return pixel[0] > 180 and pixel[1] < 80 and pixel[2] < 80


def claiming(data: bytes, width: int, height: int) -> bytes:
    """An AVIF/HEIF file whose every ``ispe`` (image size) property claims ``width`` x ``height``."""
    out, at = bytearray(data), 0
    while (at := out.find(b"ispe", at)) >= 0:
        out[at + 8 : at + 16] = struct.pack(">II", width, height)
        at += 4
    return bytes(out)


@pytest.fixture
def without(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Hide an optional package (``without("pillow_heif")``) as if it were not installed."""

    def hide(module: str) -> None:
        monkeypatch.setitem(sys.modules, module, None)
        formats.enable_heif.cache_clear()

    yield hide
    formats.enable_heif.cache_clear()


# --- AVIF ---------------------------------------------------------------------------------------------


@needs_avif
def test_avif_photo_loads_within_the_codecs_loss() -> None:
    original = photo()
    image, fmt = load_image_with_format(encode(original, "AVIF", quality=90))
    assert (fmt, image.mode, image.size) == ("AVIF", "RGB", (600, 400))
    # Measured: 2.1 levels on average at quality 90 (4:2:0 chroma); JPEG at 90 loses 2.9.
    assert mean_abs_difference(image, original) < 3.0


@needs_avif
def test_avif_applies_its_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    image = load_image(encode(marked(), "AVIF", quality=95, exif=exif))
    assert image.size == (32, 48)
    assert is_red(image.getpixel((28, 4)))  # the top-left corner went to the top right


@needs_avif
def test_avif_sequence_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in (RED, BLUE)]
    data = encode(frames[0], "AVIF", save_all=True, append_images=frames[1:], quality=95)
    assert data[8:12] == b"avis"
    assert is_red(load_image(data).getpixel((16, 16)))


@needs_avif
@pytest.mark.parametrize(("width", "height"), [(16384, 16384), (20000, 20000), (100000, 100000)])
def test_avif_declaring_a_huge_size_is_refused_from_its_header(width: int, height: int) -> None:
    data = claiming(encode(Image.new("RGB", (48, 32)), "AVIF"), width, height)
    with pytest.raises(ImageTooLarge, match=f"{width}x{height}"):
        load_image(data, name="bomb.avif")


@needs_avif
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated_avif_is_unreadable(fraction: float) -> None:
    data = encode(photo(), "AVIF", quality=60)
    with pytest.raises(UnreadableImage, match=r"cut\.avif"):
        load_image(data[: int(len(data) * fraction)], name="cut.avif")


# --- HEIC/HEIF --------------------------------------------------------------------------------------


@needs_heif
def test_heic_photo_loads_within_the_codecs_loss() -> None:
    original = photo()
    data = encode(original, "HEIF", quality=90)
    assert data[4:12] == b"ftypheic"
    image, fmt = load_image_with_format(data)
    assert (fmt, image.mode, image.size) == ("HEIF", "RGB", (600, 400))
    assert mean_abs_difference(image, original) < 3.0  # measured: 1.6


@needs_heif
def test_heic_is_recognised_from_its_bytes_not_its_name(tmp_path: Path) -> None:
    named_jpg = tmp_path / "phone.jpg"
    named_jpg.write_bytes(encode(Image.new("RGB", (64, 64), BLUE), "HEIF", quality=95))
    assert load_image_with_format(named_jpg)[1] == "HEIF"
    named_heic = tmp_path / "really-a.heic"
    named_heic.write_bytes(encode(Image.new("RGB", (64, 64), BLUE), "JPEG"))
    assert load_image_with_format(named_heic)[1] == "JPEG"


@needs_heif
def test_heic_is_upright() -> None:
    """libheif applies the container's rotation and resets the EXIF tag: the photo is turned once, not twice."""
    exif = Image.Exif()
    exif[0x0112] = 6
    image = load_image(encode(marked(64, 48), "HEIF", quality=95, exif=exif.tobytes()))
    assert image.size == (48, 64)
    assert is_red(image.getpixel((44, 4)))


@needs_heif
def test_heic_with_several_images_gives_the_primary_one() -> None:
    images = [Image.new("RGB", (64, 64), colour) for colour in (RED, BLUE, GREEN)]
    data = encode(images[0], "HEIF", save_all=True, append_images=images[1:], quality=95)
    assert is_red(load_image(data).getpixel((32, 32)))


@needs_heif
@pytest.mark.parametrize(("width", "height"), [(16384, 16384), (100000, 100000)])
def test_heic_declaring_a_huge_size_is_refused_from_its_header(width: int, height: int) -> None:
    data = claiming(encode(Image.new("RGB", (64, 64)), "HEIF"), width, height)
    with pytest.raises(ImageTooLarge, match=f"{width}x{height}"):
        load_image(data, name="bomb.heic")


def box(kind: bytes, body: bytes, full: bool = False) -> bytes:
    payload = (b"\x00" * 4 if full else b"") + body
    return struct.pack(">I", 8 + len(payload)) + kind + payload


@pytest.mark.parametrize("kind", [pytest.param(b"heic", marks=needs_heif), pytest.param(b"avif", marks=needs_avif)])
def test_sizes_are_found_wherever_the_meta_box_is(kind: bytes) -> None:
    """Some encoders write the pixel data (mdat) first: the size check walks past it, without reading it."""
    ispe = box(b"ispe", struct.pack(">II", 30000, 30000), full=True)
    meta = box(b"meta", box(b"hdlr", b"\x00" * 24, full=True) + box(b"iprp", box(b"ipco", ispe)), full=True)
    data = box(b"ftyp", kind + b"\x00\x00\x00\x00mif1" + kind) + box(b"mdat", b"\x00" * 600_000) + meta
    with pytest.raises(ImageTooLarge, match="30000x30000"):
        load_image(data, name="late-meta")


@needs_heif
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated_heic_is_unreadable(fraction: float) -> None:
    data = encode(photo(), "HEIF", quality=60)
    with pytest.raises(UnreadableImage, match=r"cut\.heic"):
        load_image(data[: int(len(data) * fraction)], name="cut.heic")


def test_heic_without_the_extra_names_the_install_line(without: object) -> None:
    without("pillow_heif")  # type: ignore[operator]
    data = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 40
    with pytest.raises(UnsupportedFormat, match=r"phone\.heic is a HEIC/HEIF image.*pip install 'ptm\[heif\]'"):
        load_image(data, name="phone.heic")


# --- colour profiles ----------------------------------------------------------------------------------


def tagged(image: Image.Image, profile: bytes, fmt: str = "PNG") -> bytes:
    return encode(image, fmt, icc_profile=profile)


def strip(*pixels: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (len(pixels), 1))
    for x, pixel in enumerate(pixels):
        image.putpixel((x, 0), pixel)
    return image


def row(image: Image.Image) -> list[tuple[int, ...]]:
    return [image.getpixel((x, 0)) for x in range(image.width)]  # type: ignore[misc]


def close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 1) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def test_swapped_primaries_profile_moves_red_into_green() -> None:
    """A profile whose red and green primaries are swapped: the file's (200, 100, 50) is sRGB (100, 200, 50)."""
    swapped = rgb_profile("red and green swapped", red=SRGB_GREEN, green=SRGB_RED)
    image = load_image(tagged(strip((200, 100, 50), (255, 0, 0), (10, 20, 30)), swapped))
    assert [close(p, e) for p, e in zip(row(image), [(100, 200, 50), (0, 255, 0), (20, 10, 30)], strict=True)] == [
        True
    ] * 3, row(image)


def test_linear_profile_is_brightened_by_the_srgb_curve() -> None:
    """Linear light (gamma 1.0) stored as 8 bits: each grey v becomes sRGB's encoding of v / 255."""
    greys = [0, 10, 50, 128, 200, 255]
    image = load_image(tagged(strip(*[(v, v, v) for v in greys]), rgb_profile("linear sRGB", gamma=1.0)))
    expected = [srgb_encode(v / 255) for v in greys]
    assert expected[2] == 122  # 50 in linear light is 122 in sRGB: a visible change, not rounding
    for pixel, want in zip(row(image), expected, strict=True):
        assert close(pixel, (want, want, want)), (pixel, want)


def test_grey_image_with_a_grey_profile_is_converted() -> None:
    grey = Image.new("L", (3, 1))
    for x, value in enumerate((0, 50, 255)):
        grey.putpixel((x, 0), value)
    image = load_image(tagged(grey, gray_profile("linear grey", gamma=1.0)))
    assert [p[0] for p in row(image)] == pytest.approx([0, 122, 255], abs=1)
    assert all(p[0] == p[1] == p[2] for p in row(image))


def test_profile_applies_in_jpeg_and_with_transparency() -> None:
    linear = rgb_profile("linear sRGB", gamma=1.0)
    jpeg = load_image(tagged(Image.new("RGB", (16, 16), (50, 50, 50)), linear, "JPEG"))
    assert close(jpeg.getpixel((8, 8)), (122, 122, 122), 2)  # type: ignore[arg-type]
    rgba = Image.new("RGBA", (2, 1), (50, 50, 50, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))
    converted = row(load_image(tagged(rgba, linear)))
    assert close(converted[0], (122, 122, 122)) and converted[1] == (255, 255, 255)


def test_an_srgb_profile_leaves_pixels_alone() -> None:
    pixels = strip((200, 100, 50), (1, 2, 3))
    assert row(load_image(tagged(pixels, srgb_profile()))) == row(pixels)
    grey = Image.new("L", (2, 1), 77)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an sRGB profile on grey pixels is harmless: no note
        assert row(load_image(tagged(grey, srgb_profile()))) == [(77, 77, 77)] * 2


@pytest.mark.parametrize(
    ("profile", "match"),
    [
        pytest.param(b"not a colour profile at all" * 4, "damaged", id="garbage"),
        pytest.param(rgb_profile("cut")[:200], "damaged", id="truncated"),
        pytest.param(gray_profile("grey", 1.0), "GRAY colours but its pixels are RGB", id="wrong-space"),
    ],
)
def test_unusable_profile_is_a_note_never_a_failure(profile: bytes, match: str) -> None:
    notes: list[str] = []
    pixels = strip((200, 100, 50))
    image = load_image(tagged(pixels, profile), name="odd.png", on_note=notes.append)
    assert row(image) == row(pixels)
    assert len(notes) == 1 and notes[0].startswith("odd.png: ") and match in notes[0]


def test_without_a_callback_the_note_is_a_warning() -> None:
    with pytest.warns(ImageNote, match="damaged"):
        load_image(tagged(strip((1, 2, 3)), b"junk" * 40))


def test_loaded_images_carry_no_profile_so_preprocessing_does_not_convert_twice() -> None:
    image = load_image(tagged(strip((50, 50, 50)), rgb_profile("linear", gamma=1.0)))
    assert "icc_profile" not in image.info
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert to_srgb(image).getpixel((0, 0)) == image.getpixel((0, 0))


def test_preprocess_applies_the_profile_of_an_image_opened_elsewhere() -> None:
    with Image.open(io.BytesIO(tagged(Image.new("RGB", (8, 8), (50, 50, 50)), rgb_profile("lin", gamma=1.0)))) as im:
        tensor = preprocess(im, Preprocess())
    assert tensor[:, 0, 0].tolist() == pytest.approx([122 / 255] * 3, abs=1.5 / 255)


# --- camera RAW ------------------------------------------------------------------------------------


GREEN_THUMB = Image.new("RGB", (16, 12), GREEN)
LEVELS = (2000, 1000, 500)
EXPECTED = tuple(srgb_encode(v / 4095) for v in LEVELS)  # (186, 135, 98)


@pytest.mark.parametrize(
    ("data", "label"),
    [
        pytest.param(camera_raw(64, 48, LEVELS, thumbnail=GREEN_THUMB), "DNG", id="dng-with-preview"),
        pytest.param(camera_raw(64, 48, LEVELS), "DNG", id="dng"),
        pytest.param(
            camera_raw(64, 48, LEVELS, thumbnail=GREEN_THUMB, make="NIKON CORPORATION", dng=False),
            "Nikon NEF",
            id="nef",
        ),
        pytest.param(camera_raw(64, 48, LEVELS, thumbnail=GREEN_THUMB, make="SONY", dng=False), "Sony ARW", id="arw"),
        pytest.param(camera_raw(64, 48, LEVELS, make="Unknown Maker", dng=False), "camera RAW", id="cfa-tiff"),
        pytest.param(b"II*\x00\x10\x00\x00\x00CR\x02\x00" + b"\x00" * 64, "Canon CR2", id="cr2"),
        pytest.param(b"IIRO\x08\x00\x00\x00" + b"\x00" * 64, "Olympus ORF", id="orf"),
        pytest.param(b"IIU\x00\x08\x00\x00\x00" + b"\x00" * 64, "Panasonic RW2", id="rw2"),
        pytest.param(b"FUJIFILMCCD-RAW 0201" + b"\x00" * 64, "Fujifilm RAF", id="raf"),
        pytest.param(b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01crx isom" + b"\x00" * 64, "Canon CR3", id="cr3"),
    ],
)
def test_raw_without_the_extra_is_refused_never_read_from_its_preview(
    data: bytes, label: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "rawpy", None)
    with pytest.raises(UnsupportedFormat) as info:
        load_image(data, name="shot.raw")
    message = str(info.value)
    assert f"shot.raw is a camera RAW file ({label})" in message
    assert "pip install 'ptm[raw]'" in message


def test_pillow_alone_would_have_used_the_preview() -> None:
    """Why the check exists: Pillow opens such a DNG as a 16x12 TIFF of the green preview."""
    with Image.open(io.BytesIO(camera_raw(64, 48, LEVELS, thumbnail=GREEN_THUMB))) as image:
        assert (image.format, image.size, image.getpixel((2, 2))) == ("TIFF", (16, 12), GREEN)


def test_an_ordinary_tiff_from_a_camera_is_not_raw() -> None:
    image, fmt = load_image_with_format(camera_tiff(8, 6, "NIKON CORPORATION"))
    assert (fmt, image.size, image.getpixel((3, 3))) == ("TIFF", (8, 6), (90, 160, 30))


@needs_rawpy
@pytest.mark.parametrize("thumbnail", [None, GREEN_THUMB], ids=["raw-only", "with-preview"])
def test_dng_is_developed_by_libraw_with_the_extra(thumbnail: Image.Image | None) -> None:
    image, fmt = load_image_with_format(camera_raw(64, 48, LEVELS, thumbnail=thumbnail))
    assert (fmt, image.mode, image.size) == ("DNG", "RGB", (64, 48))  # the full image, not the 16x12 preview
    for xy in [(32, 24), (10, 10), (60, 40)]:
        assert close(image.getpixel(xy), EXPECTED), image.getpixel(xy)  # type: ignore[arg-type]


@needs_rawpy
def test_a_raw_that_develops_to_one_channel_loads_as_grey() -> None:
    """Found by the fuzzer: one byte inserted into a DNG's tags leaves a one-colour mosaic (as a monochrome
    camera's is); LibRaw develops it into one channel, which used to escape as a TypeError."""
    data = camera_raw(32, 32, (3000, 2000, 1000), thumbnail=Image.new("RGB", (6, 4), "green"))
    image = load_image(data[:326] + b"\x00" + data[326:])
    assert image.mode == "RGB" and image.size == (32, 32)
    assert all(len(set(image.getpixel(xy))) == 1 for xy in [(0, 0), (16, 16), (31, 31)])  # type: ignore[arg-type]


@needs_rawpy
def test_raw_orientation_is_applied_once() -> None:
    image = load_image(camera_raw(64, 48, LEVELS, thumbnail=GREEN_THUMB, orientation=6))
    assert image.size == (48, 64)


@needs_rawpy
def test_raw_size_is_checked_before_developing() -> None:
    with pytest.raises(ImageTooLarge, match="64x48"):
        load_image(camera_raw(64, 48, LEVELS), max_pixels=1000)


@needs_rawpy
def test_damaged_raw_with_the_extra_is_unreadable() -> None:
    with pytest.raises(UnreadableImage) as info:
        load_image(b"IIRO\x08\x00\x00\x00" + b"\x00" * 64, name="shot.orf")
    assert str(info.value) == (
        "shot.orf is a camera RAW file (Olympus ORF) that LibRaw could not decode (Unsupported file format or not "
        "RAW file); it is probably corrupt, or too new for the installed rawpy."
    )


def test_folder_walks_pick_up_phone_and_raw_files(tmp_path: Path) -> None:
    names = ["a.avif", "b.HEIC", "c.heif", "d.dng", "e.NEF", "f.cr3", "g.txt", "h.jpg"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in iter_directory(tmp_path, recursive=False)] == [n for n in names if n != "g.txt"]


# --- formats outside the list -------------------------------------------------------------------------


XPM = b"""/* XPM */
static char *dot[] = {
"2 1 2 1",
"a c #FF0000",
"b c #0000FF",
"ab"
};
"""


def pillow_file(fmt: str) -> bytes:
    if fmt == "XPM":
        return XPM
    mode = "1" if fmt == "XBM" else "RGB"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Pillow 13 deprecates writing IM files
        return encode(Image.new(mode, (6, 4), 1 if mode == "1" else (200, 100, 50)), fmt)


OTHER_FORMATS = ["TGA", "SGI", "PCX", "XPM", "XBM", "DIB", "IM", "MSP"]


@pytest.mark.parametrize("fmt", OTHER_FORMATS)
def test_valid_files_in_other_pillow_formats_are_unsupported_not_unreadable(fmt: str) -> None:
    data = pillow_file(fmt) if fmt != "MSP" else encode(Image.new("1", (8, 4), 1), "MSP")
    with pytest.raises(UnsupportedFormat) as info:
        load_image(data, name="old-picture")
    assert f"old-picture is in {fmt} format" in str(info.value)
    assert f"PTM_EXTRA_FORMATS={fmt}" in str(info.value)


@pytest.mark.parametrize("fmt", ["TGA", "SGI", "PCX", "XPM", "IM"])
def test_extra_formats_opt_in(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTM_EXTRA_FORMATS", f"bmp, {fmt.lower()}")
    image, detected = load_image_with_format(pillow_file(fmt))
    assert detected == fmt and image.mode == "RGB"
    assert image.getpixel((0, 0)) in ((200, 100, 50), RED)


def test_extra_formats_all_keeps_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTM_EXTRA_FORMATS", "all")
    assert load_image_with_format(pillow_file("SGI"))[1] == "SGI"
    huge = bytearray(pillow_file("TGA"))
    huge[12:16] = struct.pack("<HH", 60000, 60000)  # the TGA header's width and height
    with pytest.raises(ImageTooLarge, match="60000x60000"):
        load_image(bytes(huge))
    assert "ICO" not in formats.open_order() and "EPS" not in formats.open_order()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("TGA,NOPE", "NOPE, which this Pillow cannot read"),
        ("ICO", "never opens"),
        ("EPS", "Ghostscript"),
        ("TGA;rm -rf", "not understood"),
    ],
)
def test_bad_extra_formats_are_a_config_error(value: str, match: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTM_EXTRA_FORMATS", value)
    with pytest.raises(ConfigError, match=match):
        load_image(pillow_file("TGA"))


# --- through the command line: same answers as the same pixels in PNG ----------------------------------


def _codecs() -> list[object]:
    found = []
    if HAS_AVIF:
        found.append(pytest.param("AVIF", "avif", id="avif"))
    if HAS_HEIF:
        found.append(pytest.param("HEIF", "heic", id="heic"))
    return found


@pytest.mark.parametrize(("fmt", "ext"), _codecs())
def test_phone_formats_classify_like_the_same_pixels_in_png(
    fmt: str, ext: str, tiny: TinyClassifier, tmp_path: Path
) -> None:
    (tmp_path / "coffee.png").write_bytes((DATA / "coffee.png").read_bytes())
    (tmp_path / f"coffee.{ext}").write_bytes(encode(photo(), fmt, quality=90))
    result = run_ptm(tiny.args(str(tmp_path)))
    assert result.code == 0, result.stderr
    by_name = {Path(r["input"]).suffix: r["predictions"] for r in result.records()}
    png, other = by_name[".png"], by_name[f".{ext}"]
    assert [p["index"] for p in png] == [p["index"] for p in other]
    worst = max(abs(a["probability"] - b["probability"]) for a, b in zip(png, other, strict=True))
    print(f"{fmt}: top-4 order as in PNG, largest probability difference {worst:.4f}")
    assert worst < 0.02, worst


@pytest.mark.parametrize(("fmt", "ext"), _codecs())
def test_phone_formats_translate_like_the_same_pixels_in_png(
    fmt: str, ext: str, generator_file: Path, tmp_path: Path
) -> None:
    """The untrained test generator amplifies input differences about threefold, so the bound is relative:
    the AVIF/HEIC result is no further from the PNG result than a quality-90 JPEG's is."""
    source = photo().resize((96, 64))
    files = {
        "png": encode(source, "PNG"),
        ext: encode(source, fmt, quality=90),
        "jpg": encode(source, "JPEG", quality=90),
    }
    outputs = {}
    for name, data in files.items():
        (tmp_path / f"in.{name}").write_bytes(data)
        out = tmp_path / f"out-{name}.png"
        result = run_ptm(
            ["zebra", "-w", str(generator_file), "--size", "32", str(tmp_path / f"in.{name}"), "-o", str(out)]
        )
        assert result.code == 0, result.stderr
        with Image.open(out) as written:
            outputs[name] = written.convert("RGB")
    assert outputs[ext].size == (96, 64)
    ours, jpeg = mean_abs_difference(outputs[ext], outputs["png"]), mean_abs_difference(outputs["jpg"], outputs["png"])
    print(f"{fmt}: {ours:.2f} levels from the PNG result; JPEG 90: {jpeg:.2f}")
    assert ours <= jpeg and ours < 8.0


def test_translate_output_is_srgb_with_the_profile_embedded(generator_file: Path, tmp_path: Path) -> None:
    linear = rgb_profile("linear sRGB", gamma=1.0)
    dark = Image.new("RGB", (32, 32), (50, 50, 50))
    (tmp_path / "linear.png").write_bytes(tagged(dark, linear))
    (tmp_path / "converted.png").write_bytes(encode(Image.new("RGB", (32, 32), (122, 122, 122)), "PNG"))
    zebra = ["zebra", "-w", str(generator_file), "--size", "32"]
    for ext in ("png", "jpg", "webp", "tif", "bmp"):
        result = run_ptm([*zebra, str(tmp_path / "linear.png"), "-o", str(tmp_path / f"out.{ext}")])
        assert result.code == 0, result.stderr
        with Image.open(tmp_path / f"out.{ext}") as written:
            embedded = written.info.get("icc_profile")
        if ext == "bmp":
            assert embedded is None  # BMP has no place for it
        else:
            assert embedded == srgb_profile()
            description = ImageCms.ImageCmsProfile(io.BytesIO(embedded)).profile.profile_description
            assert "sRGB" in description
    # The linear input was converted before the generator saw it: same result as its sRGB pixels.
    run_ptm([*zebra, str(tmp_path / "converted.png"), "-o", str(tmp_path / "reference.png")])
    with Image.open(tmp_path / "out.png") as ours, Image.open(tmp_path / "reference.png") as reference:
        assert mean_abs_difference(ours.convert("RGB"), reference.convert("RGB")) < 1.0


def test_damaged_profile_is_a_note_on_stderr_and_the_run_succeeds(tiny: TinyClassifier, tmp_path: Path) -> None:
    path = tmp_path / "odd.png"
    path.write_bytes(tagged(photo().resize((80, 60)), b"garbage" * 30))
    result = run_ptm(tiny.args(str(path)))
    assert result.code == 0, result.stderr
    assert f"ptm: {path}: its colour profile is damaged" in result.stderr
    assert len(result.records()) == 1 and "predictions" in result.records()[0]


def test_extra_formats_setting_is_read_like_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    from ptm_cli import settings

    monkeypatch.setenv("PTM_EXTRA_FORMATS", " tga, PCX  sgi,")
    assert settings.extra_formats() == {"TGA", "PCX", "SGI"}
    assert settings.check_all() == []
    monkeypatch.setenv("PTM_EXTRA_FORMATS", "tga/pcx")
    (problem,) = settings.check_all()
    assert problem.startswith("PTM_EXTRA_FORMATS='tga/pcx' is not understood")


def test_bad_extra_formats_setting_is_exit_2(tiny: TinyClassifier, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTM_EXTRA_FORMATS", "NOPE")
    result = run_ptm([*tiny.classify, str(DATA / "coffee.png")])
    assert result.code == 2
    assert "PTM_EXTRA_FORMATS names NOPE" in result.stderr and "Traceback" not in result.stderr


def test_doctor_says_which_formats_and_decoders_are_here(without: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from ptm_cli import doctor

    report = doctor.collect()["images"]
    assert {"JPEG", "PNG", "TIFF"} <= set(report["formats"])
    assert ("AVIF" in report["formats"]) == HAS_AVIF and ("HEIF" in report["formats"]) == HAS_HEIF
    assert (report["raw"] is not None) == HAS_RAWPY
    without("pillow_heif")  # type: ignore[operator]
    monkeypatch.setitem(sys.modules, "rawpy", None)
    monkeypatch.setenv("PTM_EXTRA_FORMATS", "tga")
    report = doctor.collect()["images"]
    assert report["heif"] is None and report["raw"] is None
    assert "HEIF" not in report["formats"] and "TGA" in report["formats"]


def test_the_embedded_srgb_profile_is_the_same_bytes_in_every_process() -> None:
    """Found when merging the warm server: LittleCMS stamps profiles with the current time, so the same zebra
    written by the server and by the command (or by two runs a second apart) differed in its PNG bytes."""
    import subprocess
    import sys
    import time

    code = "import sys; from ptm_cli.images.colour import srgb_profile; sys.stdout.buffer.write(srgb_profile())"
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    time.sleep(1.1)
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    assert first == second and len(first) > 128


def padded_profile(profile: bytes, extra: int) -> bytes:
    """``profile`` with a private tag of ``extra`` random bytes: as large as a printer's profile, as valid."""
    import random

    count = struct.unpack(">I", profile[128:132])[0]
    table = [struct.unpack(">4sII", profile[132 + 12 * i : 144 + 12 * i]) for i in range(count)]
    body = profile[132 + 12 * count :]
    start = 132 + 12 * (count + 1)
    shifted = [(sig, offset + 12, size) for sig, offset, size in table]
    private_at = start + len(body) + (-len(body) % 4)
    entries = [*shifted, (b"ptmz", private_at, extra)]
    data = body + b"\0" * (-len(body) % 4) + random.Random(0).randbytes(extra)
    total = start + len(data)
    header = struct.pack(">I", total) + profile[4:84] + b"\0" * 16 + profile[100:128]  # no profile ID
    return header + struct.pack(">I", count + 1) + b"".join(struct.pack(">4sII", *e) for e in entries) + data


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_three_megabyte_profile_is_applied_in_png_as_in_jpeg(fmt: str) -> None:
    """Found in round 3: Pillow caps a PNG's compressed chunks at 1 MiB, so such a PNG was "corrupt"."""
    large = padded_profile(rgb_profile("linear sRGB", gamma=1.0), 3 << 20)
    assert ImageCms.ImageCmsProfile(io.BytesIO(large)).profile.profile_description.startswith("linear")
    image = load_image(tagged(Image.new("RGB", (16, 16), (50, 50, 50)), large, fmt), name=f"printer.{fmt.lower()}")
    assert close(image.getpixel((8, 8)), (122, 122, 122), 2)  # type: ignore[arg-type]
    from PIL import PngImagePlugin

    assert PngImagePlugin.MAX_TEXT_CHUNK == 1 << 20  # Pillow's own setting is left as it was


@needs_rawpy
def test_what_libraw_prints_becomes_the_inputs_error_never_a_stray_line(tiny: TinyClassifier, tmp_path: Path) -> None:
    """Found in round 3: LibRaw printed "unknown file: Unexpected end of file" on stderr, without ``ptm:``."""
    import subprocess

    whole = camera_raw(64, 48, LEVELS, thumbnail=GREEN_THUMB)
    (tmp_path / "cut.dng").write_bytes(whole[: len(whole) - 2000])
    done = subprocess.run(
        [sys.executable, "-m", "ptm_cli", *tiny.args(str(tmp_path / "cut.dng"))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    record = json.loads(done.stdout)
    assert record["error"]["type"] == "UnreadableImage" and "unexpected end of file" in record["error"]["message"]
    assert all(line.startswith("ptm: ") for line in done.stderr.splitlines()), done.stderr


def test_other_lines_written_while_libraw_reads_are_passed_on() -> None:
    """Only LibRaw's own complaints are taken from stderr; another thread's line there still reaches it."""
    import subprocess

    code = (
        "import os\nfrom ptm_cli.images.formats import _libraw_says\nsaid = []\n"
        "with _libraw_says(said):\n"
        "    os.write(2, b'another thread says hello\\n')\n"
        "    os.write(2, b'unknown file: data corrupted at 1234\\n')\n"
        "print(said)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout == "['data corrupted at 1234']\n" and done.stderr == "another thread says hello\n"
