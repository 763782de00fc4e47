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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import docs_sandbox
import pytest
from helpers import DATA, ROOT


def python_examples(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.DOTALL)


EXAMPLES = python_examples(ROOT / "docs" / "python.md")
README_EXAMPLES = python_examples(ROOT / "README.md")


@dataclass
class Ran:
    done: subprocess.CompletedProcess[str]
    work: Path  # the folder it ran in


def run_example(code: str, sandbox: Path, folder: Path) -> Ran:
    shutil.copytree(sandbox, folder / "sandbox", symlinks=True, copy_function=os.link)
    env = docs_sandbox.environment(folder / "sandbox", folder)
    env["PTM_SERVER"] = "never"  # a library call runs in the caller's process
    work = folder / "sandbox" / "work"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    return Ran(done, work)


@pytest.fixture(scope="module")
def ran(docs_files: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ran]:
    """Every example, run three at a time (most of each is a process importing torch)."""
    codes = {"readme": README_EXAMPLES[0], **{str(index): code for index, code in enumerate(EXAMPLES)}}
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            key: pool.submit(run_example, code, docs_files, tmp_path_factory.mktemp("example"))
            for key, code in codes.items()
        }
        return {key: future.result() for key, future in futures.items()}


def test_the_pages_have_their_python_examples() -> None:
    assert len(EXAMPLES) == 6 and len(README_EXAMPLES) == 1, "a Python example was added or removed: give it a test"


def test_the_readmes_example(ran: dict[str, Ran]) -> None:
    done = ran["readme"].done
    assert done.returncode == 0, done.stderr
    name, label = done.stdout.strip().split(" ", 1)
    labels = (ROOT / "ptm_cli" / "models" / "imagenet_classes.txt").read_text(encoding="utf-8").splitlines()
    assert name == "dog.jpg" and label in labels


def test_classify_and_translate(ran: dict[str, Ran]) -> None:
    done, work = ran["0"].done, ran["0"].work
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["photos/chelsea.jpg", "photos/coffee.jpg", "photos/dog.jpg"]
    for line in lines:
        probability = float(line.split()[-1])
        assert 0 < probability <= 1
    from PIL import Image

    with Image.open(work / "zebra.png") as zebra:
        assert zebra.size == (120, 180)  # the input's size


def test_detection(ran: dict[str, Ran]) -> None:
    done = ran["1"].done
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and all(line.startswith("street.jpg person ") for line in lines)
    for line in lines:
        assert float(line.split()[2]) >= 0.5


def test_segmentation(ran: dict[str, Ran]) -> None:
    done = ran["2"].done
    assert done.returncode == 0, done.stderr
    found = re.fullmatch(r"street\.jpg \((\d+), (\d+)\) person (\d+\.\d)% (\d+)", done.stdout.strip())
    assert found, done.stdout
    from PIL import Image

    with Image.open(DATA / "rocket.jpg") as street:
        assert (int(found[1]), int(found[2])) == (street.height, street.width)  # the photo's own size
    assert 0 < float(found[3]) <= 100 and 0 < int(found[4]) <= 255


def test_vectors(ran: dict[str, Ran]) -> None:
    done = ran["3"].done
    assert done.returncode == 0, done.stderr
    dimension, same, other = done.stdout.split()
    assert int(dimension) == 512  # the catalog's resnet101 here is a seeded ResNet-18
    assert float(same) == 1.0 and -1 < float(other) < 1


def test_a_task_object(ran: dict[str, Ran]) -> None:
    done = ran["4"].done
    assert done.returncode == 0, done.stderr
    record = eval(done.stdout.strip(), {})  # the example prints the record's dict
    assert record["input"] == "photos/dog.jpg" and record["model"] == "resnet101"
    assert [p["rank"] for p in record["predictions"]] == [1, 2, 3]


def test_a_batch_job(ran: dict[str, Ran]) -> None:
    done, work = ran["5"].done, ran["5"].work
    assert done.returncode == 0, done.stderr
    summary = json.loads((work / "run1" / "_SUMMARY.json").read_text())
    assert summary["inputs"] == summary["ok"] == 4 and summary["model"] == "resnet101"
