"""Soak tests (``make test-long``, minutes, still offline): thousands of images through one ``ptm classify``.

What they show: a record for every input in input order, memory that stays
flat from the first batches to the last (RSS of the real process, sampled
from /proc while it runs), and the same answers as one-image runs.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from corpus import png_claiming
from helpers import HAS_PROCFS, TinyClassifier, run_ptm
from PIL import Image

pytestmark = [
    pytest.mark.long,
    pytest.mark.skipif(not HAS_PROCFS, reason="RSS is sampled from /proc"),
]


def small_png(index: int) -> bytes:
    """A 32x32 image of its own: noise over a colour that moves with the index."""
    rng = random.Random(index)
    base = Image.new("RGB", (32, 32), ((index * 37) % 256, (index * 91) % 256, (index * 53) % 256))
    noise = Image.frombytes("RGB", (32, 32), rng.randbytes(32 * 32 * 3))
    buffer = io.BytesIO()
    Image.blend(base, noise, 0.35).save(buffer, "PNG")
    return buffer.getvalue()


def vm_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


@dataclass
class Soak:
    code: int
    stdout: str
    stderr: str
    seconds: float
    samples: list[tuple[int, int]] = field(default_factory=list)  # (records written so far, VmRSS KiB)

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines()]

    def rss_mib(self, start: float, stop: float, total: int) -> float:
        """The largest RSS sampled while the share of records written was in [start, stop)."""
        window = [rss for done, rss in self.samples if start * total <= done < stop * total]
        assert len(window) >= 3, f"too few RSS samples between {start:.0%} and {stop:.0%}: {self.samples}"
        return max(window) / 1024


def soak(args: list[str], *, timeout: float) -> Soak:
    """Run ``ptm`` as a real process, sampling its RSS and its progress every 20 ms; fail on a hang."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ptm_cli", *args], stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        samples, done, read = [], 0, 0
        while proc.poll() is None:
            if time.monotonic() - started > timeout:
                proc.kill()
                proc.wait()
                pytest.fail(f"ptm was still running after {timeout:.0f} s")
            rss = vm_rss_kib(proc.pid)
            size = os.fstat(out.fileno()).st_size
            if size > read:  # count the records written so far (ptm flushes after every batch)
                done += os.pread(out.fileno(), size - read, read).count(b"\n")
                read = size
            if rss is not None:
                samples.append((done, rss))
            time.sleep(0.02)
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        return Soak(proc.returncode, out.read().decode(), err.read().decode(), seconds, samples)


def assert_steady_memory(run: Soak, total: int) -> None:
    """Late batches must not need much more memory than early ones: nothing accumulates per image."""
    early = run.rss_mib(0.05, 0.35, total)
    late = run.rss_mib(0.65, 1.01, total)
    assert late < 1.3 * early + 50, f"RSS grew from {early:.0f} MiB early in the run to {late:.0f} MiB late"


def assert_same_as_alone(records: dict[str, dict], names: list[str], args: list[str]) -> None:
    for name in names:
        alone = run_ptm([*args, name])
        assert alone.code == 0, alone.stderr
        (solo,) = alone.records()
        batched = records[name]["predictions"]
        assert [p["index"] for p in batched] == [p["index"] for p in solo["predictions"]], name
        for a, b in zip(batched, solo["predictions"], strict=True):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_three_thousand_small_images_with_steady_memory(tiny: TinyClassifier, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    total = 3000
    names = []
    for i in range(total):
        path = folder / f"img{i:05}.png"
        path.write_bytes(small_png(i))
        names.append(str(path))
    run = soak(tiny.args("--batch-size", "16", str(folder)), timeout=900)
    assert run.code == 0, run.stderr
    assert "Traceback" not in run.stderr
    records = run.records()
    assert [r["input"] for r in records] == names
    assert all(len(r["predictions"]) == 4 for r in records)
    assert len({r["predictions"][0]["index"] for r in records}) > 1  # the model is not answering blindly
    assert_steady_memory(run, total)
    sample = names[:: total // 12]
    assert_same_as_alone({r["input"]: r for r in records}, sample, tiny.args())


# Broken files for the mixed folder, in rotation: (suffix, bytes, expected error type).
BROKEN = [
    (".jpg", b"", "UnreadableImage"),
    (".png", small_png(1)[:150], "UnreadableImage"),
    (".png", random.Random(3).randbytes(2000), "UnreadableImage"),
    (".gif", b"GIF89a\x10\x00\x10\x00" + b"\x00" * 7, "UnreadableImage"),
    (".png", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "UnsupportedFormat"),
    (".png", png_claiming(30000, 30000), "ImageTooLarge"),
    (".jpg", None, "InputNotFound"),  # listed, but not there
]


def test_mixed_folder_with_a_third_broken(tiny: TinyClassifier, tmp_path: Path) -> None:
    """Paths come from --files-from, so that paths that do not exist are inputs too."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    total = 1500
    expected = []
    for i in range(total):
        if i % 3 == 2:
            suffix, data, kind = BROKEN[(i // 3) % len(BROKEN)]
            path = folder / f"item{i:05}{suffix}"
            if data is not None:
                path.write_bytes(data)
        else:
            path, kind = folder / f"item{i:05}.png", None
            path.write_bytes(small_png(i))
        expected.append((str(path), kind))
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{name}\n" for name, _ in expected))
    run = soak(tiny.args("--batch-size", "16", "--files-from", str(listing)), timeout=900)
    assert run.code == 1, run.stderr
    assert f"{total // 3} of {total} inputs failed" in run.stderr
    assert "Traceback" not in run.stderr
    records = run.records()
    assert [r["input"] for r in records] == [name for name, _ in expected]
    for record, (_, kind) in zip(records, expected, strict=True):
        if kind is None:
            assert len(record["predictions"]) == 4, record
        else:
            assert record["error"]["type"] == kind, record
    assert_steady_memory(run, total)
    good = [name for name, kind in expected if kind is None]
    assert_same_as_alone({r["input"]: r for r in records}, good[:: len(good) // 10], tiny.args())
