"""The CycleGAN generator, checkpoint loading and the image-to-image engine.

Every generator here is built from seeded random weights and saved to a
temporary file: nothing is downloaded. Where the exact architecture does not
matter, a narrow generator (``ngf=8``) keeps the tests fast.
"""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ptm_cli.cache.catalog import Catalog, Entry
from ptm_cli.errors import ConfigError, IncompatibleWeights, UsageError
from ptm_cli.images.decode import load_image
from ptm_cli.nets import architectures
from ptm_cli.nets.cyclegan import build_generator
from ptm_cli.tasks import _tiles as tiles
from ptm_cli.tasks import translate
from ptm_cli.tasks.translate import Translator, build_translator

DATA = Path(__file__).resolve().parent.parent / "data"


# --- helpers -----------------------------------------------------------------


def seeded_state_dict(ngf: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_generator(ngf=ngf).state_dict()


def test_entry(ngf: int = 8) -> Entry:
    kwargs = {} if ngf == 64 else {"ngf": ngf}
    return Entry(
        model="tiny-gan",
        weights="TEST",
        task="translate",
        architecture="cyclegan_resnet9",
        labels=None,
        resize=256,
        builder_kwargs=kwargs,
    )


test_entry.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def save(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state_dict, path)
    return path


def photo(width: int, height: int) -> Image.Image:
    """A real photograph (the CC0 cat) at the given size: realistic content for seam checks."""
    return Image.open(DATA / "chelsea.png").convert("RGB").resize((width, height), Image.Resampling.BICUBIC)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def abs_diff(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> np.ndarray:
    a = pixels(a) if isinstance(a, Image.Image) else a.astype(np.int16)
    b = pixels(b) if isinstance(b, Image.Image) else b.astype(np.int16)
    return np.abs(a - b)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(seeded_state_dict(ngf=8), tmp_path_factory.mktemp("w") / "tiny.pth")


@pytest.fixture(scope="module")
def translator(tiny_weights: Path) -> Translator:
    """The tiny generator (8 filters) ready to translate, for the module."""
    return build_translator(test_entry(8), weights_file=tiny_weights, device="cpu")


@pytest.fixture(scope="module")
def full_size_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(seeded_state_dict(ngf=64), tmp_path_factory.mktemp("w") / "full.pth")


# --- import cost and catalog ---------------------------------------------------------


def test_importing_the_module_imports_no_torch() -> None:
    code = "import sys, ptm_cli.tasks.translate; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_catalog_lists_the_cyclegan_generators() -> None:
    catalog = Catalog.load()
    names = {
        "horse2zebra",
        "zebra2horse",
        "apple2orange",
        "orange2apple",
        "summer2winter_yosemite",
        "winter2summer_yosemite",
        "monet2photo",
        "style_monet",
        "style_cezanne",
        "style_ukiyoe",
        "style_vangogh",
    }
    assert set(catalog.models("translate")) == names
    entries = catalog.entries("translate")
    assert len(entries) == 12
    for entry in entries:
        assert (entry.task, entry.architecture, entry.resize) == ("translate", "cyclegan_resnet9", 256)
        assert entry.labels is None
        assert entry.sha256 is None  # pinned on first download
        assert entry.licence and entry.description
        assert entry.builder_kwargs == {}
    assert len({e.file_name for e in entries}) == 12  # no two entries share a cache file
    book = catalog.resolve("horse2zebra", task="translate")
    assert book.weights == "BOOK"
    assert book.file_name == "horse2zebra_0.4.0.pth"
    assert book.url is not None and book.url.startswith("https://raw.githubusercontent.com/deep-learning-with-pytorch/")
    official = catalog.resolve("horse2zebra:CYCLEGAN")
    assert official.url == "http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models/horse2zebra.pth"
    assert official.licence == "BSD-2-Clause (CycleGAN)"


def test_catalog_entry_loads_through_the_weight_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_size_weights: Path
) -> None:
    """The default horse2zebra entry, fetched from a file:// mirror (no network), pinned and loaded."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "horse2zebra_0.4.0.pth").write_bytes(full_size_weights.read_bytes())
    monkeypatch.setenv("PTM_WEIGHTS_MIRROR", mirror.as_uri())
    monkeypatch.setenv("PTM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PTM_OFFLINE", "1")
    entry = Catalog.load().resolve("horse2zebra", task="translate")
    translator = build_translator(entry, device="cpu", progress=False)
    assert translator.weights_label == "BOOK"
    assert (tmp_path / "cache" / "horse2zebra_0.4.0.pth").is_file()
    expected = torch.load(full_size_weights, weights_only=True)
    assert all(torch.equal(translator.model.state_dict()[k], v) for k, v in expected.items())


# --- architecture and loading -----------------------------------------------------------


def expected_layout() -> list[tuple[str, tuple[int, ...]]]:
    """The 48 keys of horse2zebra_0.4.0.pth, in order, with their shapes (from REFERENCE.md)."""
    layout = [("model.1", (64, 3, 7, 7)), ("model.4", (128, 64, 3, 3)), ("model.7", (256, 128, 3, 3))]
    for block in range(10, 19):
        layout += [(f"model.{block}.conv_block.{i}", (256, 256, 3, 3)) for i in (1, 5)]
    # ConvTranspose2d weights are [in, out, k, k].
    layout += [("model.19", (256, 128, 3, 3)), ("model.22", (128, 64, 3, 3)), ("model.26", (3, 64, 7, 7))]
    bias_size = {"model.19": 128, "model.22": 64}
    keys = []
    for prefix, shape in layout:
        keys += [(f"{prefix}.weight", shape), (f"{prefix}.bias", (bias_size.get(prefix, shape[0]),))]
    return keys


def test_generator_has_the_books_48_keys_and_11378179_parameters() -> None:
    with torch.device("meta"):
        model = build_generator()
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected_layout()
    assert len(expected_layout()) == 48
    assert sum(p.numel() for p in model.parameters()) == 11_378_179
    norms = [m for m in model.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert len(norms) == 23
    assert all(not n.affine and not n.track_running_stats for n in norms)
    assert isinstance(model.model[-1], torch.nn.Tanh)


def with_old_norm_buffers(state_dict: dict[str, torch.Tensor], ngf: int) -> dict[str, torch.Tensor]:
    """What a torch < 0.4 checkpoint looks like: running stats saved for every InstanceNorm."""
    old = dict(state_dict)
    with torch.device("meta"):
        model = build_generator(ngf=ngf)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.InstanceNorm2d):
            channels = module.num_features
            old[f"{name}.running_mean"] = torch.randn(channels)
            old[f"{name}.running_var"] = torch.rand(channels) + 0.5
            old[f"{name}.num_batches_tracked"] = torch.tensor(7)
    return old


def test_old_checkpoint_with_instance_norm_buffers_loads_and_gives_the_same_output(
    tmp_path: Path, translator: Translator, tiny_weights: Path
) -> None:
    old_state = with_old_norm_buffers(seeded_state_dict(ngf=8), ngf=8)
    assert len(old_state) == 48 + 3 * 23
    old = build_translator(test_entry(8), weights_file=save(old_state, tmp_path / "old.pth"), device="cpu")
    image = photo(64, 48)
    assert np.array_equal(pixels(old.translate(image)), pixels(translator.translate(image)))


def test_module_prefixed_state_dict_loads(tmp_path: Path) -> None:
    state = seeded_state_dict(ngf=8)
    prefixed = save({f"module.{k}": v for k, v in state.items()}, tmp_path / "dp.pth")
    model = build_translator(test_entry(8), weights_file=prefixed, device="cpu").model
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_checkpoint_with_a_missing_key_is_incompatible(tmp_path: Path) -> None:
    state = seeded_state_dict(ngf=8)
    del state["model.22.bias"]
    with pytest.raises(IncompatibleWeights, match=r"missing: model\.22\.bias"):
        build_translator(test_entry(8), weights_file=save(state, tmp_path / "w.pth"), device="cpu")


def test_checkpoint_with_a_wrong_shape_is_incompatible(tmp_path: Path) -> None:
    state = seeded_state_dict(ngf=8)
    state["model.26.weight"] = torch.zeros(3, 8, 5, 5)
    with pytest.raises(IncompatibleWeights, match=r"wrong shape: model\.26\.weight \(3, 8, 5, 5\)"):
        build_translator(test_entry(8), weights_file=save(state, tmp_path / "w.pth"), device="cpu")


def test_batch_norm_buffers_at_other_positions_are_not_dropped() -> None:
    state = seeded_state_dict(ngf=8)
    state["model.1.running_mean"] = torch.zeros(8)  # model.1 is a conv, not a norm
    with pytest.raises(IncompatibleWeights, match=r"unexpected: model\.1\.running_mean"):
        architectures.build(test_entry(8), state)


def test_entry_for_another_architecture_is_refused(tiny_weights: Path) -> None:
    entry = Entry(model="x", weights="Y", task="translate", architecture="resnet18", labels=None)
    with pytest.raises(ConfigError, match="cyclegan_resnet9"):
        build_translator(entry, weights_file=tiny_weights, device="cpu")
    odd = Entry(model="x", weights="Y", task="translate", architecture="cyclegan_resnet9", builder_kwargs={"x": 1})
    with pytest.raises(ConfigError, match="builder_kwargs x"):
        build_translator(odd, weights_file=tiny_weights, device="cpu")


# --- the book's recipe ----------------------------------------------------------------------


def books_translation(image: Image.Image, weights: Path, ngf: int) -> Image.Image:
    """Chapter 2.2's code path, with the generator built here (same architecture)."""
    from torchvision import transforms

    net_g = build_generator(ngf=ngf)
    net_g.load_state_dict(torch.load(weights, weights_only=True))
    net_g.eval()
    preprocess = transforms.Compose([transforms.Resize(256), transforms.ToTensor()])
    batch_t = torch.unsqueeze(preprocess(image), 0)
    batch_out = net_g(batch_t)
    out_t = (batch_out.data.squeeze() + 1.0) / 2.0
    return transforms.ToPILImage()(out_t)


def test_default_size_matches_the_books_code_with_the_full_architecture(full_size_weights: Path) -> None:
    # The catalog's horse2zebra entry, with seeded weights in place of the download.
    entry = Catalog.load().resolve("horse2zebra", task="translate")
    translator = build_translator(entry, weights_file=full_size_weights, device="cpu")
    image = Image.open(DATA / "chelsea.png").convert("RGB")  # 451x300: Resize(256) gives 384x256
    book = books_translation(image, full_size_weights, ngf=64)
    ours = translator.run_at(image)
    assert ours.size == book.size == (384, 256)
    # ptm rounds to 8 bits where ToPILImage truncates: at most 1 level apart.
    diff = abs_diff(ours, book)
    assert diff.max() <= 1
    assert (diff == 0).mean() > 0.4


def test_sizes_that_are_not_multiples_of_four_keep_the_inputs_size(translator: Translator, tiny_weights: Path) -> None:
    image = photo(1500, 1220)  # the book's horse photo's size: Resize(256) gives 314x256
    book = books_translation(image, tiny_weights, ngf=8)
    assert book.size == (316, 256)  # the generator rounds up to a multiple of 4
    assert translator.run_at(image, 256).size == (314, 256)
    assert translator.translate(image, size=256).size == (1500, 1220)


# --- output size ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(333, 217), (217, 333), (1, 1), (3, 2), (2, 3), (5, 4), (1, 9), (9, 1)])
@pytest.mark.parametrize("run_size", [256, 64, "full"])
def test_output_has_the_inputs_size(translator: Translator, size: tuple[int, int], run_size: int | str) -> None:
    image = photo(max(size), max(size)).resize(size)
    out = translator.translate(image, size=run_size)  # type: ignore[arg-type]
    assert out.size == size
    assert out.mode == "RGB"


def test_tiny_images_run_at_the_minimum_side(translator: Translator) -> None:
    assert translator.run_at(Image.new("RGB", (3, 2), "red"), "full").size == (24, 16)
    assert translator.run_at(Image.new("RGB", (1, 1), "red"), 4).size == (16, 16)


def test_exif_rotated_photo_keeps_its_upright_size(translator: Translator) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    buffer = io.BytesIO()
    photo(60, 36).save(buffer, "JPEG", exif=exif.tobytes())
    upright = load_image(buffer.getvalue(), name="phone.jpg")
    assert upright.size == (36, 60)
    assert translator.translate(upright).size == (36, 60)
    assert translator.translate(upright, size="full").size == (36, 60)


def test_non_rgb_images_are_converted(translator: Translator) -> None:
    assert translator.translate(Image.new("L", (30, 20), 128)).size == (30, 20)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0}, "size must be"),
        ({"size": "big"}, "size must be"),
        ({"size": True}, "size must be"),
        ({"tile": 8}, "tile must be"),
        ({"tile": 128, "overlap": 128}, "overlap must be"),
        ({"overlap": -1}, "overlap must be"),
    ],
)
def test_bad_settings_are_usage_errors(translator: Translator, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        translator.translate(Image.new("RGB", (8, 8)), **kwargs)  # type: ignore[arg-type]


# --- tiling -------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(1, 3000).map(lambda n: 4 * n),
    tile=st.integers(8, 300).map(lambda n: 4 * n),
    overlap=st.integers(0, 200),
)
def test_tiles_cover_on_the_stride_grid_and_weights_sum_to_one(length: int, tile: int, overlap: int) -> None:
    overlap = min(overlap, tile - 4)
    tile = min(tile, length)
    starts = tiles.tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length
    assert all(s % 4 == 0 for s in starts)
    assert all(b - a <= tile - overlap + 4 for a, b in itertools.pairwise(starts))
    total = torch.zeros(length, dtype=torch.float64)
    for start, weight in zip(starts, tiles.blend_weights(length, tile, starts), strict=True):
        assert weight.min() >= 0
        total[start : start + tile] += weight
    assert torch.allclose(total, torch.ones(length, dtype=torch.float64), atol=1e-6)


