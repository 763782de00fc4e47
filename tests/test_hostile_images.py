"""Hostile and broken images through ``ptm classify``: one record per input, bounded memory, no hang.

The hostile corpus (corpus.py) goes through one real process with a hang guard and a peak-memory
measurement; thin strips, hostile bytes on stdin, a named pipe in a folder and JPEGs that the decoder
would pad with grey are each checked on their own. What a script sees: one record per input in
input order, only the documented error types, exit 1 with a count, nothing but records on stdout, no
traceback. The library-level cases live in test_images.py and test_fuzz.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from corpus import KNOWN_ERRORS, OK, encode, png_claiming, write_corpus
from helpers import DATA, HAS_PROCFS, TinyClassifier, run_ptm
from helpers import TINY_LABELS as LABELS
from PIL import Image

np = pytest.importorskip("numpy")


# --- running a child with a hang guard and a memory measurement -----------------------------------


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment for a child ptm: no PTM_* settings from outside, its own HOME and torch cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTM_")}
    env.update(HOME=str(home), TORCH_HOME=str(home / "torch"), NO_PROXY="127.0.0.1,localhost", **extra)
    env.pop("XDG_CACHE_HOME", None)
    return env


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


# --- the hostile image corpus ---------------------------------------------------------------------


@dataclass
class CorpusRun:
    expected: list[tuple[str, str]]
    result: Finished
    report: dict[str, int]


@pytest.fixture(scope="module")
def corpus_run(tiny_model: TinyClassifier, tmp_path_factory: pytest.TempPathFactory) -> CorpusRun:
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


def test_good_inputs_in_the_corpus_match_a_clean_run(corpus_run: CorpusRun, tiny: TinyClassifier) -> None:
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


# --- thin strips, stdin and named pipes -----------------------------------------------------------


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
    result = run_guarded(
        [sys.executable, "-c", code, str(strip), str(warm)],
        env=dict(os.environ),
        timeout=120,
        what="preprocessing a 40000x1 image",
    )
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["size"] == [64, 64]
    assert report["growth_mib"] < 256, f"preprocessing a 200-byte PNG took {report['growth_mib']:.0f} MiB more"


def test_hostile_bytes_on_stdin(tiny: TinyClassifier) -> None:
    for data, kind in [
        (b"", "UnreadableImage"),
        (random.Random(9).randbytes(5000), "UnreadableImage"),
        (png_claiming(20000, 20000), "ImageTooLarge"),
    ]:
        result = run_ptm(tiny.args("-"), stdin=data)
        assert result.code == 1
        (record,) = result.records()
        assert record["input"] == "-" and record["error"]["type"] == kind
        assert "Traceback" not in result.stderr


def test_a_fifo_in_a_folder_does_not_hang_the_run(tiny: TinyClassifier, tmp_path: Path) -> None:
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


# --- JPEGs the decoder would pad with grey --------------------------------------------------------


def jpeg_bytes(image: object, **options: object) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)  # type: ignore[attr-defined]
    return buffer.getvalue()


def noisy(width: int, height: int, seed: int = 0) -> object:
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype("uint8"))


def with_height(data: bytes, height: int) -> bytes:
    """The same JPEG with its frame header claiming ``height`` rows."""
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    return data[: sof + 5] + height.to_bytes(2, "big") + data[sof + 7 :]


@pytest.mark.parametrize("subsampling", [0, 2])
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
def test_a_jpeg_cut_short_and_closed_with_an_end_marker_is_unreadable(subsampling: int, fraction: float) -> None:
    from ptm_cli.errors import UnreadableImage
    from ptm_cli.images.decode import load_image

    data = jpeg_bytes(noisy(320, 240), quality=90, subsampling=subsampling)
    cut = data[: int(len(data) * fraction)] + b"\xff\xd9"
    with pytest.raises(UnreadableImage, match="truncated"):
        load_image(cut, name="cut.jpg")
    with pytest.raises(UnreadableImage, match="truncated"):
        load_image(cut, name="cut.jpg", min_short_side=60)  # decoded at reduced scale first
    assert load_image(data, name="whole.jpg").size == (320, 240)


def test_a_jpeg_whose_header_declares_more_rows_than_its_data_is_unreadable() -> None:
    from ptm_cli.errors import UnreadableImage
    from ptm_cli.images.decode import load_image

    data = jpeg_bytes(noisy(200, 100), quality=90)
    with pytest.raises(UnreadableImage, match="truncated"):
        load_image(with_height(data, 400), name="tall.jpg")


@pytest.mark.parametrize("subsampling", [0, 2])
def test_genuinely_grey_jpegs_still_load(subsampling: int) -> None:
    from PIL import Image

    from ptm_cli.images.decode import load_image

    half = noisy(200, 160)
    half.paste((128, 128, 128), (0, 80, 200, 160))  # type: ignore[attr-defined]
    for image in (half, Image.new("RGB", (256, 256), (128, 128, 128)), Image.new("L", (90, 300), 128)):
        data = jpeg_bytes(image, quality=95, subsampling=subsampling)
        loaded = load_image(data, name="grey.jpg")
        assert loaded.size == image.size
        assert loaded.getpixel((loaded.width - 1, loaded.height - 1)) == (128, 128, 128)


def test_cut_jpegs_through_classify_are_error_records(tiny: TinyClassifier, tmp_path: Path) -> None:
    whole = jpeg_bytes(noisy(320, 240), quality=90)
    (tmp_path / "whole.jpg").write_bytes(whole)
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2] + b"\xff\xd9")
    (tmp_path / "tall.jpg").write_bytes(with_height(whole, 960))
    names = [str(tmp_path / n) for n in ("whole.jpg", "cut.jpg", "tall.jpg")]
    result = run_ptm([*tiny.classify, "-f", "jsonl", *names])
    assert result.code == 1, result.stderr
    records = result.records()
    assert "predictions" in records[0]
    assert [r["error"]["type"] for r in records[1:]] == ["UnreadableImage", "UnreadableImage"]
