"""The Python examples in docs/python.md and README.md run as written, on the suite's seeded stand-ins.

The examples name real models (``resnet101``, ``horse2zebra``); tests/docs_sandbox.py gives those
names small seeded networks whose files sit in a cache folder, so every call goes through the real
catalog, cache and pins, and the photos are the sample images under the names the examples use.
Each example runs in a fresh process, in its own copy of the sandbox.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import docs_sandbox
import pytest
from helpers import DATA, ROOT


def python_examples(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.DOTALL)


EXAMPLES = python_examples(ROOT / "docs" / "python.md")
README_EXAMPLES = python_examples(ROOT / "README.md")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("python-examples")
    docs_sandbox.build(root)
    return root


def run_example(code: str, sandbox: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    shutil.copytree(sandbox, tmp_path / "sandbox", symlinks=True, copy_function=os.link)
    env = docs_sandbox.environment(tmp_path / "sandbox", tmp_path)
    env["PTM_SERVER"] = "never"  # a library call runs in the caller's process
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path / "sandbox" / "work",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_pages_have_their_python_examples() -> None:
    assert len(EXAMPLES) == 6 and len(README_EXAMPLES) == 1, "a Python example was added or removed: give it a test"


def test_the_readmes_example(sandbox: Path, tmp_path: Path) -> None:
    done = run_example(README_EXAMPLES[0], sandbox, tmp_path)
    assert done.returncode == 0, done.stderr
    name, label = done.stdout.strip().split(" ", 1)
    labels = (ROOT / "ptm_cli" / "models" / "imagenet_classes.txt").read_text(encoding="utf-8").splitlines()
    assert name == "dog.jpg" and label in labels


def test_classify_and_translate(sandbox: Path, tmp_path: Path) -> None:
    done = run_example(EXAMPLES[0], sandbox, tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["photos/chelsea.jpg", "photos/coffee.jpg", "photos/dog.jpg"]
    for line in lines:
        probability = float(line.split()[-1])
        assert 0 < probability <= 1
    from PIL import Image

    with Image.open(tmp_path / "sandbox" / "work" / "zebra.png") as zebra:
        assert zebra.size == (120, 180)  # the input's size


def test_detection(sandbox: Path, tmp_path: Path) -> None:
    done = run_example(EXAMPLES[1], sandbox, tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and all(line.startswith("street.jpg person ") for line in lines)
    for line in lines:
        assert float(line.split()[2]) >= 0.5


def test_segmentation(sandbox: Path, tmp_path: Path) -> None:
    done = run_example(EXAMPLES[2], sandbox, tmp_path)
    assert done.returncode == 0, done.stderr
    found = re.fullmatch(r"street\.jpg \((\d+), (\d+)\) person (\d+\.\d)% (\d+)", done.stdout.strip())
    assert found, done.stdout
    from PIL import Image

    with Image.open(DATA / "rocket.jpg") as street:
        assert (int(found[1]), int(found[2])) == (street.height, street.width)  # the photo's own size
    assert 0 < float(found[3]) <= 100 and 0 < int(found[4]) <= 255


def test_vectors(sandbox: Path, tmp_path: Path) -> None:
    done = run_example(EXAMPLES[3], sandbox, tmp_path)
    assert done.returncode == 0, done.stderr
    dimension, same, other = done.stdout.split()
    assert int(dimension) == 512  # the catalog's resnet101 here is a seeded ResNet-18
    assert float(same) == 1.0 and -1 < float(other) < 1


def test_a_task_object(sandbox: Path, tmp_path: Path) -> None:
    done = run_example(EXAMPLES[4], sandbox, tmp_path)
    assert done.returncode == 0, done.stderr
    record = eval(done.stdout.strip(), {})  # the example prints the record's dict
    assert record["input"] == "photos/dog.jpg" and record["model"] == "resnet101"
    assert [p["rank"] for p in record["predictions"]] == [1, 2, 3]


def test_a_batch_job(sandbox: Path, tmp_path: Path) -> None:
    done = run_example(EXAMPLES[5], sandbox, tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "sandbox" / "work" / "run1" / "_SUMMARY.json").read_text())
    assert summary["inputs"] == summary["ok"] == 4 and summary["model"] == "resnet101"
