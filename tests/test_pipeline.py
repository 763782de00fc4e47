"""The classify pipeline around the model: its answers are the model's, exactly, and a failing model ends it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from helpers import DATA
from PIL import Image, ImageEnhance
from torch import nn

from ptm_cli.catalog import Entry
from ptm_cli.classify import Classifier, classify_images
from ptm_cli.device import Precision, place_classifier
from ptm_cli.inputs import ImageInput
from ptm_cli.transforms import Preprocess, preprocess

RECIPE = Preprocess(resize=40, crop=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


class TinyNet(nn.Module):
    """Mean colour -> 4 logits, or a failure."""

    def __init__(self, fail: bool = False):
        super().__init__()
        torch.manual_seed(3)
        self.fc = nn.Linear(3, 4)
        self.fail = fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail:
            raise RuntimeError("the model broke")
        return self.fc(x.mean(dim=(2, 3))) * 20


def classifier_for(model: nn.Module) -> Classifier:
    entry = Entry(model="tiny", weights="seeded", task="classify", architecture="tiny", labels=None)
    device = torch.device("cpu")
    return Classifier(entry, place_classifier(model.eval(), device), weights_label="seeded", labels=None,
                      preprocess=RECIPE, device=device, precision=Precision("fp32"))  # fmt: skip


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i in range(12):
        image = Image.open(DATA / ("chelsea.png", "coffee.png")[i % 2]).convert("RGB").resize((120, 90))
        path = folder / f"{i:02}.jpg"
        ImageEnhance.Brightness(image).enhance(0.6 + 0.07 * i).save(path, quality=90)
        paths.append(path)
    return paths


def test_a_failing_model_ends_the_run_without_leaving_decoders_waiting(photos: list[Path]) -> None:
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            list(classify_images([ImageInput(p.name, path=p) for p in photos], classifier_for(TinyNet(fail=True)),
                                 batch_size=2, workers=2))  # fmt: skip
        except RuntimeError as exc:
            outcome.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive()
    assert [str(e) for e in outcome] == ["the model broke"]


def test_pipeline_answers_are_the_model_on_the_preprocessed_images_bit_for_bit(photos: list[Path]) -> None:
    from ptm_cli.imageio import load_image

    classifier = classifier_for(TinyNet())
    results = list(classify_images([ImageInput(p.name, path=p) for p in photos], classifier, top_k=4, batch_size=5))
    batch = torch.stack([preprocess(load_image(p), RECIPE) for p in photos])
    with torch.inference_mode():
        expected = torch.softmax(classifier.model(batch.contiguous(memory_format=torch.channels_last)), dim=1)
    for row, result in zip(expected.tolist(), results, strict=True):
        assert result.predictions is not None
        assert {p.index: p.probability for p in result.predictions} == dict(enumerate(row))
    assert len({r.predictions[0].index for r in results if r.predictions}) > 1  # not a constant answer