@pytest.fixture(scope="module")
def mid_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(seeded_state_dict(ngf=16, seed=1), tmp_path_factory.mktemp("w") / "mid.pth")


@pytest.fixture(scope="module")
def tiling_runs(mid_weights: Path) -> dict[str, np.ndarray]:
    """A 300x200 photo run whole, tiled (128 px tiles) with whole-image statistics, and tiled without."""
    translator = build_translator(test_entry(16), weights_file=mid_weights, device="cpu")
    image = photo(300, 200)
    whole = translator.run_at(image, "full", tile=512)  # 60,000 px: one pass
    calls: list[tuple[int, int]] = []
    tiled = translator.run_at(image, "full", tile=128, on_tile=lambda done, total: calls.append((done, total)))
    stats = translator._whole_image_statistics(image)
    overlap = min(tiles.DEFAULT_OVERLAP, 64)
    again = translator._run_tiled(np.array(image), stats, 128, overlap, None)
    tile_local = translator._run_tiled(np.array(image), None, 128, overlap, None)
    return {
        "whole": pixels(whole),
        "tiled": pixels(tiled),
        "again": again,
        "tile_local": tile_local.astype(np.int16),
        "calls": np.array(calls),
    }


def test_tiled_output_matches_the_one_pass_output(tiling_runs: dict[str, np.ndarray]) -> None:
    assert np.array_equal(tiling_runs["tiled"], tiling_runs["again"])
    diff = abs_diff(tiling_runs["tiled"], tiling_runs["whole"])
    # Measured (ngf=16, seed 1, 128 px tiles, 64 px overlap): max 5, mean 0.09 levels of 255.
    # With the 64 px default on wider tiles (ngf=64, 600x400, 256 px tiles): max 1, mean 0.007.
    assert diff.max() <= 10
    assert diff.mean() < 0.3


