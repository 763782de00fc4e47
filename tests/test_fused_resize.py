"""The fused resize-and-crop (ptm_cli/_resample.c): torchvision's preprocessing bit for bit, for the crop only."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ptm_cli.images import transforms
from ptm_cli.images.transforms import (
    INTERPOLATIONS,
    Preprocess,
    fused_resize_crop,
    preprocess,
    resize_and_crop,
    to_tensor_without_torch,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def pillow_path(image: Image.Image, p: Preprocess) -> torch.Tensor:
    return to_tensor_without_torch(resize_and_crop(image, p), p)


def noise(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def test_the_extension_is_built_and_agrees_with_this_pillow() -> None:
    # CI builds it (make installs with a C compiler); where it is missing ptm still works (see below).
    order = transforms._pillow_pass_order()
    assert order is not None, "ptm_cli.images._resample was not built, or disagrees with the installed Pillow"


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos", "box", "hamming"])
def test_random_sizes_give_pillows_tensor_bit_for_bit(interpolation: str) -> None:
    rng = random.Random(interpolation)
    checked = 0
    while checked < 40:
        width, height = rng.randint(8, 700), rng.randint(8, 700)
        resize = rng.randint(4, 2 * min(width, height))  # shrinking and enlarging
        crop = rng.randint(1, resize)
        p = Preprocess(resize=resize, crop=crop, interpolation=interpolation, mean=MEAN, std=STD)
        image = noise(width, height, checked)
        got = fused_resize_crop(image, p)
        if got is None:  # a crop longer than the resized short side: padding, Pillow's path
            assert crop > resize
            continue
        expected = pillow_path(image, p)
        assert got.shape == expected.shape and torch.equal(got, expected), (width, height, resize, crop)
        assert got.permute(1, 2, 0).is_contiguous()  # channels_last memory, as the models run
        checked += 1


@pytest.mark.parametrize(
    ("size", "resize", "crop"),
    [
        ((1280, 720), 256, 224),  # a phone's landscape video frame: horizontal pass first
        ((720, 1280), 256, 224),  # portrait
        ((157, 602), 36, 17),  # a tall strip shrinking most in height: Pillow 13 runs the vertical pass first
        ((300, 40), 40, 40),  # the short side is already the target: one pass, the other a copy
        ((64, 64), 64, 64),  # nothing to resize: the crop of the image itself
        ((90, 60), 200, 150),  # enlarging
    ],
)
def test_telling_sizes_give_pillows_tensor_bit_for_bit(size: tuple[int, int], resize: int, crop: int) -> None:
    for mean_std in ((MEAN, STD), (None, None)):
        p = Preprocess(resize=resize, crop=crop, mean=mean_std[0], std=mean_std[1])
        image = noise(*size, seed=resize)
        got = fused_resize_crop(image, p)
        assert got is not None and torch.equal(got, pillow_path(image, p))


@pytest.mark.skipif(
    "PTM_RESAMPLE_EXTENSION" in os.environ, reason="torchvision's own C++ does not load under the sanitizers' runtime"
)
def test_it_matches_torchvision_on_a_photo() -> None:
    tv = pytest.importorskip("torchvision.transforms")
    from helpers import DATA

    image = Image.open(DATA / "chelsea.png").convert("RGB")
    pipeline = tv.Compose([tv.Resize(256), tv.CenterCrop(224), tv.ToTensor(), tv.Normalize(MEAN, STD)])
    got = fused_resize_crop(image, Preprocess(resize=256, crop=224, mean=MEAN, std=STD))
    assert got is not None and torch.equal(got, pipeline(image))


@pytest.mark.parametrize(
    ("mode", "p"),
    [
        ("L", Preprocess(resize=32, crop=24)),  # not RGB: Pillow's path converts it
        ("RGB", Preprocess(resize=32, crop=24, interpolation="nearest")),  # not a convolution
        ("RGB", Preprocess(resize=32)),  # no crop
        ("RGB", Preprocess(crop=24)),  # no resize
        ("RGB", Preprocess(resize=32, crop=40)),  # a crop past the image: zero padding
    ],
)
def test_where_it_does_not_apply_preprocess_takes_pillows_path(mode: str, p: Preprocess) -> None:
    image = noise(48, 36, 1).convert(mode)
    assert fused_resize_crop(image, p) is None
    assert torch.equal(preprocess(image, p, without_torch=True), preprocess(image, p))


def test_an_extreme_strip_takes_the_same_path_as_everywhere_else() -> None:
    # Resized whole it would be 240000x72; Pillow's path resizes only the region the crop keeps, one
    # level away from a full resize in places. The records must not depend on which path ran.
    strip = noise(10000, 3, 4)
    p = Preprocess(resize=72, crop=64, mean=MEAN, std=STD)
    assert fused_resize_crop(strip, p) is None
    assert torch.equal(preprocess(strip, p, without_torch=True), preprocess(strip, p))


def test_an_image_stored_in_more_than_one_block_takes_pillows_path() -> None:
    image = Image.new("RGB", (3000, 2000), (10, 200, 30))  # 24 MB: more than Pillow's 16 MB block
    p = Preprocess(resize=64, crop=64, mean=MEAN, std=STD)
    assert fused_resize_crop(image, p) is None
    assert torch.equal(preprocess(image, p, without_torch=True), pillow_path(image, p))


def test_without_the_extension_the_numbers_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    image, p = noise(200, 150, 3), Preprocess(resize=64, crop=56, mean=MEAN, std=STD)
    expected = preprocess(image, p, without_torch=True)
    transforms._pillow_pass_order.cache_clear()
    monkeypatch.setitem(sys.modules, "ptm_cli.images._resample", None)  # import fails, as without a C compiler
    try:
        assert transforms._pillow_pass_order() is None
        assert fused_resize_crop(image, p) is None
        assert torch.equal(preprocess(image, p, without_torch=True), expected)
    finally:
        transforms._pillow_pass_order.cache_clear()


def test_a_pillow_that_disagrees_turns_the_fused_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    transforms._pillow_pass_order.cache_clear()
    real = transforms._center_crop
    # A Pillow whose results differ by one level somewhere: neither order matches it.
    monkeypatch.setattr(transforms, "_center_crop", lambda image, side: real(image, side).point(lambda v: v ^ 1))
    try:
        assert transforms._pillow_pass_order() is None
    finally:
        transforms._pillow_pass_order.cache_clear()


def test_a_trial_that_fails_turns_the_fused_path_off_for_good(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("an export this kernel does not read")

    transforms._pillow_pass_order.cache_clear()
    monkeypatch.setattr(transforms, "_find_pass_order", broken)
    try:
        image, p = noise(60, 40, 5), Preprocess(resize=32, crop=24, mean=MEAN, std=STD)
        assert fused_resize_crop(image, p) is None and fused_resize_crop(image, p) is None
        assert calls == [1]  # decided once, not tried again for every image
        assert torch.equal(preprocess(image, p, without_torch=True), pillow_path(image, p))
    finally:
        transforms._pillow_pass_order.cache_clear()


def test_a_lowered_pixel_limit_gives_the_same_answer_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    from ptm_cli.errors import ImageTooLarge

    transforms._pillow_pass_order.cache_clear()
    monkeypatch.setenv("PTM_MAX_PIXELS", "100000")
    try:
        wide = noise(2000, 10, 6)  # resized to 12800x64: more pixels than the limit
        p = Preprocess(resize=64, crop=56, mean=MEAN, std=STD)
        assert fused_resize_crop(wide, p) is None
        for without_torch in (True, False):
            with pytest.raises(ImageTooLarge):
                preprocess(wide, p, without_torch=without_torch)
        monkeypatch.setenv("PTM_MAX_PIXELS", "300")  # smaller than the probes: they do not depend on it
        small, recipe = noise(20, 15, 7), Preprocess(resize=12, crop=10)  # 16x12 resized: under the limit
        got = fused_resize_crop(small, recipe)
        assert got is not None and torch.equal(got, pillow_path(small, recipe))
    finally:
        transforms._pillow_pass_order.cache_clear()


def test_the_kernel_refuses_what_does_not_fit() -> None:
    from ptm_cli.images._resample import resize_crop  # type: ignore[import-not-found]

    image = noise(40, 30, 2)
    schema, array = image.__arrow_c_array__()
    out = np.empty((16, 16, 3), np.float32)
    bilinear = int(INTERPOLATIONS["bilinear"])
    resize_crop(schema, array, 40, 30, 21, 16, 2, 0, 16, 16, bilinear, False, out, MEAN, STD)  # fits
    with pytest.raises(ValueError, match="crop must lie inside"):
        resize_crop(schema, array, 40, 30, 21, 16, 6, 0, 16, 16, bilinear, False, out, MEAN, STD)
    with pytest.raises(ValueError, match="float32 values"):
        resize_crop(schema, array, 40, 30, 21, 16, 0, 0, 16, 16, bilinear, False, out[:8], MEAN, STD)
    with pytest.raises(ValueError, match=r"shorter than the image|4 bytes per pixel"):  # sizes that lie
        resize_crop(schema, array, 400, 300, 21, 16, 0, 0, 16, 16, bilinear, False, out, MEAN, STD)
    with pytest.raises(ValueError, match="Resampling number"):
        resize_crop(schema, array, 40, 30, 21, 16, 0, 0, 16, 16, 0, False, out, MEAN, STD)
    with pytest.raises(ValueError, match="mean and std"):
        resize_crop(schema, array, 40, 30, 21, 16, 0, 0, 16, 16, bilinear, False, out, MEAN, None)
    grey_schema, grey_array = image.convert("L").__arrow_c_array__()
    with pytest.raises(ValueError, match="4 bytes per pixel"):
        resize_crop(grey_schema, grey_array, 40, 30, 21, 16, 0, 0, 16, 16, bilinear, False, out, MEAN, STD)
    with pytest.raises(ValueError, match="PyCapsule"):
        resize_crop(b"not a capsule", array, 40, 30, 21, 16, 0, 0, 16, 16, bilinear, False, out, MEAN, STD)
    with pytest.raises(BufferError):  # a read-only buffer
        resize_crop(schema, array, 40, 30, 21, 16, 0, 0, 16, 16, bilinear, False, bytes(3072), MEAN, STD)
    for wrong in (bytearray(3072), np.empty(384, np.float64), np.empty(1536, np.float16)):  # all 3072 bytes
        with pytest.raises(ValueError, match="float32"):  # not float32, whatever its length
            resize_crop(schema, array, 40, 30, 21, 16, 0, 0, 16, 16, bilinear, False, wrong, MEAN, STD)


def test_the_kernel_refuses_capsules_another_reader_has_consumed() -> None:
    pa = pytest.importorskip("pyarrow")
    from ptm_cli.images._resample import resize_crop

    image = noise(40, 30, 2)
    schema, array = image.__arrow_c_array__()
    pa.Array._import_from_c_capsule(schema, array)  # moves the array out: the capsules now hold released structs
    out = np.empty((16, 16, 3), np.float32)
    with pytest.raises(ValueError, match="consumed"):
        resize_crop(schema, array, 40, 30, 21, 16, 0, 0, 16, 16, int(INTERPOLATIONS["bilinear"]), False, out, MEAN, STD)
