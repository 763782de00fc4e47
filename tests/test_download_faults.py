"""Downloads and their faults, seen from the command line.

A server that resets, stalls, errs or sends the wrong bytes; a download killed with SIGKILL or
interrupted with Ctrl-C; a full disk or a file-size limit; a cache folder that cannot be made or is
not there yet. Each ends in exit 2 with a message that says what to do (or 130 for Ctrl-C), never in
a partial file the cache could later load, and the next try just works. The library-level cases live
in test_weights.py; what a download must be before the cache keeps it is in test_weights_cli.py.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import DATA, HAS_PROCFS, ptm_process, run_ptm
from helpers import TINY_LABELS as LABELS
from http_server import FixtureServer

from ptm_cli import settings
from ptm_cli.cache import weights as weights_mod

# --- a catalog of two downloadable entries on a local server --------------------------------------


PAYLOAD = random.Random(21).randbytes(3 * 2**20)  # 3 MiB: several 1 MiB reads, 48 server chunks


OTHER = random.Random(22).randbytes(300_000)


@dataclass
class Served:
    server: FixtureServer
    cache: Path

    def serve_net(self, mode: str = "ok", **kwargs: Any) -> None:
        self.server.serve("/files/net-v1.pth", PAYLOAD, mode, **kwargs)

    def leftovers(self) -> list[str]:
        """Temporary and weights files in the cache (not locks or the pins file)."""
        if not self.cache.exists():
            return []
        return sorted(p.name for p in self.cache.iterdir() if p.name.endswith((".part", ".pth")))


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """A catalog with two downloadable entries ("net", "other") on a local server, and a fresh cache."""
    import hashlib

    monkeypatch.setattr(settings.tuning, "backoff_base", 0.01)
    with FixtureServer() as server:
        server.serve("/files/net-v1.pth", PAYLOAD)
        server.serve("/files/other.pth", OTHER)
        common = 'architecture = "mobilenet_v3_small"\nnum_classes = 4\nlabels = "labels.txt"\n'
        (tmp_path / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS))
        catalog = tmp_path / "served.toml"
        catalog.write_text(
            f'[[model]]\nname = "net"\nurl = "{server.url}/files/net-v1.pth"\n'
            f'sha256 = "{hashlib.sha256(PAYLOAD).hexdigest()}"\n{common}\n'
            f'[[model]]\nname = "other"\nurl = "{server.url}/files/other.pth"\n'
            f'sha256 = "{hashlib.sha256(OTHER).hexdigest()}"\n{common}'
        )
        monkeypatch.setenv("PTM_CATALOG", str(catalog))
        monkeypatch.setenv("PTM_CACHE_DIR", str(tmp_path / "cache"))
        yield Served(server, tmp_path / "cache")


# --- faults in the transfer -----------------------------------------------------------------------


# mode -> (what the message says, requests made with PTM_DOWNLOAD_RETRIES=2)
DOWNLOAD_FAULTS = {
    "reset": ("reset by the server", 2),
    "wrong": ("nothing was saved", 1),
    "error": ("HTTP 500", 2),
    "missing": ("HTTP 404", 1),
    "stall": ("timed out", 2),
}


@pytest.mark.parametrize("mode", sorted(DOWNLOAD_FAULTS))
def test_download_faults_through_the_cli(mode: str, served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTM_DOWNLOAD_RETRIES", "2")
    if mode == "stall":
        monkeypatch.setenv("PTM_DOWNLOAD_TIMEOUT", "0.3")
    served.serve_net(mode, stall=2.0)
    result = run_ptm(["weights", "download", "net"])
    reason, requests = DOWNLOAD_FAULTS[mode]
    assert result.code == 2
    assert result.stdout == ""
    assert reason in result.stderr and "Traceback" not in result.stderr
    if mode != "wrong":
        assert "ptm weights import net:DEFAULT FILE" in result.stderr
    assert served.server.requests("/files/net-v1.pth") == requests
    assert served.leftovers() == []
    served.serve_net()  # the fault goes away: the next try just works
    again = run_ptm(["weights", "download", "net"])
    assert again.code == 0, again.stderr
    assert Path(again.stdout.strip()).read_bytes() == PAYLOAD


# --- a download killed or interrupted -------------------------------------------------------------


def wait_for_partial_file(cache: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> Path:
    """The .part file of a download in progress, once some bytes of the body are in it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the download ended before it could be interrupted"
        parts = list(cache.glob(".net-v1.pth.*.part")) if cache.exists() else []
        if parts and parts[0].stat().st_size > 0:
            return parts[0]
        time.sleep(0.02)
    raise AssertionError("no partial file appeared")


