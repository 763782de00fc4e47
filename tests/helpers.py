"""Test helpers: run ptm in-process or as a real process, check what it said, make seeded models.

The fixtures that hand these out (the tiny classifier, seeded weights files) are in conftest.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
# Peak memory is read from /proc (VmHWM), and some tests need its special files: Linux only.
HAS_PROCFS = Path("/proc/self/status").is_file()


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    stdout_bytes: bytes = b""

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines()]


def run_ptm(args: list[str], stdin: bytes = b"") -> Result:
    """Run the CLI in this process, with its own stdin, stdout and stderr."""
    from ptm_cli.cli import run

    out, err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    inp = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = inp, out, err
    try:
        code = run(args)
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
    out.flush()
    err.flush()
    raw = out.buffer.getvalue()  # type: ignore[attr-defined]
    return Result(code, raw.decode(errors="replace"), err.buffer.getvalue().decode(), raw)  # type: ignore[attr-defined]


def assert_refused(result: object, *words: str) -> None:
    """Exit 2 with one ``ptm: error:`` line, last, that holds every one of ``words``; no traceback."""
    code, stderr = result.code, result.stderr  # type: ignore[attr-defined]
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    # One error line, last; a download may have announced itself before it.
    assert lines and lines[-1].startswith("ptm: error: "), stderr
    assert all(not line.startswith("ptm: ") for line in lines[:-1]), stderr
    stderr = lines[-1]
    assert "Traceback" not in stderr
    for word in words:
        assert word in stderr, stderr


def ptm_process(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``python -m ptm_cli`` as a real process (for signals and pipes)."""
    env = {**os.environ, **kwargs.pop("env", {})}
    return subprocess.Popen([sys.executable, "-m", "ptm_cli", *args], env=env, **kwargs)


def seeded_state_dict(architecture: str, seed: int = 0, **builder_kwargs: Any) -> dict[str, torch.Tensor]:
    """A torchvision model's state dict with seeded random weights.

    The last layer is scaled up so the softmax is far from uniform and the
    top-5 order cannot flip on rounding noise.
    """
    import torchvision.models as tvm

    torch.manual_seed(seed)
    model = tvm.get_model(architecture, weights=None, **builder_kwargs).eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(40.0)
    return model.state_dict()


def save_weights(path: Path, architecture: str, seed: int = 0, **builder_kwargs: Any) -> Path:
    torch.save(seeded_state_dict(architecture, seed, **builder_kwargs), path)
    return path


def informative_state_dict(seed: int = 11) -> dict[str, torch.Tensor]:
    """A 4-class MobileNetV3-small whose predictions differ from image to image.

    Freshly initialised BatchNorm statistics make seeded MobileNets answer
    0.25 for every class on every image, which would let "same predictions"
    checks pass vacuously; a few forward passes in train mode calibrate them.
    """
    import torchvision.models as tvm

    torch.manual_seed(seed)
    model = tvm.mobilenet_v3_small(weights=None, num_classes=4)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a plain average over the calibration batches
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        for i in range(4):
            model(torch.randn(16, 3, 64, 64) * (1 + i) + torch.linspace(-1, 1, 16).view(16, 1, 1, 1))
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(20.0)
    return model.eval().state_dict()


