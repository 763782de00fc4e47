"""The speed options keep the answers: bf16 stays near fp32, --compile gives the eager results."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import DATA, probability_table, run_ptm, save_weights
from PIL import Image, ImageEnhance

from ptm_cli.cache.catalog import Catalog
from ptm_cli.images.inputs import ImageInput
from ptm_cli.tasks.classify import build_classifier

PHOTOS = [DATA / "chelsea.png", DATA / "coffee.png", DATA / "rocket.jpg"]


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory: pytest.TempPathFactory) -> list[ImageInput]:
    """The sample photos at three brightnesses, as JPEGs."""
    folder = tmp_path_factory.mktemp("photos")
    inputs = []
    for photo in PHOTOS:
        image = Image.open(photo).convert("RGB")
        for factor in (0.7, 1.0, 1.3):
            path = folder / f"{photo.stem}-{factor}.jpg"
            ImageEnhance.Brightness(image).enhance(factor).save(path, quality=92)
            inputs.append(ImageInput(path.name, path=path))
    return inputs


def test_bf16_predictions_stay_close_to_fp32(calibrated_resnet18_file: Path, photo_set: list[ImageInput]) -> None:
    entry = Catalog.load().resolve("resnet18", "IMAGENET1K_V1")
    fp32, bf16 = (
        probability_table(
            build_classifier(entry, weights_file=calibrated_resnet18_file, device="cpu", precision=p), photo_set, 4
        )
        for p in ("fp32", "bf16")
    )
    assert fp32.max(dim=1).values.min() > 0.2  # confident enough that top-1 is meaningful
    assert not torch.equal(fp32, bf16)  # bf16 really ran
    assert torch.equal(fp32.argmax(dim=1), bf16.argmax(dim=1))
    # Measured on these nine photos: largest change of one probability 0.022, total variation 0.025.
    assert (fp32 - bf16).abs().max() < 0.1
    assert ((fp32 - bf16).abs().sum(dim=1) / 2).max() < 0.1


@pytest.fixture(scope="module")
def three_class_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("r18")
    save_weights(folder / "r18.pth", "resnet18", seed=2, num_classes=3)
    (folder / "labels.txt").write_text("cat\ncup\nrocket\n")
    entry = '[[model]]\nname = "{name}"\narchitecture = "resnet18"\nnum_classes = 3\nlabels = "labels.txt"\n'
    (folder / "catalog.toml").write_text(
        entry.format(name="r18") + "resize = 80\ncrop = 64\n" + entry.format(name="r18-uncropped") + "resize = 64\n"
    )
    return folder


def test_compile_gives_the_eager_answers(three_class_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTM_CATALOG", str(three_class_catalog / "catalog.toml"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(three_class_catalog / "inductor"))
    args = ["classify", "-m", "r18", "-w", str(three_class_catalog / "r18.pth"), "-f", "jsonl", "--batch-size", "2"]
    photos = [str(p) for p in PHOTOS]
    eager = run_ptm([*args, *photos])
    # Three photos in batches of two: the short last batch is padded to reuse the compiled graph.
    compiled = run_ptm([*args, "--compile", *photos])
    assert eager.code == 0 and compiled.code == 0, compiled.stderr
    assert "Traceback" not in compiled.stderr
    for a, b in zip(eager.records(), compiled.records(), strict=True):
        assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
        for p, q in zip(a["predictions"], b["predictions"], strict=True):
            assert q["probability"] == pytest.approx(p["probability"], abs=1e-4)
    assert len({r["predictions"][0]["probability"] for r in eager.records()}) == 3  # not a constant answer


def test_compile_needs_a_crop(three_class_catalog: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTM_CATALOG", str(three_class_catalog / "catalog.toml"))
    weights = str(three_class_catalog / "r18.pth")
    result = run_ptm(["classify", "-m", "r18-uncropped", "-w", weights, "--compile", str(PHOTOS[0])])
    assert result.code == 2
    assert "--compile needs a fixed input size: give --crop N" in result.stderr
    assert result.stdout == ""


def test_a_compiler_that_fails_is_reported_with_what_to_do(
    three_class_catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("PTM_CATALOG", str(three_class_catalog / "catalog.toml"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(three_class_catalog / "inductor-broken"))
    monkeypatch.setattr(inductor_config.cpp, "cxx", (str(three_class_catalog / "no-such-c++"),))
    weights = str(three_class_catalog / "r18.pth")
    result = run_ptm(["classify", "-m", "r18", "-w", weights, "--compile", "-f", "json", str(PHOTOS[0])])
    assert result.code == 2
    assert "ptm: error: torch.compile failed (" in result.stderr
    assert "run without --compile, or install a C++ compiler" in result.stderr
    assert "Traceback" not in result.stderr
