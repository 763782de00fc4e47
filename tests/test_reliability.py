"""Reliability: hostile images, hostile weights files and faults, seen from the command line.

The library-level cases live in test_images.py and test_weights.py; this file
drives ``ptm`` itself (in-process through ``run_ptm``, or as a real process
where a hang, a signal, a resource limit or peak memory is the point) and
checks what a script sees: one record per input, only the documented error
types, exit codes 0/1/2/130, nothing on stdout but records, no traceback, no
partial files. RELIABILITY.md maps every case to its test.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from corpus import KNOWN_ERRORS, OK, encode, png_claiming, write_corpus
from helpers import DATA, TINY_TOML, informative_state_dict, ptm_process, run_ptm, save_weights
from http_server import FixtureServer
from PIL import Image

from ptm_cli import settings
from ptm_cli.cache import weights as weights_mod

LABELS = ("apple", "banana", "cherry", "date")


# --- a small model whose answers depend on the image -------------------------------------------




@dataclass(frozen=True)
class TinyModel:
    catalog: Path
    weights: Path

    def args(self, *extra: str) -> list[str]:
        return ["classify", "-m", "tiny", "-w", str(self.weights), "-f", "jsonl", *extra]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    folder = tmp_path_factory.mktemp("tiny")
    torch.save(informative_state_dict(), folder / "tiny.pth")
    (folder / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS))
    (folder / "tiny.toml").write_text(TINY_TOML)
    return TinyModel(folder / "tiny.toml", folder / "tiny.pth")


@pytest.fixture
def tiny(tiny_model: TinyModel, monkeypatch: pytest.MonkeyPatch) -> TinyModel:
    monkeypatch.setenv("PTM_CATALOG", str(tiny_model.catalog))
    return tiny_model


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment for a child ptm: no PTM_* settings from outside, its own HOME and torch cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTM_")}
    env.update(HOME=str(home), TORCH_HOME=str(home / "torch"), NO_PROXY="127.0.0.1,localhost", **extra)
    env.pop("XDG_CACHE_HOME", None)
    return env


# --- running a child with a hang guard and a memory measurement --------------------------------


@dataclass
class Finished:
    code: int
    stdout: str
    stderr: str
    wall: float

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines()]


def run_guarded(argv: list[str], *, env: dict[str, str], timeout: float, what: str) -> Finished:
    """Run ``argv`` to completion; kill it and fail the test if it outlives ``timeout`` (a hang)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        while True:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - started > timeout:
                proc.kill()
                os.waitpid(proc.pid, 0)
                proc.returncode = -signal.SIGKILL
                pytest.fail(f"{what} was still running after {timeout:.0f} s: ptm hangs on it")
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        return Finished(proc.returncode, out.read().decode(), err.read().decode(), wall)


# The child runs ptm twice in one process: a warm-up on one good image (torch,
# the model, the thread pool: everything a normal run needs), then the run
# under test. The growth of the peak RSS between the two is what the inputs
# under test cost, independent of how big torch is on this machine. The peak
# is VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the
# forked copy of the parent, so a child of a torch-laden pytest would report
# the parent's size, not its own (RUSAGE_CHILDREN has the same flaw).
PEAK_RSS = """
def peak_kib():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):  # no procfs (not Linux): no measurement
        return None
"""
HAS_PROCFS = Path("/proc/self/status").is_file()

MEASURING_DRIVER = (
    PEAK_RSS
    + """
import contextlib, json, os, sys
from ptm_cli.cli import run
warm, args, report = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
    assert run(warm) == 0, "the warm-up run failed"
before = peak_kib()
code = run(args)
sys.stdout.flush()
with open(report, "w") as stream:
    json.dump({"warm_kib": before, "peak_kib": peak_kib()}, stream)
sys.exit(code)
"""
)


# --- the hostile image corpus ------------------------------------------------------------------


@dataclass
class CorpusRun:
    expected: list[tuple[str, str]]
    result: Finished
    report: dict[str, int]