def calibrated_state_dict(
    architecture: str, seed: int = 0, *, logit_std: float = 3.0, **builder_kwargs: Any
) -> dict[str, torch.Tensor]:
    """A torchvision classifier with seeded weights that behaves like a trained one on the sample photos.

    Seeded deep ResNets with untouched batch-norm statistics blow their
    activations up (logits of 10^4, every softmax one-hot), which makes any
    precision comparison meaningless. Here the statistics are measured on the
    sample photos (at three brightnesses, and mirrored), and the last layer is
    scaled so that the logits' spread is that of a trained ImageNet model.
    """
    import torchvision.models as tvm
    from PIL import Image, ImageEnhance, ImageOps

    from ptm_cli.images.transforms import Preprocess, preprocess

    recipe = Preprocess(resize=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    images = []
    for name in ("chelsea.png", "coffee.png", "rocket.jpg"):
        photo = Image.open(DATA / name).convert("RGB")
        for factor in (0.7, 1.0, 1.3):
            bright = ImageEnhance.Brightness(photo).enhance(factor)
            images += [preprocess(bright, recipe), preprocess(ImageOps.mirror(bright), recipe)]
    batch = torch.stack(images)
    torch.manual_seed(seed)
    model = tvm.get_model(architecture, weights=None, **builder_kwargs)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
            module.reset_running_stats()
    with torch.no_grad():
        model.train()(batch)
        logits = model.eval()(batch)
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        scale = logit_std / float(logits.std())
        last.weight.mul_(scale)
        last.bias.mul_(scale)
    return model.state_dict()


def probability_table(classifier: Any, inputs: list[Any], batch_size: int) -> torch.Tensor:
    """Every class's probability for each input (rows in input order), from ``classify_images``."""
    from ptm_cli.tasks.classify import classify_images

    results = list(classify_images(inputs, classifier, top_k=1000, batch_size=batch_size))
    assert all(r.ok for r in results), [r.error for r in results]
    table = torch.zeros(len(results), 1000, dtype=torch.float64)
    for row, result in enumerate(results):
        for p in result.predictions or []:
            table[row, p.index] = p.probability
    return table


# A 4-class user-catalog model (labels.txt beside the file) for fast end-to-end runs.
TINY_TOML = """
[[model]]
name = "tiny"
architecture = "mobilenet_v3_small"
num_classes = 4
labels = "labels.txt"
resize = 72
crop = 64
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
"""


TINY_LABELS = ("apple", "banana", "cherry", "date")


@dataclass(frozen=True)
class TinyClassifier:
    """The suite's 4-class catalog model ``tiny``: its catalog, its weights file and its labels."""

    catalog: Path
    weights: Path
    labels: tuple[str, ...] = TINY_LABELS

    @property
    def options(self) -> list[str]:
        """``-m tiny -w WEIGHTS``: the model options of ``classify`` and ``batch classify``."""
        return ["-m", "tiny", "-w", str(self.weights)]

    @property
    def classify(self) -> list[str]:
        """``classify -m tiny -w WEIGHTS``: a command line that takes a format and inputs next."""
        return ["classify", *self.options]

    def args(self, *extra: str) -> list[str]:
        """``classify -m tiny -w WEIGHTS -f jsonl EXTRA``: records a test can read."""
        return [*self.classify, "-f", "jsonl", *extra]


def write_tiny_model(folder: Path) -> TinyClassifier:
    """The suite's 4-class catalog model in ``folder``: catalog and weights files, labels beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(informative_state_dict(), folder / "tiny.pth")
    (folder / "labels.txt").write_text("".join(f"{label}\n" for label in TINY_LABELS))
    (folder / "tiny.toml").write_text(TINY_TOML)
    return TinyClassifier(folder / "tiny.toml", folder / "tiny.pth")


def save_generator(path: Path, seed: int = 7, **builder_kwargs: Any) -> Path:
    """A CycleGAN generator with seeded weights, saved with torch.save."""
    from ptm_cli.nets.cyclegan import build_generator

    torch.manual_seed(seed)
    torch.save(build_generator(**builder_kwargs).state_dict(), path)
    return path


class SeededWeights:
    """Weights files with seeded values, each made once in ``folder`` and then shared (a model costs seconds).

    The same arguments give the same file: a test that changes a file works on a copy.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._made: dict[tuple[object, ...], Path] = {}

    def _file(self, key: tuple[object, ...], make: Callable[[Path], object]) -> Path:
        if key not in self._made:
            path = self.folder / f"{len(self._made):02d}-{key[0]}-{key[1]}.pth"
            make(path)
            self._made[key] = path
        return self._made[key]

    def classifier(self, architecture: str, seed: int = 0, **builder_kwargs: Any) -> Path:
        """A torchvision classifier whose last layer is scaled up (:func:`save_weights`)."""
        key = ("seeded", architecture, seed, *sorted(builder_kwargs.items()))
        return self._file(key, lambda path: save_weights(path, architecture, seed, **builder_kwargs))

    def calibrated(self, architecture: str, seed: int = 0, *, logit_std: float = 3.0, **builder_kwargs: Any) -> Path:
        """A torchvision classifier that acts like a trained one on the sample photos (``calibrated_state_dict``)."""

        def make(path: Path) -> None:
            torch.save(calibrated_state_dict(architecture, seed, logit_std=logit_std, **builder_kwargs), path)

        return self._file(("calibrated", architecture, seed, logit_std, *sorted(builder_kwargs.items())), make)

    def generator(self, seed: int = 7, **builder_kwargs: Any) -> Path:
        """A CycleGAN generator (:func:`save_generator`)."""
        key = ("generator", "cyclegan", seed, *sorted(builder_kwargs.items()))
        return self._file(key, lambda path: save_generator(path, seed, **builder_kwargs))

    def segmenter(self, model: str, seed: int = 0, *, boost: dict[int, float] | None = None) -> Path:
        """A catalog semantic segmentation model whose masks hold several classes (:func:`segmenter_state_dict`)."""
        key = ("segmenter", model, seed, *sorted((boost or {}).items()))
        return self._file(key, lambda path: torch.save(segmenter_state_dict(model, seed, boost=boost), path))

    def detector(self, model: str, seed: int = 0, *, boost: dict[int, float] | None = None) -> Path:
        """A catalog detector that reports the ``boost`` classes (:func:`detector_state_dict`)."""
        key = ("detector", model, seed, *sorted((boost or {}).items()))
        return self._file(key, lambda path: torch.save(detector_state_dict(model, seed, boost=boost), path))


# A local torch.hub repository's hubconf.py: a tiny classifier, and entries that are not models.
HUB_WEIGHTS_URL = "https://example.invalid/tiny-0123abcd.pth"
TINY_HUBCONF = '''
"""A tiny hub repository for ptm's tests."""
import torch
from torch import nn

dependencies = ["torch"]


def _build(num_classes, scale=1.0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
    with torch.no_grad():
        model[-1].weight.mul_(40.0 * scale)
    return model


def tiny(num_classes=1000, scale=1.0):
    """A tiny classifier: one conv, global pooling, a linear layer.

    num_classes: how many logits; scale: multiplies the last layer.
    """
    print("hubconf says hello")
    return _build(num_classes, scale)


def not_a_model():
    """Returns a string, not a model."""
    return "nope"


def sequence_model():
    """Returns a model whose output is not a [N, C] tensor."""
    return nn.Conv2d(3, 4, 3)


def broken():
    raise KeyError("boom inside hubconf")


def needs_weights(url="__URL__"):
    """Downloads its weights with torch.hub.load_state_dict_from_url, default arguments."""
    model = _build(1000)
    state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False)
    model.load_state_dict(state)
    return model
'''.replace("__URL__", HUB_WEIGHTS_URL)


# --- detectors ------------------------------------------------------------------------------------------------


def detector_state_dict(model: str, seed: int = 0, *, boost: dict[int, float] | None = None) -> dict[str, torch.Tensor]:
    """Seeded weights for a catalog detector, with the classes in ``boost`` made likely.

    A detector with random weights scores every class near 1/91 and reports
    nothing above its own threshold; raising the final classification
    biases of a few classes gives it boxes to report (and to compare).
    """
    from ptm_cli.cache.catalog import Catalog
    from ptm_cli.nets import architectures

    entry = Catalog.load(extra=[]).resolve(model)
    torch.manual_seed(seed)
    state = architectures.factory(entry)().state_dict()
    classes = entry.num_classes or 91
    for key, value in state.items():
        # SSD's heads end in one convolution per feature map (anchors x classes outputs); no other bias there
        # has a multiple of 91 outputs.
        final = key.endswith(("cls_score.bias", "cls_logits.bias")) or (
            "classification_head.module_list" in key and key.endswith(".bias") and classes == 91
        )
        if key.endswith(("cls_score.weight", "cls_logits.weight")):
            value.mul_(5)  # initialised near zero: every box would score the same, and ties have no order
        if final and value.numel() % classes == 0:
            rows = value.view(-1, classes)
            for category, amount in (boost or {1: 7.0}).items():
                if category < classes:
                    rows[:, category] += amount
    return state


def segmenter_state_dict(
    model: str, seed: int = 0, *, boost: dict[int, float] | None = None, short_reach: bool = False
) -> dict[str, torch.Tensor]:
    """Seeded weights for a catalog semantic segmentation model whose masks hold many classes, in patches.

    A network with random weights gives every pixel nearly the same class
    scores (its biases dominate). Here the last layer is calibrated on a
    sample photo: each class's scores are centred and scaled to a spread of
    4, so the winning class changes across the photo as a trained model's
    does; the classes in ``boost`` get a head start. ``short_reach`` zeroes
    the residual branches of a DeepLabV3-ResNet (blocks pass their input
    on) and ASPP's dilated branches, so that what a pixel's scores depend on
    is known and small (about 30 pixels), and the image-pooling branch is
    what ties a pixel to the whole image.
    """
    from ptm_cli.cache.catalog import Catalog
    from ptm_cli.images.decode import load_image
    from ptm_cli.images.transforms import Preprocess, preprocess
    from ptm_cli.nets import architectures

    entry = Catalog.load(extra=[]).resolve(model)
    torch.manual_seed(seed)
    net = architectures.factory(entry)()
    x = preprocess(load_image(DATA / "rocket.jpg"), Preprocess(resize=520, mean=entry.mean, std=entry.std))
    # Batch norms take their statistics from the photo, so that signals neither vanish nor explode on the way.
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average of what it sees
    net.train()
    with torch.no_grad():
        net(torch.cat([x[None], x.flip(-1)[None]]))
    net.eval()
    state = net.state_dict()
    classes = entry.num_classes or 21
    if short_reach:
        for key, value in state.items():
            residual = key.startswith("backbone.layer") and (".bn3." in key) and key.endswith(("weight", "bias"))
            dilated = key.startswith("classifier.0.convs.") and key.split(".")[3] in ("1", "2", "3")
            their_norm = dilated and key.split(".")[4] == "1" and key.endswith(("weight", "bias"))  # convs.N.1: BN
            if residual or their_norm:
                value.zero_()
    last = [k for k, v in state.items() if k.startswith("classifier.") and v.shape[:1] == (classes,)]
    weights = [k for k in last if state[k].dim() == 4]
    biases = [k for k in last if state[k].dim() == 1]
    for key in biases:
        state[key].zero_()
    net.load_state_dict(state)
    with torch.inference_mode():
        logits = net(x[None])["out"][0].flatten(1)
    mean, spread = logits.mean(1), logits.std(1).clamp_min(1e-6)
    scale = 4.0 / spread
    for key in weights:
        state[key].mul_(scale.view(-1, 1, 1, 1))
    state[biases[0]].copy_(-mean * scale)
    for index, amount in (boost or {}).items():
        state[biases[0]][index] += amount
    return state


def torchvision_detector(model: str, state: dict[str, torch.Tensor], weights: str = "DEFAULT") -> tuple[Any, Any]:
    """torchvision's own model for ``model``'s pretrained weights, holding ``state``, and its ``weights.transforms()``.

    torchvision's builder runs as documented, with the one download it would
    make answered by ``state``.
    """
    import torchvision.models as tvm

    enum = tvm.get_model_weights(model)
    variant = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    saved = type(variant).get_state_dict
    type(variant).get_state_dict = lambda self, *args, **kwargs: {k: v.clone() for k, v in state.items()}
    try:
        built = tvm.get_model(model, weights=variant).eval()
    finally:
        type(variant).get_state_dict = saved
    return built, variant.transforms()
