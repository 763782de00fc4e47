"""Records that must not change by accident: every task's output against committed expected files.

The inputs are the committed files in ``tests/golden/images`` (hostile ones
among them) and the sample photos; the models are the suite's seeded tiny
classifier and a seeded small generator. Each scenario runs ``ptm`` the way a
user would (in-process, in a batch job, through a warm server) and its
output must equal ``tests/golden/expected/<scenario>`` byte for byte.

Floating-point results depend on the CPU's vector instructions (oneDNN picks
other kernels on AVX2 than on AVX-512), so the byte comparison is made where
the CPU has the capability the expected files were written on (meta.json);
elsewhere every number may move by 1e-3 relative (images by 2 levels) and
everything else must still be identical. A deliberate change of records runs
``PTM_UPDATE_GOLDEN=1 pytest tests/test_golden.py`` and says why in its commit.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import DATA, informative_state_dict, run_ptm
from PIL import Image

GOLDEN = Path(__file__).resolve().parent / "golden"
EXPECTED = GOLDEN / "expected"
UPDATE = os.environ.get("PTM_UPDATE_GOLDEN") == "1"
LABELS = "apple\nbanana\ncherry\ndate\n"
CATALOG = """
[[model]]
name = "tiny"
architecture = "mobilenet_v3_small"
num_classes = 4
labels = "labels.txt"
resize = 72
crop = 64
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]

[[model]]
name = "tinygen"
task = "translate"
architecture = "cyclegan_resnet9"
builder_kwargs = { ngf = 8, n_blocks = 2 }
resize = 48
"""
NON_UTF8 = os.fsdecode(b"caf\xe9.png")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def cpu_capability() -> str:
    return str(torch.backends.cpu.get_cpu_capability())


def exact_here() -> bool:
    """Whether this CPU computes as the one the expected files were written on."""
    meta = json.loads((EXPECTED / "meta.json").read_text())
    return bool(meta["cpu_capability"] == cpu_capability())


@pytest.fixture(scope="module")
def workspace() -> Iterator[Path]:
    """A folder with the inputs (named relatively), the models, and nothing else; the tests run inside it."""
    root = Path(tempfile.mkdtemp(prefix="ptm-golden-"))
    try:
        images = root / "in"
        shutil.copytree(GOLDEN / "images", images)
        for name in ("chelsea.png", "coffee.png", "rocket.jpg"):
            shutil.copy(DATA / name, images / name)
        (images / "sub").mkdir()
        shutil.copy(GOLDEN / "images" / "gradient.png", images / "sub" / "nested.png")
        shutil.copy(GOLDEN / "images" / "gray.png", images / NON_UTF8)
        (images / "a-folder.png").mkdir()
        torch.manual_seed(0)
        torch.save(informative_state_dict(), root / "tiny.pth")
        from ptm_cli.nets.cyclegan import build_generator

        torch.manual_seed(7)
        torch.save(build_generator(ngf=8, n_blocks=2).state_dict(), root / "tinygen.pth")
        (root / "labels.txt").write_text(LABELS)
        (root / "catalog.toml").write_text(CATALOG)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def inside(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("PTM_CATALOG", str(workspace / "catalog.toml"))
    for folder in ("out", "job", "job-some", "job-parquet", "job-translate"):
        shutil.rmtree(workspace / folder, ignore_errors=True)
    return workspace


def check(name: str, actual: str) -> None:
    """``actual`` against the expected file ``name`` (written instead, with PTM_UPDATE_GOLDEN=1)."""
    path = EXPECTED / name
    if UPDATE:
        EXPECTED.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8", errors="surrogateescape")
        return
    expected = path.read_text(encoding="utf-8", errors="surrogateescape")
    if exact_here():
        assert actual == expected, f"{name} changed"
        return
    assert NUMBER.split(actual) == NUMBER.split(expected), f"{name} changed beyond its numbers"
    for got, want in zip(NUMBER.findall(actual), NUMBER.findall(expected), strict=True):
        assert float(got) == pytest.approx(float(want), rel=1e-3, abs=1e-6), f"{name}: {got} != {want}"


def check_image(name: str, data: bytes) -> None:
    """A written image against the expected pixels (the file's bytes may differ with the PNG encoder)."""
    path = EXPECTED / "images" / name
    image = Image.open(io.BytesIO(data))
    image.load()
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, "PNG")
        return
    expected = Image.open(path)
    assert (image.mode, image.size) == (expected.mode, expected.size), name
    if exact_here():
        assert image.tobytes() == expected.tobytes(), f"{name}: pixels changed"
        return
    worst = max(abs(a - b) for a, b in zip(image.tobytes(), expected.tobytes(), strict=True))
    assert worst <= 2, f"{name}: pixels moved by {worst} levels"