@pytest.fixture(scope="module")
def corpus_run(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> CorpusRun:
    """The whole corpus through ``ptm classify`` in a real process, once, with a hang guard."""
    folder = tmp_path_factory.mktemp("corpus")
    expected = write_corpus(folder / "images")
    listing = folder / "list.txt"
    listing.write_text("".join(f"{path}\n" for path, _ in expected))
    warm = tiny_model.args(str(DATA / "coffee.png"))
    args = tiny_model.args("--batch-size", "4", "--workers", "2", "--files-from", str(listing))
    report = folder / "rss.json"
    env = clean_env(tmp_path_factory.mktemp("home"), PTM_CATALOG=str(tiny_model.catalog))
    argv = [sys.executable, "-c", MEASURING_DRIVER, json.dumps(warm), json.dumps(args), str(report)]
    # A hang guard, not a speed test: this takes ~10 s on two slow cores.
    result = run_guarded(argv, env=env, timeout=180, what="ptm classify on the hostile corpus")
    return CorpusRun(expected, result, json.loads(report.read_text()) if report.exists() else {})


def test_hostile_corpus_gives_one_record_per_input_in_order(corpus_run: CorpusRun) -> None:
    result = corpus_run.result
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    records = result.records()
    assert [r["input"] for r in records] == [path for path, _ in corpus_run.expected]
    for record in records:
        assert ("predictions" in record) != ("error" in record), record


def test_hostile_corpus_errors_are_known_types_that_name_the_input(corpus_run: CorpusRun) -> None:
    records = corpus_run.result.records()
    outcomes = {}
    for record in records:
        if "error" in record:
            assert record["error"]["type"] in KNOWN_ERRORS, record
            assert record["input"] in record["error"]["message"], record
            assert "\n" not in record["error"]["message"]
            outcomes[record["input"]] = record["error"]["type"]
        else:
            assert [p["rank"] for p in record["predictions"]] == [1, 2, 3, 4]
            assert {p["label"] for p in record["predictions"]} == set(LABELS)
            assert all(0.0 <= p["probability"] <= 1.0 for p in record["predictions"])
            outcomes[record["input"]] = OK
    wrong = {
        Path(path).name: (outcomes.get(path), want) for path, want in corpus_run.expected if outcomes.get(path) != want
    }
    assert wrong == {}, "(got, expected) per file"


def test_hostile_corpus_exits_1_and_says_how_many_failed(corpus_run: CorpusRun) -> None:
    failed = sum(1 for _, want in corpus_run.expected if want != OK)
    assert corpus_run.result.code == 1, corpus_run.result.stderr
    assert f"{failed} of {len(corpus_run.expected)} inputs failed" in corpus_run.result.stderr


def test_hostile_corpus_memory_is_bounded(corpus_run: CorpusRun) -> None:
    """The bombs are refused from their headers: the run costs little beyond a one-image run.

    Decoding the 20000x20000 bomb alone would take 400 MB (1-bit) and 1.6 GB as
    RGB; the bound allows 300 MiB over the warm-up's peak (the 10000x3 strip,
    resized to 240000x72 on the way to the crop, is the largest honest cost).
    """
    report = corpus_run.report
    assert report, corpus_run.result.stderr
    if report["peak_kib"] is None:
        pytest.skip("peak RSS is read from /proc, which this system does not have")
    growth_mib = (report["peak_kib"] - report["warm_kib"]) / 1024
    assert growth_mib < 300, f"peak RSS grew by {growth_mib:.0f} MiB over the warm-up run"


def test_good_inputs_in_the_corpus_match_a_clean_run(corpus_run: CorpusRun, tiny: TinyModel) -> None:
    """Broken neighbours never change a good image's answer (nor lend it theirs)."""
    mixed = {r["input"]: r for r in corpus_run.result.records()}
    good = [path for path, want in corpus_run.expected if want == OK]
    clean = run_ptm(tiny.args("--batch-size", "1", "--workers", "1", *good))
    assert clean.code == 0, clean.stderr
    distinct = set()
    for record in clean.records():
        got = mixed[record["input"]]["predictions"]
        assert [p["index"] for p in got] == [p["index"] for p in record["predictions"]], record["input"]
        for a, b in zip(got, record["predictions"], strict=True):
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)
        distinct.add(tuple(p["probability"] for p in record["predictions"]))
    assert len(distinct) > len(good) // 2  # the model really tells these images apart


