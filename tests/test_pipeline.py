"""The classify pipeline around the model: its answers are the model's exactly, however torch's threads wait."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DATA
from PIL import Image, ImageEnhance
from torch import nn

from ptm_cli.cache.catalog import Entry
from ptm_cli.images.inputs import ImageInput
from ptm_cli.images.transforms import Preprocess, preprocess, to_tensor, to_tensor_without_torch
from ptm_cli.nets.device import Precision, place_classifier
from ptm_cli.runtime.tuning import OpenMPPace, tune_process
from ptm_cli.tasks import _pipeline
from ptm_cli.tasks.classify import Classifier, SharedClassifier, classify_images

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
    return Classifier(
        entry,
        place_classifier(model.eval(), device),
        weights_label="seeded",
        labels=None,
        preprocess=RECIPE,
        device=device,
        precision=Precision("fp32"),
    )


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
            list(
                classify_images(
                    [ImageInput(p.name, path=p) for p in photos],
                    classifier_for(TinyNet(fail=True)),
                    batch_size=2,
                    workers=2,
                )
            )
        except RuntimeError as exc:
            outcome.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive()
    assert [str(e) for e in outcome] == ["the model broke"]


@pytest.fixture(params=["taking turns", "overlapping"])
def schedule(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the pipeline schedules decoding: between forward passes (the model's threads have every
    core) and alongside them (a GPU, or fewer torch threads than cores)."""
    turns = request.param == "taking turns"
    monkeypatch.setattr(_pipeline, "takes_turns", lambda device: turns)
    return str(request.param)


def test_pipeline_answers_are_the_model_on_the_preprocessed_images_bit_for_bit(
    photos: list[Path], schedule: str
) -> None:
    from ptm_cli.images.decode import load_image

    classifier = classifier_for(TinyNet())
    results = list(classify_images([ImageInput(p.name, path=p) for p in photos], classifier, top_k=4, batch_size=5))
    batch = torch.stack([preprocess(load_image(p), RECIPE) for p in photos])
    with torch.inference_mode():
        expected = torch.softmax(classifier.model(batch.contiguous(memory_format=torch.channels_last)), dim=1)
    for row, result in zip(expected.tolist(), results, strict=True):
        assert result.predictions is not None
        assert {p.index: p.probability for p in result.predictions} == dict(enumerate(row))
    assert len({r.predictions[0].index for r in results if r.predictions}) > 1  # not a constant answer


def team_holders() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ptm-openmp-team"]


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "I;16", "CMYK"])
@pytest.mark.parametrize("recipe", [RECIPE, Preprocess(resize=40, crop=32)])
def test_the_tensor_without_torch_is_the_torch_tensor_bit_for_bit(mode: str, recipe: Preprocess) -> None:
    # Every 8-bit value in every channel, then noise in an odd size.
    ramp = np.stack([np.arange(256, dtype=np.uint8).reshape(16, 16)] * 3, axis=-1)
    noise = np.random.default_rng(5).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for pixels in (ramp, noise):
        image = Image.fromarray(pixels).convert(mode)
        expected, got = to_tensor(image, recipe), to_tensor_without_torch(image, recipe)
        assert got.shape == expected.shape and got.dtype == expected.dtype == torch.float32
        assert torch.equal(got, expected)
        assert got.permute(1, 2, 0).is_contiguous()  # channels_last memory, as the models run


def test_the_pace_keeper_lets_openmp_spin_only_while_the_process_gets_its_cores() -> None:
    pace = OpenMPPace(cores=2)
    try:
        assert not pace.spinning and len(team_holders()) == 1  # a run starts with the threads asleep
        pace.judge(cpu_s=1.8, wall_s=1.0)  # 90 % of two cores: an idle machine
        assert pace.spinning and team_holders() == []
        pace.judge(cpu_s=1.5, wall_s=1.0)  # 75 %: between the two marks, nothing changes
        assert pace.spinning
        pace.judge(cpu_s=0.9, wall_s=1.0)  # 45 %: other processes want the cores
        assert not pace.spinning and len(team_holders()) == 1
        pace.judge(cpu_s=1.5, wall_s=1.0)
        assert not pace.spinning
        pace.judge(cpu_s=0.03, wall_s=0.01)  # too short to judge
        assert not pace.spinning
    finally:
        pace.close()
    assert team_holders() == []


def test_runs_leave_no_thread_behind(photos: list[Path]) -> None:
    inputs = [ImageInput(p.name, path=p) for p in photos]
    assert all(r.ok for r in classify_images(inputs, classifier_for(TinyNet()), batch_size=4))
    with pytest.raises(RuntimeError):
        list(classify_images(inputs, classifier_for(TinyNet(fail=True)), batch_size=4))
    stopped = classify_images(inputs, classifier_for(TinyNet()), batch_size=4)
    next(stopped)
    stopped.close()  # a reader that stops early (a closed pipe)
    assert team_holders() == []
    assert [t.name for t in threading.enumerate() if t.name.startswith("ptm-decode")] == []