CLASSIFY = ["classify", "-m", "tiny", "-w", "tiny.pth", "-r", "in", "missing.jpg"]


def test_meta_names_the_cpu_capability() -> None:
    if UPDATE:
        meta = {"cpu_capability": cpu_capability(), "torch": torch.__version__}
        EXPECTED.mkdir(parents=True, exist_ok=True)
        (EXPECTED / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    assert json.loads((EXPECTED / "meta.json").read_text())["cpu_capability"]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "tsv", "table"])
def test_classify_records(inside: Path, fmt: str) -> None:
    result = run_ptm([*CLASSIFY, "-f", fmt, "-k", "3" if fmt == "jsonl" else "2", "--batch-size", "4"])
    assert result.code == 1, result.stderr  # the hostile inputs fail, the others are classified
    check(f"classify.{fmt}", result.stdout_bytes.decode("utf-8", "surrogateescape"))
    check(f"classify.{fmt}.stderr", result.stderr)


def test_classify_from_a_list_and_stdin(inside: Path) -> None:
    listing = "".join(f"{name}\n" for name in ("in/gradient.jpg", "in/empty.jpg", "in/sub/nested.png", "nowhere"))
    result = run_ptm(
        ["classify", "-m", "tiny", "-w", "tiny.pth", "--files-from", "-", "-f", "jsonl"], stdin=listing.encode()
    )
    check("classify-files-from.jsonl", result.stdout)
    photo = (inside / "in" / "coffee.png").read_bytes()
    result = run_ptm(["classify", "-m", "tiny", "-w", "tiny.pth", "-", "-f", "jsonl", "-k", "4"], stdin=photo)
    assert result.code == 0, result.stderr
    check("classify-stdin.jsonl", result.stdout)


def _without_seconds(text: str) -> str:
    lines = []
    for line in text.splitlines():
        record = json.loads(line)
        record.pop("seconds", None)
        lines.append(json.dumps(record))
    return "".join(f"{line}\n" for line in lines)


TRANSLATE_INPUTS = [
    "in/gradient.jpg",
    "in/cmyk.jpg",
    "in/notes.png",
    "in/one-pixel.png",
    "in/tall-strip.png",
    "in/exif-rotated.jpg",
    "in/palette-alpha.png",
    "in/chelsea.png",
]


def test_translate_records_and_images(inside: Path) -> None:
    result = run_ptm(
        [
            "translate",
            "-m",
            "tinygen",
            "-w",
            "tinygen.pth",
            "--size",
            "32",
            "--output-dir",
            "out",
            "-q",
            *TRANSLATE_INPUTS,
        ]
    )
    assert result.code == 1, result.stderr  # notes.png is not an image
    check("translate.jsonl", _without_seconds(result.stdout))
    check("translate.stderr", result.stderr)
    for path in sorted((inside / "out").iterdir()):
        check_image(f"translate-{path.name}", path.read_bytes())


def test_translate_full_size_in_tiles_and_to_stdout(inside: Path) -> None:
    result = run_ptm(
        [
            "translate",
            "-m",
            "tinygen",
            "-w",
            "tinygen.pth",
            "--size",
            "full",
            "--tile",
            "128",
            "in/coffee.png",
            "-o",
            "-",
        ]
    )
    assert result.code == 0, result.stderr
    check_image("translate-tiled-stdout.png", result.stdout_bytes)
    check("translate-tiled.stderr", result.stderr)


def test_embed_records(inside: Path) -> None:
    """`ptm embed` records with their vectors (the file times, which the workspace sets, left out)."""
    inputs = ["in/cmyk.jpg", "in/notes.png", "in/exif-rotated.jpg", "in/palette-alpha.png"]
    result = run_ptm(["embed", "-m", "tiny", "-w", "tiny.pth", "-f", "jsonl", "-q", *inputs])
    assert result.code == 1, result.stderr  # notes.png is not an image
    lines = []
    for line in result.stdout.splitlines():
        record = json.loads(line)
        record.pop("mtime_ns", None)
        lines.append(json.dumps(record))
    check("embed.jsonl", "".join(f"{line}\n" for line in lines))


