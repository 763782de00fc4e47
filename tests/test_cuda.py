"""The CUDA paths: same answers as the CPU in fp32, fp16 and bf16, pinned batches, translate and --compile.

Every test here is skipped where no CUDA device is present; on a machine with
one, `pytest tests/test_cuda.py` checks what the CPU suite cannot. The bounds
allow for TF32 convolutions (on by default for cuDNN) and half-precision
rounding, and are not yet confirmed on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DATA, probability_table, run_ptm
from PIL import Image

from ptm_cli.cache.catalog import Catalog, Entry
from ptm_cli.images.inputs import ImageInput
from ptm_cli.nets.cyclegan import build_generator
from ptm_cli.tasks.classify import build_classifier
from ptm_cli.tasks.translate import build_translator

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PHOTOS = [DATA / "chelsea.png", DATA / "coffee.png", DATA / "rocket.jpg"]


def probabilities(weights: Path, device: str, precision: str = "fp32", compile_model: bool = False) -> torch.Tensor:
    entry = Catalog.load().resolve("resnet18", "IMAGENET1K_V1")
    classifier = build_classifier(entry, weights_file=weights, device=device, precision=precision)
    if compile_model:
        classifier.compile()
    inputs = [ImageInput(p.name, path=p) for p in PHOTOS]
    # Batches of two: the last one is short, which the compiled path pads.
    return probability_table(classifier, inputs, batch_size=2)


def total_variation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().sum(dim=1) / 2).max())


def test_fp32_on_cuda_gives_the_cpu_answers(calibrated_resnet18_file: Path) -> None:
    cpu, cuda = probabilities(calibrated_resnet18_file, "cpu"), probabilities(calibrated_resnet18_file, "cuda")
    assert torch.equal(cpu.argmax(dim=1), cuda.argmax(dim=1))
    assert total_variation(cpu, cuda) < 0.02


@pytest.mark.parametrize("precision", ["fp16", "bf16", "auto"])
def test_half_precisions_on_cuda_stay_close(calibrated_resnet18_file: Path, precision: str) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    cpu, cuda = (
        probabilities(calibrated_resnet18_file, "cpu"),
        probabilities(calibrated_resnet18_file, "cuda", precision),
    )
    assert torch.equal(cpu.argmax(dim=1), cuda.argmax(dim=1))
    assert total_variation(cpu, cuda) < 0.1


def test_auto_precision_on_cuda_computes_in_a_half_type(calibrated_resnet18_file: Path) -> None:
    """What auto picks is observed where it matters: the dtype the network really computes in."""
    entry = Catalog.load().resolve("resnet18", "IMAGENET1K_V1")
    classifier = build_classifier(entry, weights_file=calibrated_resnet18_file, device="cuda", precision="auto")
    seen: list[torch.dtype] = []
    classifier.model.fc.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    classifier.predict(torch.zeros(1, 3, 224, 224), top_k=1)
    assert seen and seen[0] in (torch.float16, torch.bfloat16)


def test_compile_on_cuda_gives_the_eager_answers(calibrated_resnet18_file: Path) -> None:
    eager = probabilities(calibrated_resnet18_file, "cuda")
    compiled = probabilities(calibrated_resnet18_file, "cuda", compile_model=True)
    assert torch.equal(eager.argmax(dim=1), compiled.argmax(dim=1))
    assert total_variation(eager, compiled) < 0.02


def test_translate_on_cuda_matches_the_cpu(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "gen.pth"
    torch.save(build_generator(ngf=8).state_dict(), weights)
    entry = Entry(
        model="tiny-gan",
        weights="TEST",
        task="translate",
        architecture="cyclegan_resnet9",
        labels=None,
        resize=256,
        builder_kwargs={"ngf": 8},
    )
    image = Image.open(PHOTOS[0]).convert("RGB").resize((300, 200))
    outputs = {}
    for device in ("cpu", "cuda"):
        translator = build_translator(entry, weights_file=weights, device=device)
        outputs[device] = torch.from_numpy(np.asarray(translator.translate(image, size="full", tile=128), np.int16))
    assert (outputs["cpu"] - outputs["cuda"]).abs().float().mean() < 1.0  # levels of 255
    assert (outputs["cpu"] - outputs["cuda"]).abs().max() <= 8


def test_cli_on_cuda(calibrated_resnet18_file: Path) -> None:
    args = ["classify", "-m", "resnet18", "-w", str(calibrated_resnet18_file), "-f", "jsonl", *map(str, PHOTOS)]
    cpu = run_ptm([*args, "--device", "cpu"])
    cuda = run_ptm([*args, "--device", "cuda", "--precision", "auto"])
    assert cpu.code == 0 and cuda.code == 0, cuda.stderr
    for a, b in zip(cpu.records(), cuda.records(), strict=True):
        assert a["predictions"][0]["index"] == b["predictions"][0]["index"]
    missing = run_ptm([*args, "--device", f"cuda:{torch.cuda.device_count()}"])
    assert missing.code == 2 and "cuda" in missing.stderr