def test_whole_image_statistics_are_what_makes_tiles_agree(tiling_runs: dict[str, np.ndarray]) -> None:
    with_global = abs_diff(tiling_runs["tiled"], tiling_runs["whole"]).mean()
    tile_local = abs_diff(tiling_runs["tile_local"], tiling_runs["whole"])
    # Measured: tile-local statistics are off by 18.6 levels on average (max 148), 100 times worse.
    assert tile_local.mean() > 5
    assert with_global * 20 < tile_local.mean()


def tile_edges(length: int, tile: int, overlap: int) -> list[int]:
    starts = tiles.tile_starts(length, tile, overlap)
    return sorted({s for s in starts[1:]} | {s + tile for s in starts[:-1]})


def test_no_seams_where_tiles_meet(tiling_runs: dict[str, np.ndarray]) -> None:
    tiled, whole = tiling_runs["tiled"], tiling_runs["whole"]
    overlap = min(tiles.DEFAULT_OVERLAP, 64)
    columns = tile_edges(300, 128, overlap)
    rows = tile_edges(200, 128, overlap)
    # A seam is a jump between neighbouring pixels that the one-pass output does not have.
    jump_tiled = np.abs(np.diff(tiled, axis=1))[:, [c - 1 for c in columns]].mean()
    jump_whole = np.abs(np.diff(whole, axis=1))[:, [c - 1 for c in columns]].mean()
    assert jump_tiled <= jump_whole * 1.05 + 0.05
    jump_tiled = np.abs(np.diff(tiled, axis=0))[[r - 1 for r in rows]].mean()
    jump_whole = np.abs(np.diff(whole, axis=0))[[r - 1 for r in rows]].mean()
    assert jump_tiled <= jump_whole * 1.05 + 0.05
    # And the error near the lines where tiles meet is no worse than a small factor times the average.
    diff = abs_diff(tiled, whole).astype(np.float64)
    near = np.zeros(diff.shape[:2], dtype=bool)
    for c in columns:
        near[:, max(0, c - 8) : c + 8] = True
    for r in rows:
        near[max(0, r - 8) : r + 8] = True
    assert diff[near].mean() <= 3 * diff.mean() + 0.02