def test_download_killed_with_sigkill_leaves_an_orphan_that_is_ignored_then_pruned(served: Served) -> None:
    served.serve_net(chunk_delay=0.05)  # ~2.5 s for the whole body
    with ptm_process(["weights", "download", "net"], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        orphan = wait_for_partial_file(served.cache, proc)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    orphan_size = orphan.stat().st_size
    assert 0 < orphan_size < len(PAYLOAD)
    assert not (served.cache / "net-v1.pth").exists()

    served.serve_net()
    again = run_ptm(["weights", "download", "net"])
    assert again.code == 0, again.stderr
    assert (served.cache / "net-v1.pth").read_bytes() == PAYLOAD
    assert orphan.stat().st_size == orphan_size  # ignored, not appended to or mistaken for the file
    assert served.leftovers() == sorted([orphan.name, "net-v1.pth"])

    fresh = run_ptm(["weights", "prune"])  # under ORPHAN_AGE (1 h): could still be a live download
    assert fresh.code == 0 and "nothing to prune" in fresh.stderr and orphan.exists()
    old = time.time() - 2 * weights_mod.ORPHAN_AGE
    os.utime(orphan, (old, old))
    pruned = run_ptm(["weights", "prune"])
    assert pruned.code == 0 and f"removed {orphan.name}" in pruned.stderr
    assert served.leftovers() == ["net-v1.pth"]
    assert run_ptm(["weights", "verify", "net"]).code == 0


def test_ctrl_c_during_download_exits_130_and_leaves_no_temporary_file(served: Served) -> None:
    served.serve_net(chunk_delay=0.05)
    with ptm_process(["weights", "download", "net"], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        part = wait_for_partial_file(served.cache, proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted" in err.decode() and "Traceback" not in err.decode()
    assert out == b""
    assert not part.exists()
    assert served.leftovers() == []


# --- a disk that fills up, a cache folder that cannot be made -------------------------------------


class _FullDisk:
    """A binary file object whose writes fail with ENOSPC once ``room`` bytes have been written."""

    def __init__(self, stream: Any, room: int):
        self._stream, self._room = stream, room

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._stream.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def test_disk_full_while_downloading(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    first = run_ptm(["weights", "download", "other"])
    assert first.code == 0, first.stderr
    pins_before = (served.cache / weights_mod.PINS_FILE).read_bytes()

    real_fdopen = os.fdopen

    def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        stream = real_fdopen(fd, mode, *args, **kwargs)
        return _FullDisk(stream, room=1_500_000) if mode == "wb" else stream

    with monkeypatch.context() as patch:
        patch.setattr(os, "fdopen", fdopen)
        result = run_ptm(["weights", "download", "net"])
    assert result.code == 2
    assert result.stdout == ""
    assert f"cannot write to the weights cache {served.cache} (No space left on device)" in result.stderr
    assert "PTM_CACHE_DIR" in result.stderr and "Traceback" not in result.stderr
    assert served.server.requests("/files/net-v1.pth") == 1  # a full disk is not retried
    assert served.leftovers() == ["other.pth"]  # no partial file, the earlier file intact
    assert (served.cache / "other.pth").read_bytes() == OTHER
    assert (served.cache / weights_mod.PINS_FILE).read_bytes() == pins_before
    assert run_ptm(["weights", "verify", "other"]).code == 0
    assert run_ptm(["weights", "download", "net"]).code == 0  # space again: it just works


# RLIMIT_FSIZE makes the kernel itself refuse writes past 1 MiB (EFBIG), as a full quota would.
FSIZE_LAUNCHER = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))
sys.argv = ["ptm", *sys.argv[1:]]
runpy.run_module("ptm_cli", run_name="__main__")
"""


def test_file_size_limit_while_downloading_is_a_clean_error(served: Served) -> None:
    assert run_ptm(["weights", "download", "other"]).code == 0  # 300 kB: under the limit
    proc = subprocess.run(
        [sys.executable, "-c", FSIZE_LAUNCHER, "weights", "download", "net"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "cannot write to the weights cache" in proc.stderr and "File too large" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert served.leftovers() == ["other.pth"]
    assert (served.cache / "other.pth").read_bytes() == OTHER


@pytest.mark.parametrize("where", ["under a regular file", "inside /proc"])
def test_unusable_cache_dir_is_a_clear_error(
    where: str, served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root, which ignores permissions: these two folders cannot be created by anyone.
    if where == "under a regular file":
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        cache = blocker / "cache"
    else:
        if not HAS_PROCFS:
            pytest.skip("no /proc on this system")
        cache = Path("/proc/ptm-test-cache")
    monkeypatch.setenv("PTM_CACHE_DIR", str(cache))
    for args in (["weights", "download", "net"], ["classify", "-m", "net", str(DATA / "coffee.png")]):
        result = run_ptm(args)
        assert result.code == 2, result.stderr
        assert result.stdout == ""
        assert f"cannot write to the weights cache {cache}" in result.stderr
        assert "set PTM_CACHE_DIR to a folder you can write to" in result.stderr
        assert "Traceback" not in result.stderr
    assert not cache.exists()
    assert served.server.requests() == 0  # refused before any byte was fetched


def test_missing_cache_dir_is_read_without_being_created(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "not" / "yet" / "there"
    monkeypatch.setenv("PTM_CACHE_DIR", str(cache))
    listed = run_ptm(["weights", "list", "-f", "jsonl"])
    assert (listed.code, listed.stdout) == (0, "")
    assert run_ptm(["weights", "verify", "-f", "jsonl"]).code == 0
    pruned = run_ptm(["weights", "prune"])
    assert pruned.code == 0 and "nothing to prune" in pruned.stderr
    assert run_ptm(["weights", "path", "net"]).code == 1
    models = {r["model"]: r["cached"] for r in run_ptm(["models", "-f", "jsonl"]).records()}
    assert models["net"] is False
    assert not cache.exists() and not cache.parent.exists()
    downloaded = run_ptm(["weights", "download", "net"])
    assert downloaded.code == 0, downloaded.stderr
    assert (cache / "net-v1.pth").read_bytes() == PAYLOAD
