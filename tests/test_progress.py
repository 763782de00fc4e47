"""Progress on a real terminal: ptm runs under a pseudo-terminal and the screen is read back."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import DATA, TinyClassifier


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of twelve photos and a broken file: enough for a bar to move."""
    images = tmp_path_factory.mktemp("progress") / "images"
    images.mkdir()
    for i in range(12):
        (images / f"{i:02}.png").write_bytes((DATA / "coffee.png").read_bytes())
    (images / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return images


def run_on_terminal(args: list[str], env: dict[str, str], stderr_tty: bool) -> tuple[int, bytes, str]:
    """Run ptm with stdout a pipe and stderr a pseudo-terminal (or a pipe); (code, stdout, what the screen got)."""
    master, slave = pty.openpty() if stderr_tty else os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "ptm_cli", *args],
        stdout=subprocess.PIPE,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env={**env, "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the terminal closed with the process
                    break
                if not chunk:
                    break
                screen += chunk
            elif process.poll() is not None:
                break
        stdout = process.stdout.read() if process.stdout else b""
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
        if process.stdout:
            process.stdout.close()
        os.close(master)
    return code, stdout, screen.decode(errors="replace")


def test_classify_shows_a_bar_on_a_terminal_and_keeps_stdout_identical(
    tiny: TinyClassifier, photo_folder: Path
) -> None:
    env = dict(os.environ)
    args = tiny.args("--batch-size", "2", str(photo_folder))
    code, stdout, screen = run_on_terminal(args, env, stderr_tty=True)
    assert code == 1  # the broken file
    assert "images" in screen and "/13" in screen  # done of the total, counted from the folder
    assert "1 failed" in screen
    assert "img/s" in screen
    plain_code, plain_stdout, plain_stderr = run_on_terminal(args, env, stderr_tty=False)
    assert plain_code == 1 and plain_stdout == stdout  # byte for byte the same records
    assert "img/s" not in plain_stderr  # no bar when stderr is not a terminal
    quiet_code, quiet_stdout, quiet_screen = run_on_terminal([*args, "--quiet"], env, stderr_tty=True)
    assert quiet_code == 1 and quiet_stdout == stdout and "img/s" not in quiet_screen


def test_translate_shows_files_and_tiles(photo_folder: Path, tmp_path: Path) -> None:
    from ptm_cli.nets.cyclegan import build_generator

    torch.manual_seed(0)
    torch.save(build_generator(ngf=8).state_dict(), tmp_path / "g.pth")
    catalog = tmp_path / "gan.toml"
    catalog.write_text(
        '[[model]]\nname = "tinygan"\ntask = "translate"\narchitecture = "cyclegan_resnet9"\n'
        "builder_kwargs = { ngf = 8 }\n"
    )
    env = {**os.environ, "PTM_CATALOG": str(catalog)}
    args = [
        "translate",
        "-m",
        "tinygan",
        "-w",
        str(tmp_path / "g.pth"),
        "--size",
        "full",
        "--tile",
        "64",
        "--output-dir",
        str(tmp_path / "out"),
        str(photo_folder / "00.png"),
        str(photo_folder / "01.png"),
    ]
    code, _, screen = run_on_terminal(args, env, stderr_tty=True)
    assert code == 0, screen
    assert "images" in screen and "2/2" in screen
    assert "tiles" in screen


def test_batch_shows_inputs_done_shard_by_shard(tiny: TinyClassifier, photo_folder: Path, tmp_path: Path) -> None:
    env = dict(os.environ)
    args = [
        "batch",
        "classify",
        *tiny.options,
        "--shard-size",
        "4",
        "--output",
        str(tmp_path / "job"),
        str(photo_folder),
    ]
    code, stdout, screen = run_on_terminal(args, env, stderr_tty=True)
    assert code == 1, screen  # the broken file
    assert "13/13" in screen and "1 failed" in screen
    assert b'"inputs": 13' in stdout  # the summary line, and nothing of the bar