def test_progress_is_reported_per_tile(tiling_runs: dict[str, np.ndarray], translator: Translator) -> None:
    calls = tiling_runs["calls"]
    total = calls[0][1]
    assert total == 4 * 3  # 300 px wide: 4 columns of 128 px tiles; 200 px high: 3 rows
    assert list(calls[:, 1]) == [total] * len(calls)
    assert calls[-1][0] == total and np.all(np.diff(calls[:, 0]) > 0)
    seen: list[tuple[int, int]] = []
    translator.translate(photo(40, 30), on_tile=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 1)]


def test_batching_tiles_does_not_change_the_result(translator: Translator, monkeypatch: pytest.MonkeyPatch) -> None:
    image = photo(300, 180)
    batched = translator.run_at(image, "full", tile=96)
    monkeypatch.setattr(tiles, "TILE_BATCH_PIXELS", 1)  # one tile per forward pass
    single = translator.run_at(image, "full", tile=96)
    assert abs_diff(batched, single).max() <= 1


def test_large_image_takes_statistics_from_a_downscaled_copy(
    translator: Translator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(translate, "STATS_MAX_SIDE", 160)
    image = photo(520, 300)
    seen: list[tuple[int, ...]] = []
    original = Translator._run_whole

    def spy(self: Translator, array: np.ndarray) -> np.ndarray:
        seen.append(array.shape)
        return original(self, array)

    monkeypatch.setattr(Translator, "_run_whole", spy)
    out = translator.translate(image, size="full", tile=128)
    assert out.size == (520, 300)
    assert seen == [(92, 160, 3)]  # the statistics pass: long side 160
    # Statistics from a 3.25x smaller copy are an approximation of the full-resolution ones
    # (measured with these random weights: mean 14 levels off the one-pass result), still
    # better than tile-local statistics (mean 21), and shared by all tiles, so seamless.
    monkeypatch.setattr(translate, "STATS_MAX_SIDE", 1024)
    reference = translator.translate(image, size="full", tile=1024)
    tile_local = translator._run_tiled(np.array(image), None, 128, 64, None)
    assert abs_diff(out, reference).mean() < 0.8 * abs_diff(tile_local, reference).mean()


def test_bf16_stays_close_to_fp32(tiny_weights: Path, translator: Translator) -> None:
    bf16 = build_translator(test_entry(8), weights_file=tiny_weights, device="cpu", precision="bf16")
    image = photo(64, 48)
    diff = abs_diff(bf16.run_at(image, "full"), translator.run_at(image, "full"))
    # Measured: max 8, mean 1.25 levels of 255 (bf16 keeps 8 bits of mantissa).
    assert diff.max() <= 16
    assert diff.mean() < 2.5
    tiled = bf16.translate(photo(150, 100), size="full", tile=64)
    assert tiled.size == (150, 100)


# --- output names -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("horse.jpg", "out/horse-zebra.png"),
        ("photos/2024/horse.final.jpeg", "out/horse.final-zebra.png"),
        ("-", "out/stdin-zebra.png"),
        ("noext", "out/noext-zebra.png"),
    ],
)
def test_output_path_keeps_the_inputs_stem(name: str, expected: str) -> None:
    from ptm_cli.images.inputs import ImageInput
    from ptm_cli.output.imagefiles import Destination

    destination = Destination(directory=Path("out"), suffix="-zebra")
    assert destination.path_for(ImageInput(name, path=None if name == "-" else Path(name))) == Path(expected)
    assert Destination(directory=Path("out"), image_format="JPEG").path_for(ImageInput("a.png")) == Path("out/a.jpg")


