"""A fuzz of the C kernel's entry point (ptm_cli/images/_resample.c): Pillow's numbers, or a clean refusal.

Hypothesis draws images, resize and crop sizes, offsets and filters. Every
call the kernel accepts must give the tensor of Pillow's own resize and
crop, bit for bit; every call it cannot serve must raise (``ValueError``,
``TypeError``, ``OverflowError``, ``BufferError``), never read or write out
of bounds. ``make asan`` runs this file and the kernel's other tests against
a build with AddressSanitizer and UndefinedBehaviorSanitizer, with more
examples (``PTM_FUZZ_EXAMPLES``).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ptm_cli.images.transforms import (
    INTERPOLATIONS,
    Preprocess,
    fused_available,
    resize_and_crop,
    to_tensor_without_torch,
)

pytestmark = pytest.mark.skipif(not fused_available(), reason="the C extension is not built here")

EXAMPLES = int(os.environ.get("PTM_FUZZ_EXAMPLES", "150"))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FILTERS = ("bilinear", "bicubic", "lanczos", "box", "hamming")
REFUSALS = (ValueError, TypeError, OverflowError, BufferError)


def _kernel() -> object:
    from ptm_cli.images._resample import resize_crop  # type: ignore[import-not-found]

    return resize_crop


def _image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _pillow(image: Image.Image, resized: tuple[int, int], box: tuple[int, int, int, int], name: str) -> np.ndarray:
    """Pillow's resize of the whole image to ``resized``, cropped to ``box``, normalised as ptm does: the reference."""
    region = image.resize(resized, INTERPOLATIONS[name]).crop(box)
    tensor = to_tensor_without_torch(region, Preprocess(mean=MEAN, std=STD))
    return np.ascontiguousarray(tensor.permute(1, 2, 0).numpy())


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.integers(1, 120),
    height=st.integers(1, 120),
    out_width=st.integers(1, 160),
    out_height=st.integers(1, 160),
    data=st.data(),
    name=st.sampled_from(FILTERS),
    vertical_first=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_call_it_accepts_gives_pillows_pixels(
    width: int,
    height: int,
    out_width: int,
    out_height: int,
    data: st.DataObject,
    name: str,
    vertical_first: bool,
    seed: int,
) -> None:
    crop_w = data.draw(st.integers(1, out_width), label="crop width")
    crop_h = data.draw(st.integers(1, out_height), label="crop height")
    left = data.draw(st.integers(0, out_width - crop_w), label="left")
    top = data.draw(st.integers(0, out_height - crop_h), label="top")
    image = _image(width, height, seed)
    schema, array = image.__arrow_c_array__()
    out = np.full((crop_h, crop_w, 3), np.nan, np.float32)
    try:
        _kernel()(
            schema,
            array,
            width,
            height,
            out_width,
            out_height,
            left,
            top,
            crop_w,
            crop_h,  # type: ignore[operator]
            int(INTERPOLATIONS[name]),
            vertical_first,
            out,
            MEAN,
            STD,
        )
    except ValueError:
        return  # a scale beyond the kernel's range: ptm then takes Pillow's path
    assert not np.isnan(out).any(), "the kernel left part of its output unwritten"
    # Pillow runs one pass order; the other order may differ in the last rounding, so compare only Pillow's.
    if vertical_first == _pillow_runs_vertical_first(width, height, out_width, out_height):
        expected = _pillow(image, (out_width, out_height), (left, top, left + crop_w, top + crop_h), name)
        assert np.array_equal(out, expected), (width, height, out_width, out_height, left, top, crop_w, crop_h)


def _pillow_runs_vertical_first(width: int, height: int, out_width: int, out_height: int) -> bool:
    from ptm_cli.images import transforms

    order = transforms._pillow_pass_order()
    assert order is not None
    return bool(order(width, height, out_width, out_height))


numbers = st.one_of(st.integers(-(2**40), 2**40), st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 2**63 - 1]))


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    args=st.lists(numbers, min_size=8, max_size=8),
    filter_number=numbers,
    shape=st.tuples(*[st.integers(0, 20)] * 3),
)
def test_hostile_sizes_offsets_and_outputs_are_refused(
    args: list[int], filter_number: int, shape: tuple[int, int, int]
) -> None:
    image = _image(24, 18, 1)
    schema, array = image.__arrow_c_array__()
    out = np.empty(shape, np.float32)
    with contextlib.suppress(*REFUSALS):  # a refusal is fine; a crash or a sanitizer's report is not
        _kernel()(schema, array, *args, filter_number, False, out, MEAN, STD)  # type: ignore[operator]


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    mean=st.one_of(st.none(), st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4).map(tuple)),
    std=st.one_of(st.none(), st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4).map(tuple)),
    out=st.sampled_from(["float64", "float16", "bytes", "bytearray", "list", "noncontiguous"]),
)
def test_hostile_normalisation_and_output_buffers_are_refused(mean: object, std: object, out: str) -> None:
    image = _image(24, 18, 2)
    schema, array = image.__arrow_c_array__()
    buffers: dict[str, object] = {
        "float64": np.empty((8, 8, 3), np.float64),
        "float16": np.empty((8, 8, 3), np.float16),
        "bytes": bytes(8 * 8 * 3 * 4),
        "bytearray": bytearray(8 * 8 * 3 * 4),
        "list": [0.0] * (8 * 8 * 3),
        "noncontiguous": np.empty((8, 16, 3), np.float32)[:, ::2],
    }
    try:
        _kernel()(
            schema,
            array,
            24,
            18,
            10,
            8,
            1,
            0,
            8,
            8,
            int(INTERPOLATIONS["bilinear"]),
            False,  # type: ignore[operator]
            buffers[out],
            mean,
            std,
        )
    except REFUSALS:
        return
    pytest.fail(f"the kernel wrote into a {out} buffer, which is not contiguous float32 pixels")


def test_the_reference_is_the_preprocessing_ptm_uses() -> None:
    """The fuzz's reference (Pillow's resize, then the crop) is what resize_and_crop gives for a centre crop."""
    image = _image(100, 70, 3)
    p = Preprocess(resize=40, crop=32, interpolation="bilinear")
    resized = (57, 40)  # 100x70 with the short side at 40
    top, left = round((40 - 32) / 2.0), round((57 - 32) / 2.0)
    ours = np.asarray(resize_and_crop(image, p), np.float32)
    theirs = np.asarray(
        image.resize(resized, INTERPOLATIONS["bilinear"]).crop((left, top, left + 32, top + 32)), np.float32
    )
    assert np.array_equal(ours, theirs)


def test_a_sanitized_build_is_the_one_under_test() -> None:
    """Under `make asan` the kernel that runs is the sanitized build, not the installed one."""
    from ptm_cli.images import _resample  # type: ignore[attr-defined]

    wanted = os.environ.get("PTM_RESAMPLE_EXTENSION")
    if wanted is None:
        pytest.skip("not under make asan")
    assert os.path.samefile(_resample.__file__, wanted)