class CountingNet(TinyNet):
    """TinyNet that records the size of every batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        return super().forward(x)


def test_failed_inputs_keep_their_place_and_batches_stay_full(
    photos: list[Path], schedule: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    names = [p.name for p in photos]
    inputs = [ImageInput(p.name, path=p) for p in photos]
    for position in (1, 2, 7):  # three failures inside the first two batches
        inputs.insert(position, ImageInput(f"bad{position}", path=broken))
    net = CountingNet()
    results = list(classify_images(inputs, classifier_for(net), batch_size=4, workers=2))
    assert [r.input for r in results] == [i.name for i in inputs]
    assert [r.input for r in results if not r.ok] == ["bad1", "bad2", "bad7"]
    assert [r.input for r in results if r.ok] == names
    # Taking turns fetches more images when some fail, so every batch but the last is full.
    assert net.batches == [4, 4, 4]


@pytest.mark.parametrize("spinning", [True, False])
def test_the_model_runs_only_between_decoding_turns_while_its_threads_spin(
    photos: list[Path], monkeypatch: pytest.MonkeyPatch, spinning: bool
) -> None:
    """Taking turns, no image is being decoded while a forward pass runs; asleep (a busy machine) they overlap."""
    tune_process()  # the pace keeper, which knows whether the threads sleep, runs only in a tuned process
    monkeypatch.setattr(_pipeline, "takes_turns", lambda device: True)
    decoding = 0
    lock = threading.Lock()
    overlaps: list[int] = []
    real_open = ImageInput.open

    def slow_open(self: ImageInput, **kwargs: object) -> object:
        nonlocal decoding
        with lock:
            decoding += 1
        try:
            time.sleep(0.05)  # a decode long enough to still run when the next forward pass starts
            return real_open(self, **kwargs)  # type: ignore[arg-type]
        finally:
            with lock:
                decoding -= 1

    class WatchingNet(TinyNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            overlaps.append(decoding)
            return super().forward(x)

    monkeypatch.setattr(ImageInput, "open", slow_open)
    classifier = classifier_for(WatchingNet())
    classifier.openmp_spinning = spinning  # passes this short are never judged: it stays so
    results = list(classify_images([ImageInput(p.name, path=p) for p in photos], classifier, batch_size=4, workers=2))
    assert all(r.ok for r in results) and len(overlaps) == 3
    if spinning:
        assert overlaps == [0, 0, 0]
    else:
        assert overlaps[0] > 0  # the next images were decoding during the first pass


def test_a_cpu_model_with_a_thread_per_core_takes_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(_pipeline.os, "sched_getaffinity", lambda pid: {0, 1})
    assert _pipeline.takes_turns(cpu)
    monkeypatch.setattr(_pipeline.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})  # cores left for decoding
    assert not _pipeline.takes_turns(cpu)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # one thread: no barrier to stall
    monkeypatch.setattr(_pipeline.os, "sched_getaffinity", lambda pid: {0})
    assert not _pipeline.takes_turns(cpu)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(_pipeline.os, "sched_getaffinity", lambda pid: {0, 1})
    assert not _pipeline.takes_turns(torch.device("meta"))  # not a CPU (as a GPU): decoding overlaps
    assert not _pipeline.takes_turns(None)  # a warm server's shared model: its passes are not this run's


def test_a_classifier_starts_its_next_run_the_way_its_last_pass_left_the_threads(photos: list[Path]) -> None:
    tune_process()
    classifier = classifier_for(TinyNet())
    assert classifier.openmp_spinning is False  # the first run starts asleep
    pace = OpenMPPace(cores=2, spinning=True)
    try:
        assert pace.spinning and team_holders() == []
    finally:
        pace.close()
    list(classify_images([ImageInput(p.name, path=p) for p in photos[:2]], classifier, batch_size=2))
    # Tiny passes are too short to judge: the state stays as it was.
    assert classifier.openmp_spinning is False
    classifier.openmp_spinning = True
    list(classify_images([ImageInput(p.name, path=p) for p in photos[:2]], classifier, batch_size=2))
    assert classifier.openmp_spinning is True
    assert team_holders() == []


def test_decoding_threads_run_torch_only_for_the_warm_servers_shared_classifier(
    photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ptm_cli.images import transforms

    seen: list[bool] = []
    real = transforms.preprocess

    def recording(image: Image.Image, p: Preprocess, *, without_torch: bool = False) -> torch.Tensor:
        seen.append(without_torch)
        return real(image, p, without_torch=without_torch)

    monkeypatch.setattr(transforms, "preprocess", recording)
    classifier = classifier_for(TinyNet())
    list(classify_images([ImageInput(p.name, path=p) for p in photos[:2]], classifier, batch_size=2))
    assert seen == [True, True]  # a model of its own (CPU here; a GPU alike): numpy and the fused kernel

    # The warm server's classifier: forward passes shared with other clients.
    shared = SharedClassifier(classifier, classifier.predict_each, "seeded")
    seen.clear()
    list(classify_images([ImageInput(p.name, path=p) for p in photos[:2]], shared, batch_size=2))
    assert seen == [False, False]
