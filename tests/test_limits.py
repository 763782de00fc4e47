"""Options and inputs without bounds: each is refused with one line naming its bound, never allocated.

Huge crops, resizes and translate sizes, a strip resized without a crop, endless ``--files-from``
sources and labels files, and batch sizes, worker counts and tiles far past what ptm allows. The real
command runs under a 5 GiB address-space ceiling, so anything that tried to allocate first would fail
with a MemoryError instead of the one error line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import TinyClassifier, run_ptm

# --- running ptm under a memory ceiling -----------------------------------------------------------


CEILING = 5 << 30  # address space: torch and its libraries need about 4 GiB of it to start


def run_with_ceiling(args: list[str], stdin: object = None, **env: str) -> tuple[int, str, str]:
    import resource
    import subprocess
    import sys

    def ceiling() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CEILING, CEILING))

    environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **env}
    done = subprocess.run(
        [sys.executable, "-m", "ptm_cli", *args],
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
        env=environment,
        preexec_fn=ceiling,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def assert_one_error_line(code: int, stderr: str, expected_code: int, *words: str) -> None:
    assert code == expected_code, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("ptm: error: "), stderr
    assert "MemoryError" not in stderr and "Traceback" not in stderr
    for word in words:
        assert word in lines[-1], stderr


# --- sizes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--crop", "--resize"])
def test_huge_crop_and_resize_are_usage_errors_naming_the_limit(
    tiny: TinyClassifier, tmp_path: Path, option: str
) -> None:
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    code, stdout, stderr = run_with_ceiling([*tiny.classify, option, "20000", str(tmp_path / "x.png")])
    assert_one_error_line(code, stderr, 2, option, "PTM_MAX_PIXELS", "13377")
    assert stdout == ""
    code, _, stderr = run_with_ceiling(
        [*tiny.classify, option, "2000", str(tmp_path / "x.png")], PTM_MAX_PIXELS="1000000"
    )
    assert_one_error_line(code, stderr, 2, option, "1,000,000")


def test_huge_translate_size_is_a_usage_error(generator_file: Path, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (20, 20)).save(tmp_path / "x.png")
    args = [
        "zebra",
        "-w",
        str(generator_file),
        "--size",
        "20000",
        str(tmp_path / "x.png"),
        "-o",
        str(tmp_path / "y.png"),
    ]
    code, _, stderr = run_with_ceiling(args)
    assert_one_error_line(code, stderr, 2, "--size", "PTM_MAX_PIXELS")
    assert not (tmp_path / "y.png").exists()


def test_a_strip_resized_without_a_crop_is_refused_not_allocated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import informative_state_dict
    from PIL import Image

    torch.save(informative_state_dict(), tmp_path / "tiny.pth")
    (tmp_path / "labels.txt").write_text("apple\nbanana\ncherry\ndate\n")
    (tmp_path / "nocrop.toml").write_text(
        '[[model]]\nname = "nocrop"\narchitecture = "mobilenet_v3_small"\nnum_classes = 4\nlabels = "labels.txt"\n'
        "resize = 2000\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n"
    )
    Image.new("RGB", (100_000, 2), "white").save(tmp_path / "strip.png")  # a few hundred bytes
    Image.new("RGB", (30, 20), "white").save(tmp_path / "small.png")
    args = ["classify", "-m", "nocrop", "-w", str(tmp_path / "tiny.pth"), "-f", "jsonl", "-k", "1"]
    code, stdout, stderr = run_with_ceiling(
        [*args, str(tmp_path / "strip.png"), str(tmp_path / "small.png")], PTM_CATALOG=str(tmp_path / "nocrop.toml")
    )
    assert code == 1, stderr
    strip, small = (json.loads(line) for line in stdout.splitlines())
    assert strip["error"]["type"] == "ImageTooLarge" and "PTM_MAX_PIXELS" in strip["error"]["message"]
    assert small["predictions"][0]["probability"] > 0


# --- lists and files that never end ---------------------------------------------------------------


def test_files_from_an_endless_source_is_bounded(tiny: TinyClassifier, tmp_path: Path) -> None:
    code, _, stderr = run_with_ceiling([*tiny.classify, "--files-from", "/dev/zero"])
    assert_one_error_line(code, stderr, 2, "line 1", "/dev/zero", "4096")
    with open("/dev/zero", "rb") as zero:
        code, _, stderr = run_with_ceiling([*tiny.classify, "--files-from", "-"], stdin=zero)
    assert_one_error_line(code, stderr, 2, "line 1", "--files-from -")
    (tmp_path / "list.txt").write_bytes(b"x.png\n" * 100 + b"y" * 5000 + b"\n")
    code, _, stderr = run_with_ceiling([*tiny.classify, "--files-from", str(tmp_path / "list.txt")])
    assert_one_error_line(code, stderr, 2, "line 101")


def test_a_too_large_files_from_list_says_to_stream_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ptm_cli import settings
    from ptm_cli.errors import UsageError
    from ptm_cli.images import inputs

    monkeypatch.setattr(settings.tuning, "max_list_bytes", 1000)
    (tmp_path / "list.txt").write_bytes(b"photo.png\n" * 101)
    with pytest.raises(UsageError, match="--files-from - <"):
        inputs.expand_inputs([], files_from=str(tmp_path / "list.txt"))
    (tmp_path / "short.txt").write_bytes(b"photo.png\n" * 99)
    assert len(list(inputs.expand_inputs([], files_from=str(tmp_path / "short.txt")))) == 99


def test_labels_from_an_endless_source_are_bounded(tmp_path: Path) -> None:
    from helpers import informative_state_dict

    torch.save(informative_state_dict(), tmp_path / "tiny.pth")
    (tmp_path / "endless.toml").write_text(
        '[[model]]\nname = "endless"\narchitecture = "mobilenet_v3_small"\nnum_classes = 4\nlabels = "/dev/zero"\n'
    )
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    args = ["classify", "-m", "endless", "-w", str(tmp_path / "tiny.pth"), str(tmp_path / "x.png")]
    code, _, stderr = run_with_ceiling(args, PTM_CATALOG=str(tmp_path / "endless.toml"))
    assert_one_error_line(code, stderr, 2, "/dev/zero", "MiB")


# --- counts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["classify", "--batch-size", "100000000", "x.png"], ("--batch-size", "1024")),
        (["classify", "--workers", "100000", "x.png"], ("--workers", "64")),
        (["zebra", "--tile", "100000", "x.png", "-o", "y.png"], ("--tile", "PTM_MAX_PIXELS")),
    ],
)
def test_batch_size_workers_and_tile_are_bounded(args: list[str], words: tuple[str, ...]) -> None:
    result = run_ptm(args)
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr


@pytest.mark.parametrize("side", ["70000", "20000"])
def test_a_side_past_ptms_largest_is_refused_even_under_a_raised_pixel_limit(
    tiny: TinyClassifier, tmp_path: Path, side: str
) -> None:
    """Found in round 3: ``--crop 70000`` with PTM_MAX_PIXELS raised ended in an internal error."""
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    code, stdout, stderr = run_with_ceiling(
        [*tiny.classify, "--crop", side, str(tmp_path / "x.png")], PTM_MAX_PIXELS=str(1 << 31)
    )
    assert_one_error_line(code, stderr, 2, f"--crop {side}", "use at most 16384")
    assert stdout == "" and "raise PTM_MAX_PIXELS" not in stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["classify", "-k", "100001", "x.png"], ("-k", "100000")),
        (["batch", "classify", "--shard-size", "100000000", "--output", "o", "x.png"], ("--shard-size",)),
        (["batch", "classify", "--batch-size", "5000", "--output", "o", "x.png"], ("--batch-size", "1024")),
        (["serve", "start", "--batch-window", "inf"], ("--batch-window", "10000")),
        (["serve", "start", "--batch-window", "1e300"], ("--batch-window",)),
        (["serve", "start", "--idle-timeout", "1e300"], ("--idle-timeout",)),
        (["serve", "start", "--max-models", "1000000"], ("--max-models", "100")),
    ],
)
def test_every_count_and_window_has_a_range(
    args: list[str], words: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in round 3: an infinite --batch-window killed the server's batcher and hung its clients."""
    monkeypatch.chdir(tmp_path)
    result = run_ptm(args)
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "o").exists()
    for word in words:
        assert word in result.stderr