@pytest.mark.skipif(not HAS_PROCFS, reason="peak RSS is read from /proc")
def test_thin_strip_preprocessing_memory_is_bounded(tmp_path: Path) -> None:
    """A tiny file must not turn into a bigger image than ptm would ever decode (README: bounded memory).

    Resized whole, this 200-byte strip becomes 2,880,000x72 (207 Mpx, more than
    PTM_MAX_PIXELS allows any image) on its way to a 64x64 crop: 830 MiB and
    seconds of work. Found by this suite; resize_and_crop now resizes only the
    region the crop keeps.
    """
    strip = tmp_path / "strip.png"
    strip.write_bytes(encode(Image.new("RGB", (40000, 1), "orange"), "PNG"))  # 200 bytes on disk
    code = PEAK_RSS + (
        "import json, sys\n"
        "from ptm_cli.images.decode import load_image\n"
        "from ptm_cli.images.transforms import Preprocess, resize_and_crop\n"
        "p = Preprocess(resize=72, crop=64)\n"
        "resize_and_crop(load_image(sys.argv[2]), p)  # warm up: Pillow's decoders and resampling\n"
        "before = peak_kib()\n"
        "out = resize_and_crop(load_image(sys.argv[1]), p)\n"
        "print(json.dumps({'size': out.size, 'growth_mib': (peak_kib() - before) / 1024}))\n"
    )
    warm = tmp_path / "warm.png"
    Image.new("RGB", (300, 200), "teal").save(warm)
    result = run_guarded([sys.executable, "-c", code, str(strip), str(warm)], env=dict(os.environ), timeout=120,
                         what="preprocessing a 40000x1 image")  # fmt: skip
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["size"] == [64, 64]
    assert report["growth_mib"] < 256, f"preprocessing a 200-byte PNG took {report['growth_mib']:.0f} MiB more"


def test_hostile_bytes_on_stdin(tiny: TinyModel) -> None:
    for data, kind in [(b"", "UnreadableImage"), (random.Random(9).randbytes(5000), "UnreadableImage"),
                       (png_claiming(20000, 20000), "ImageTooLarge")]:  # fmt: skip
        result = run_ptm(tiny.args("-"), stdin=data)
        assert result.code == 1
        (record,) = result.records()
        assert record["input"] == "-" and record["error"]["type"] == kind
        assert "Traceback" not in result.stderr


def test_a_fifo_in_a_folder_does_not_hang_the_run(tiny: TinyModel, tmp_path: Path) -> None:
    """A named pipe with an image's name in a folder (shared upload folders have such things).

    Opening it blocks until a writer comes, so a folder walk that opens it
    hangs forever. Found by this suite; folder walks now yield regular files only.
    """
    folder = tmp_path / "uploads"
    folder.mkdir()
    Image.new("RGB", (40, 30), "teal").save(folder / "a.png")
    fifo = folder / "b.png"
    os.mkfifo(fifo)
    outcome: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: outcome.update(result=run_ptm(tiny.args(str(folder)))), daemon=True)
    worker.start()
    waited_for_a_writer = False
    deadline = time.monotonic() + 60
    while worker.is_alive() and time.monotonic() < deadline:
        try:  # succeeds only while a reader has the pipe open, i.e. ptm sits in open() waiting for a writer
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            waited_for_a_writer = True  # ... and a writer that came and went released it (EOF)
        except OSError:  # ENXIO: nobody is reading the pipe
            pass
        worker.join(0.05)
    assert not worker.is_alive(), "ptm classify hangs on a named pipe in the folder"
    assert not waited_for_a_writer, "ptm opened the named pipe and waited for a writer; with none, it hangs"
    records = outcome["result"].records()
    assert records[0]["input"].endswith("a.png") and "predictions" in records[0]
    assert all(r["error"]["type"] in KNOWN_ERRORS for r in records[1:])


# --- hostile weights files ----------------------------------------------------------------------