def test_full_size_runs_in_one_pass_when_it_fits_the_memory_budget(
    translator: Translator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --tile, an image whose activations fit runs whole: exact, and no statistics pass or overlap."""
    from ptm_cli.settings import tuning

    per_pixel = translate.ACTIVATION_BYTES_PER_PIXEL * 8 / 64  # the tiny generator has 8 filters
    monkeypatch.setattr(tuning, "translate_memory", int(per_pixel * 20_000))
    assert translator.one_pass_pixels() == 20_000
    small, large = photo(160, 120), photo(200, 150)  # 19,200 and 30,000 pixels
    seen: list[tuple[int, int]] = []
    auto = translator.run_at(small, "full", on_tile=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 1)]
    assert np.array_equal(pixels(auto), pixels(translator.run_at(small, "full", tile=10_000)))  # the one-pass result
    seen.clear()
    translator.run_at(large, "full", on_tile=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 1)]  # 200x150 is still under the 512 tiles' own size
    monkeypatch.setattr(translate, "DEFAULT_TILE", 96)
    seen.clear()
    translator.run_at(large, "full", on_tile=lambda done, total: seen.append((done, total)))
    assert seen[-1][1] > 1  # over the budget: tiles
    seen.clear()
    translator.run_at(small, "full", tile=64, on_tile=lambda done, total: seen.append((done, total)))
    assert seen[-1][1] > 1  # an explicit --tile is always honoured


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(3000, 1024, 96), (4000, 1024, 96), (1500, 512, 96), (520, 512, 96)]
)
def test_fitted_tiles_cover_with_as_few_tiles_and_little_more_overlap(length: int, tile: int, overlap: int) -> None:
    """Without --tile, tiles shrink to cover the image with the same number of them, overlapping by about
    the minimum instead of by whatever spreading the largest tiles evenly leaves (365 rows for 3000 in 1024s)."""
    fitted = tiles.fitted_tile(length, tile, overlap)
    assert fitted % 4 == 0 and fitted <= tile
    wide, snug = tiles.tile_starts(length, tile, overlap), tiles.tile_starts(length, fitted, overlap)
    assert len(snug) == len(wide)
    gaps = [b - a for a, b in itertools.pairwise(snug)]
    assert all(fitted - gap >= overlap - 4 for gap in gaps)  # neighbours still overlap by the minimum
    assert len(snug) * fitted <= len(wide) * tile  # never more pixels to run


def test_tiles_count_only_from_the_margin_inside_their_inner_edges() -> None:
    """The default overlap and ramp leave 24 pixels at each inner edge out, where reflected padding reaches."""
    margin = round(tiles.DEFAULT_OVERLAP * (1 - tiles.RAMP_FRACTION) / 2)
    assert margin == 24
    starts = tiles.tile_starts(2000, 512, tiles.DEFAULT_OVERLAP)
    weights = tiles.blend_weights(2000, 512, starts)
    for i, window in enumerate(weights):
        if i > 0:
            assert float(window[:margin].abs().max()) == 0.0
        if i + 1 < len(weights):
            assert float(window[-margin:].abs().max()) == 0.0


@pytest.mark.parametrize("mode", ["plain", "record", "frozen"])
def test_under_bf16_autocast_no_layer_falls_back_to_float32(mode: str) -> None:
    """Padding and every instance norm keep bf16 activations bf16; only the input image is float32."""
    from ptm_cli.nets.cyclegan import norm_layers

    torch.manual_seed(0)
    model = build_generator(ngf=8, n_blocks=2).eval()
    norms = norm_layers(model)
    with torch.inference_mode():
        for norm in norms:
            norm.record = True
        model(torch.rand(1, 3, 40, 32))
        for norm in norms:
            norm.record = mode == "record"
            norm.frozen = norm.recorded if mode == "frozen" else None
    float32_outputs: list[str] = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            module.register_forward_hook(
                lambda m, args, out, name=name: float32_outputs.append(name) if out.dtype == torch.float32 else None
            )
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.rand(2, 3, 40, 32))
    assert y.shape == (2, 3, 40, 32)
    assert float32_outputs == ["model.0"]  # the first padding, of the float32 image
