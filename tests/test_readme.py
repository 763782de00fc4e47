"""README.md's Python examples run as written, against the suite's small seeded models.

A catalog of this test's own gives the names the examples use (``resnet101``,
``horse2zebra``) to small seeded networks whose files sit in a cache folder,
so every call goes through the real catalog, cache and pins; the photos are
the sample images. Each example runs in a fresh process, in a folder that
holds what it names (``photos/``, ``horse.jpg``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import DATA, ROOT, detector_state_dict, seeded_state_dict, segmenter_state_dict

README = (ROOT / "README.md").read_text(encoding="utf-8")

CATALOG = """
[[model]]
name = "resnet101"
weights = "IMAGENET1K_V1"
architecture = "resnet18"
file_name = "readme-resnet.pth"
resize = 256
crop = 224
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
default = true

[[model]]
name = "horse2zebra"
weights = "BOOK"
task = "translate"
architecture = "cyclegan_resnet9"
builder_kwargs = { ngf = 8, n_blocks = 2 }
file_name = "readme-generator.pth"
resize = 64
default = true

[[model]]
name = "fasterrcnn_resnet50_fpn_v2"
weights = "COCO_V1"
task = "detect"
architecture = "ssdlite320_mobilenet_v3_large"
file_name = "readme-detector.pth"
num_classes = 91
labels = "{coco}"
default = true

[[model]]
name = "deeplabv3_resnet101"
weights = "COCO_WITH_VOC_LABELS_V1"
task = "segment"
architecture = "lraspp_mobilenet_v3_large"
file_name = "readme-segmenter.pth"
num_classes = 21
labels = "{voc}"
resize = 520
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
default = true
"""


def python_examples(section: str) -> list[str]:
    """The ```python blocks of one of README's level-2 sections."""
    start = README.index(f"## {section}\n")
    end = README.find("\n## ", start + 1)
    text = README[start : end if end != -1 else None]
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


EXAMPLES = python_examples("From Python")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    cache = root / "cache"
    cache.mkdir()
    torch.save(seeded_state_dict("resnet18"), cache / "readme-resnet.pth")
    from ptm_cli.nets.cyclegan import build_generator

    torch.manual_seed(3)
    torch.save(build_generator(ngf=8, n_blocks=2).state_dict(), cache / "readme-generator.pth")
    torch.save(detector_state_dict("ssdlite320_mobilenet_v3_large"), cache / "readme-detector.pth")
    from ptm_cli.cache.catalog import CATALOG_DIR

    torch.save(segmenter_state_dict("lraspp_mobilenet_v3_large", boost={15: 1.0}), cache / "readme-segmenter.pth")
    catalog = CATALOG.replace("{coco}", str(CATALOG_DIR / "coco_categories.txt"))
    (root / "catalog.toml").write_text(catalog.replace("{voc}", str(CATALOG_DIR / "voc_classes.txt")))
    (root / "photos").mkdir()
    from PIL import Image

    for name in ("chelsea.png", "coffee.png"):
        Image.open(DATA / name).convert("RGB").save(root / "photos" / f"{Path(name).stem}.jpg", quality=90)
    Image.open(DATA / "chelsea.png").convert("RGB").save(root / "photos" / "dog.jpg", quality=90)
    Image.open(DATA / "rocket.jpg").convert("RGB").resize((120, 180)).save(root / "horse.jpg")
    Image.open(DATA / "rocket.jpg").convert("RGB").save(root / "street.jpg")
    return root


def run_example(code: str, folder: Path, work: Path) -> subprocess.CompletedProcess[str]:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(folder, work, ignore=shutil.ignore_patterns("cache"))
    env = {
        **os.environ,
        "PTM_CATALOG": str(folder / "catalog.toml"),
        "PTM_CACHE_DIR": str(folder / "cache"),
        "PTM_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_readme_has_its_python_examples() -> None:
    assert len(EXAMPLES) == 6, "a Python example was added or removed: give it a test below"


def test_classify_and_translate(folder: Path, tmp_path: Path) -> None:
    done = run_example(EXAMPLES[0], folder, tmp_path / "work")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["photos/chelsea.jpg", "photos/coffee.jpg", "photos/dog.jpg"]
    for line in lines:
        probability = float(line.split()[-1])
        assert 0 < probability <= 1
    from PIL import Image

    with Image.open(tmp_path / "work" / "zebra.png") as zebra:
        assert zebra.size == (120, 180)  # the input's size


def test_detection(folder: Path, tmp_path: Path) -> None:
    done = run_example(EXAMPLES[1], folder, tmp_path / "work")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and all(line.startswith("street.jpg person ") for line in lines)
    for line in lines:
        assert float(line.split()[2]) >= 0.5


def test_segmentation(folder: Path, tmp_path: Path) -> None:
    done = run_example(EXAMPLES[2], folder, tmp_path / "work")
    assert done.returncode == 0, done.stderr
    found = re.fullmatch(r"street\.jpg \((\d+), (\d+)\) person (\d+\.\d)% (\d+)", done.stdout.strip())
    assert found, done.stdout
    from PIL import Image

    with Image.open(DATA / "rocket.jpg") as street:
        assert (int(found[1]), int(found[2])) == (street.height, street.width)  # the photo's own size
    assert 0 < float(found[3]) <= 100 and 0 < int(found[4]) <= 255


def test_vectors(folder: Path, tmp_path: Path) -> None:
    done = run_example(EXAMPLES[3], folder, tmp_path / "work")
    assert done.returncode == 0, done.stderr
    dimension, same, other = done.stdout.split()
    assert int(dimension) == 512  # the catalog's resnet101 here is a seeded ResNet-18
    assert float(same) == 1.0 and -1 < float(other) < 1


def test_a_task_object(folder: Path, tmp_path: Path) -> None:
    done = run_example(EXAMPLES[4], folder, tmp_path / "work")
    assert done.returncode == 0, done.stderr
    record = eval(done.stdout.strip(), {})  # the example prints the record's dict
    assert record["input"] == "photos/dog.jpg" and record["model"] == "resnet101"
    assert [p["rank"] for p in record["predictions"]] == [1, 2, 3]


def test_a_batch_job(folder: Path, tmp_path: Path) -> None:
    done = run_example(EXAMPLES[5], folder, tmp_path / "work")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "work" / "run1" / "_SUMMARY.json").read_text())
    assert summary["inputs"] == summary["ok"] == 3 and summary["model"] == "resnet101"
