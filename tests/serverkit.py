"""Warm servers for tests: real ``ptm serve run`` processes, always stopped, and the folder of models they serve.

Every server a test starts is stopped by the test (:class:`Servers`), even when
the test fails: by a stop request, then by the pid its lock file names. Waits
are bounded. Each test has its own short runtime folder (XDG_RUNTIME_DIR).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from helpers import DATA, TINY_TOML, detector_state_dict, informative_state_dict, segmenter_state_dict
from PIL import Image

LABELS = ("cat", "cup", "rocket", "other")
PROXIES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
CLASSIFY = ("classify", "-m", "tiny", "-w", "./tiny.pth")
DETECT = ("detect", "-m", "ssdlite320_mobilenet_v3_large", "-w", "./detector.pth")
SEGMENT = ("segment", "-m", "lraspp_mobilenet_v3_large", "-w", "./segmenter.pth")


class Servers:
    """Starts ``ptm serve run`` processes and guarantees they are gone at the end."""

    def __init__(self, runtime: Path):
        self.runtime = runtime
        self.processes: list[subprocess.Popen[bytes]] = []
        self.cwd = Path.cwd()

    @property
    def folder(self) -> Path:
        return self.runtime / "ptm"

    def start(self, *args: str, env: dict[str, str] | None = None, clean: bool = False) -> subprocess.Popen[bytes]:
        """``ptm serve run ARGS``; ``clean``: in the environment conftest gives each test, plus ``env``."""
        base = dict(os.environ)
        if clean:
            base = {k: v for k, v in base.items() if not k.startswith("PTM_") and k.lower() not in PROXIES}
            base.update(NO_PROXY="127.0.0.1,localhost")
            base.pop("XDG_CACHE_HOME", None)
        log = open(self.runtime / f"server-{len(self.processes)}.log", "wb")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            [sys.executable, "-m", "ptm_cli", "serve", "run", "--idle-timeout", "300", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**base, **(env or {})},
        )
        log.close()
        self.processes.append(process)
        self.wait_until_answering(process)
        return process

    def wait_until_answering(self, process: subprocess.Popen[bytes] | None = None, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise AssertionError(f"the server exited {process.returncode}: {self.logs()}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(self.folder / "server.sock"))
                return
            time.sleep(0.05)
        raise AssertionError(f"no server answered within {timeout} s: {self.logs()}")

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.runtime.glob("server-*.log")))

    def status(self) -> dict[str, Any]:
        env = {**os.environ, "XDG_RUNTIME_DIR": str(self.runtime)}
        out = subprocess.run(
            [sys.executable, "-m", "ptm_cli", "serve", "status", "-f", "jsonl"],
            capture_output=True,
            timeout=60,
            check=True,
            env=env,
        )
        record: dict[str, Any] = json.loads(out.stdout)
        return record

    def lock_holder(self) -> int | None:
        """The pid of the server that holds the folder's lock now; None when no live server holds it."""
        import fcntl

        try:
            fd = os.open(self.folder / "server.lock", os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # nobody holds it: whatever pid it names is gone (and may be reused)
        except BlockingIOError:
            return int(os.read(fd, 64).decode().strip())
        finally:
            os.close(fd)

    def stop_all(self, env: dict[str, str] | None = None) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [sys.executable, "-m", "ptm_cli", "serve", "stop"],
                capture_output=True,
                timeout=30,
                env={**os.environ, **(env or {}), "XDG_RUNTIME_DIR": str(self.runtime)},
            )
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        pid = self.lock_holder()  # a server a client started (--server auto) is not our child
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def write_model_folder(folder: Path) -> Path:
    """The tiny classifier and a generator, with photos, a broken file and an album, in ``folder``."""
    torch.save(informative_state_dict(), folder / "tiny.pth")
    (folder / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS))
    (folder / "tiny.toml").write_text(TINY_TOML)
    for i, name in enumerate(("chelsea.png", "coffee.png", "rocket.jpg")):
        image = Image.open(DATA / name).convert("RGB")
        image.resize((image.width // 4, image.height // 4)).save(folder / f"photo{i}.png")
        image.resize((90, 70)).save(folder / f"small{i}.jpg", quality=90)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 40)
    (folder / "album").mkdir()
    shutil.copy(folder / "photo1.png", folder / "album" / "a.png")
    (folder / "album" / "b.jpg").write_bytes(b"not a picture")
    torch.manual_seed(0)
    from ptm_cli.nets.cyclegan import build_generator

    torch.save(build_generator().state_dict(), folder / "generator.pth")
    torch.save(detector_state_dict("ssdlite320_mobilenet_v3_large"), folder / "detector.pth")
    torch.save(segmenter_state_dict("lraspp_mobilenet_v3_large"), folder / "segmenter.pth")
    return folder


def ptm(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None, timeout: float = 120) -> Any:
    """``python -m ptm_cli ARGS`` as a real process (a client that can hand its streams to a server)."""
    return subprocess.run(
        [sys.executable, "-m", "ptm_cli", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