class CodeExecution:
    """Unpickling this runs Python source through builtins.exec: the classic malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def torchscript_file(path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated; this is how such files are made
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))


def hostile_weights(kind: str, path: Path, marker: Path, good: Path) -> None:
    if kind == "code execution (zip)":
        torch.save({"weight": CodeExecution(marker)}, path)
    elif kind == "code execution (legacy pickle)":
        torch.save({"weight": CodeExecution(marker)}, path, _use_new_zipfile_serialization=False)
    elif kind == "full module pickle":
        import torchvision.models as tvm

        torch.save(tvm.mobilenet_v3_small(weights=None, num_classes=4), path)
    elif kind == "torchscript":
        torchscript_file(path)
    elif kind == "truncated zip":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "html error page":
        path.write_bytes(b"<html><body>403 Forbidden</body></html>\n")
    elif kind == "another architecture":
        save_weights(path, "resnet18", num_classes=4)
    elif kind == "another class count":
        save_weights(path, "mobilenet_v3_small", num_classes=10)
    elif kind == "damaged safetensors header":
        path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    else:  # pragma: no cover
        raise AssertionError(kind)


# (kind, file suffix, a phrase saying what to do)
HOSTILE_WEIGHTS = [
    ("code execution (zip)", ".pth", "save `model.state_dict()` with torch.save"),
    ("code execution (legacy pickle)", ".pth", "save `model.state_dict()` with torch.save"),
    ("full module pickle", ".pth", "save `model.state_dict()` with torch.save"),
    ("torchscript", ".pt", "save `model.state_dict()`"),
    ("truncated zip", ".pth", "is damaged"),
    ("empty", ".pth", "is damaged"),
    ("html error page", ".pth", "is damaged"),
    ("another architecture", ".pth", "check -m/--model"),
    ("another class count", ".pth", "num_classes"),
    ("damaged safetensors header", ".safetensors", "is damaged"),
]


@pytest.mark.parametrize(("kind", "suffix", "advice"), HOSTILE_WEIGHTS, ids=[k for k, _, _ in HOSTILE_WEIGHTS])
def test_hostile_weights_file_is_refused_and_never_runs(
    kind: str, suffix: str, advice: str, tiny: TinyModel, tmp_path: Path
) -> None:
    marker, path = tmp_path / "pwned", tmp_path / f"weights{suffix}"
    hostile_weights(kind, path, marker, tiny.weights)
    result = run_ptm(["classify", "-m", "tiny", "-w", str(path), str(DATA / "coffee.png")])
    assert not marker.exists(), "the weights file ran code"
    assert result.code == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("ptm: error: ")
    if not kind.startswith("another"):
        assert str(path) in result.stderr
    assert advice in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_damaged_local_weights_file_gets_advice_that_fits_a_local_file(tiny: TinyModel, tmp_path: Path) -> None:
    """`ptm weights rm` takes a catalog NAME and only touches the cache: no advice for a user's own -w file.

    Found by this suite (the message used to say "delete it with `ptm weights rm`").
    """
    path = tmp_path / "my-finetune.pth"
    path.write_bytes(tiny.weights.read_bytes()[:1000])
    result = run_ptm(["classify", "-m", "tiny", "-w", str(path), str(DATA / "coffee.png")])
    assert result.code == 2 and "is damaged" in result.stderr
    assert "ptm weights rm" not in result.stderr


def test_cuda_saved_checkpoint_loads_on_the_cpu(
    tiny: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file saved on a GPU names 'cuda:0' as every storage's location; ptm maps it to the CPU."""
    import torch.serialization

    state = torch.load(tiny.weights, weights_only=True)
    cuda_file = tmp_path / "saved-on-gpu.pth"
    with monkeypatch.context() as patch:
        # torch.save asks location_tag() where each storage lives; answer as a GPU machine would.
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(state, cuda_file)
    with zipfile.ZipFile(cuda_file) as archive:
        pickled = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    assert b"cuda:0" in pickled and b"cpu" not in pickled
    if not torch.cuda.is_available():  # proof that the file really claims CUDA
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(cuda_file, weights_only=True)

    image = str(DATA / "coffee.png")
    from_gpu_file = run_ptm(["classify", "-m", "tiny", "-w", str(cuda_file), "--device", "cpu", image])
    from_cpu_file = run_ptm(["classify", "-m", "tiny", "-w", str(tiny.weights), "--device", "cpu", image])
    assert from_gpu_file.code == 0, from_gpu_file.stderr
    assert from_gpu_file.records()[0]["predictions"] == from_cpu_file.records()[0]["predictions"]


# --- downloads: faults seen from the command line ------------------------------------------------


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
    proc = subprocess.run([sys.executable, "-c", FSIZE_LAUNCHER, "weights", "download", "net"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
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


def test_missing_cache_dir_is_read_without_being_created(served: Served, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
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