def _merged(folder: str, *extra: str) -> str:
    result = run_ptm(["batch", "merge", folder, *extra])
    assert result.code in (0, 1), result.stderr
    return result.stdout


def test_batch_classify_jsonl_and_parquet(inside: Path) -> None:
    result = run_ptm(
        [
            "batch",
            "classify",
            "-m",
            "tiny",
            "-w",
            "tiny.pth",
            "-r",
            "in",
            "missing.jpg",
            "--output",
            "job",
            "--shard-size",
            "5",
            "-q",
        ]
    )
    assert result.code == 1, result.stderr
    check("batch-classify.jsonl", _merged("job"))
    some = ["in/sub", "in/gradient.jpg", "in/empty.jpg", "missing.jpg", "in/coffee.png"]
    for folder, record_format in (("job-some", "jsonl"), ("job-parquet", "parquet")):
        result = run_ptm(
            [
                "batch",
                "classify",
                "-m",
                "tiny",
                "-w",
                "tiny.pth",
                *some,
                "--output",
                folder,
                "--format",
                record_format,
                "--shard-size",
                "2",
                "-q",
            ]
        )
        assert result.code == 1, result.stderr
    assert _merged("job-parquet") == _merged("job-some")
    check("batch-classify.csv", _merged("job", "-f", "csv"))
    import pyarrow.parquet as pq

    schema = pq.read_schema(inside / "job-parquet" / "shards" / "shard-00000.parquet")
    check("batch-classify.parquet-schema", schema.to_string(show_schema_metadata=False) + "\n")


def test_batch_translate(inside: Path) -> None:
    result = run_ptm(
        [
            "batch",
            "translate",
            "-m",
            "tinygen",
            "-w",
            "tinygen.pth",
            "--size",
            "32",
            "--output",
            "job-translate",
            "-q",
            *TRANSLATE_INPUTS[:4],
        ]
    )
    assert result.code == 1, result.stderr
    check("batch-translate.jsonl", _without_seconds(_merged("job-translate")))
    for path in sorted((inside / "job-translate" / "images").iterdir()):
        check_image(f"batch-translate-{path.name}", path.read_bytes())


def _client(args: list[str], runtime: Path, workspace: Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "PTM_CATALOG": str(workspace / "catalog.toml")}
    return subprocess.run(
        [sys.executable, "-m", "ptm_cli", *args], cwd=workspace, env=env, capture_output=True, timeout=300, check=False
    )


def test_a_warm_server_writes_the_same_bytes(workspace: Path) -> None:
    """Through ``--server auto`` (a real server, real client processes): the same records as in-process."""
    runtime = Path(tempfile.mkdtemp(prefix="ptm-g-"))
    try:
        for fmt in ("jsonl", "csv"):
            served = _client(
                [*CLASSIFY, "-f", fmt, "-k", "2", "--batch-size", "4", "--server", "auto"], runtime, workspace
            )
            assert served.returncode == 1, served.stderr.decode()
            here = _client([*CLASSIFY, "-f", fmt, "-k", "2", "--batch-size", "4"], runtime, workspace)
            assert served.stdout == here.stdout
            assert served.stderr == here.stderr
        shutil.rmtree(workspace / "out", ignore_errors=True)
        served = _client(
            [
                "translate",
                "-m",
                "tinygen",
                "-w",
                "tinygen.pth",
                "--size",
                "32",
                "--output-dir",
                "out",
                "-q",
                "--server",
                "auto",
                *TRANSLATE_INPUTS,
            ],
            runtime,
            workspace,
        )
        assert served.returncode == 1, served.stderr.decode()
        check("translate.jsonl", _without_seconds(served.stdout.decode()))
        for path in sorted((workspace / "out").iterdir()):
            check_image(f"translate-{path.name}", path.read_bytes())
    finally:
        subprocess.run(
            [sys.executable, "-m", "ptm_cli", "serve", "stop"],
            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(runtime, ignore_errors=True)
