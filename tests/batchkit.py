"""What the ptm batch tests share: a corpus with hostile files, the tiny model, FIFOs that hold a worker still."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import DATA
from PIL import Image


def png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 100, 50)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def photo_bytes(index: int, size: tuple[int, int] = (96, 72)) -> bytes:
    import io

    names = ("chelsea.png", "coffee.png", "rocket.jpg")
    image = Image.open(DATA / names[index % 3]).convert("RGB").resize(size)
    image = image.rotate(17 * index)  # every photo differs, so every record does
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def corpus(folder: Path, photos: int = 7) -> list[str]:
    """Inputs as a user would name them: good photos, broken, empty, huge-header, a missing path."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(photos):
        (folder / f"photo{i:02d}.jpg").write_bytes(photo_bytes(i))
    (folder / "broken.jpg").write_bytes(photo_bytes(0)[:300])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "bomb.png").write_bytes(png_claiming(30000, 30000))
    return [str(folder), str(folder / "missing.jpg")]


def assert_same_records(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    """The same records in the same order; probabilities equal to 1e-6."""
    assert [r["input"] for r in ours] == [r["input"] for r in theirs]
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.keys() == reference.keys(), (mine, reference)
        if "error" in reference:
            assert mine == reference
            continue
        assert {k: v for k, v in mine.items() if k != "predictions"} == {
            k: v for k, v in reference.items() if k != "predictions"
        }
        for p, q in zip(mine["predictions"], reference["predictions"], strict=True):
            assert (p["rank"], p["index"], p["label"]) == (q["rank"], q["index"], q["label"])
            # Records round to six digits, so 1e-6 apart is one step of rounding (plus float representation).
            assert p["probability"] == pytest.approx(q["probability"], abs=1.000001e-6)


def readers_of(path: Path) -> list[int]:
    """Processes (of this machine, readable to us) that have ``path`` open."""
    found = []
    target = str(path)
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        found.append(int(pid))
                        break
    return found


class FifoInput:
    """A named pipe among the inputs: whoever opens it waits until the test decides.

    ``kill_first`` kills (SIGKILL) the first process that opens it, mid-shard;
    every later reader gets ``data``; ``kill_all`` kills every reader. Used as a context manager; the feeding
    thread always stops, even when the test fails.
    """

    def __init__(self, path: Path, data: bytes, *, kill_first: bool = False, kill_all: bool = False):
        os.mkfifo(path)
        self.path = path
        self.data = data
        self.kill_first = kill_first
        self.kill_all = kill_all
        self.killed: list[int] = []
        self.fed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FifoInput:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until a reader has it open
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                time.sleep(0.02)
                continue
            try:
                if self.kill_all or (self.kill_first and not self.killed):
                    pids: list[int] = []
                    deadline = time.monotonic() + 2
                    while not pids and time.monotonic() < deadline:  # the reader's descriptor shows up a moment later
                        pids = readers_of(self.path)
                    for pid in pids:  # none: a killed reader that had not quite gone yet
                        os.kill(pid, signal.SIGKILL)
                    self.killed.extend(pids)
                else:
                    os.set_blocking(fd, True)
                    with contextlib.suppress(BrokenPipeError):
                        os.write(fd, self.data)
                    self.fed += 1
            finally:
                os.close(fd)
            time.sleep(0.1)  # let the reader see end-of-file (or die) before the next open


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def shard_inodes(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted((folder / "shards").glob("shard-*"))}


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
