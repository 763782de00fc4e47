"""`ptm batch` on real engines: a local Ray cluster (2 CPUs) and Spark on local[2], both on loopback only.

Each engine starts once for this module (a fixture) and is stopped when its
tests are done, even when one fails. The records must be the ones `ptm classify -f jsonl`
gives; a worker killed in the middle of a shard must leave complete results
or WorkerFailed records, never a missing input; --resume then finishes the
job with only the unfinished shards.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from batchkit import FifoInput, assert_same_records, corpus, environment, photo_bytes, shard_inodes
from helpers import SeededWeights, TinyClassifier, run_ptm

pytestmark = pytest.mark.slow


# Module-scoped: the cluster and the JVM stop when this module's tests are done, so the tests after it
# (page-fault counts among them) run on a machine without their threads and processes.
@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    with environment(RAY_USAGE_STATS_ENABLED="0"):
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING)
        try:
            yield ray
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def spark_session() -> Iterator[Any]:
    if shutil.which("java") is None:
        pytest.skip("Spark 4 needs Java 17 or newer and no `java` is on PATH (see docs/scaling.md)")
    sql = pytest.importorskip("pyspark.sql")
    with environment(SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable):
        session = (
            sql.SparkSession.builder.master("local[2]")
            .appName("ptm tests")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.log.level", "ERROR")
            .getOrCreate()
        )
        try:
            yield session
        finally:
            session.stop()


@pytest.fixture(params=["ray", "spark"])
def engine(request: pytest.FixtureRequest) -> str:
    request.getfixturevalue("ray_cluster" if request.param == "ray" else "spark_session")
    return str(request.param)


def merged(folder: Path) -> list[dict[str, Any]]:
    return run_ptm(["batch", "merge", str(folder)]).records()


def test_engines_give_the_records_of_ptm_classify(engine: str, tiny: TinyClassifier, tmp_path: Path) -> None:
    inputs = corpus(tmp_path / "photos")
    out = tmp_path / "out"
    record_format = "parquet" if engine == "ray" else "jsonl"
    result = run_ptm(
        [
            "batch",
            "classify",
            *tiny.options,
            *inputs,
            "--output",
            str(out),
            "--engine",
            engine,
            "--shard-size",
            "3",
            "--format",
            record_format,
        ]
    )
    assert result.code == 1, result.stderr  # the corpus has bad files
    summary = json.loads(result.stdout)  # stdout holds the summary and nothing else, whatever the engine logs
    assert (summary["engine"], summary["inputs"], summary["ok"], summary["shards"]) == (engine, 11, 7, 4)
    reference = run_ptm(tiny.args(*inputs)).records()
    assert_same_records(merged(out), reference)


def test_a_worker_killed_mid_shard_then_resume(engine: str, tiny: TinyClassifier, tmp_path: Path) -> None:
    """SIGKILL the worker that is reading an input; no input may go without a record; --resume completes the job."""
    inputs = [*corpus(tmp_path / "photos"), str(tmp_path / "pipe.jpg")]  # the pipe is the 12th input: shard 3
    out = tmp_path / "out"
    args = ["batch", "classify", *tiny.options, *inputs, "--engine", engine, "--shard-size", "3", "--output", str(out)]
    with FifoInput(tmp_path / "pipe.jpg", photo_bytes(9), kill_first=True) as pipe:
        first = run_ptm(args)
        assert len(pipe.killed) == 1, "one worker was to be killed"
        assert first.code == 1, first.stderr
        stopped = json.loads(first.stdout).get("stopped")  # an engine may retry the shard, or give up on it
        assert stopped is None or "worker" in stopped.lower(), stopped  # if it gives up, it says why
        reference = run_ptm(tiny.args(*inputs)).records()  # the pipe gives its bytes now
        records = merged(out)
        assert [r["input"] for r in records] == inputs_of(reference)  # every input, once, in order
        for mine, theirs in zip(records, reference, strict=True):
            if mine.get("error", {}).get("type") == "WorkerFailed":
                assert "--resume" in mine["error"]["message"]
            else:
                assert_same_records([mine], [theirs])
        lost = {r["input"] for r in records if r.get("error", {}).get("type") == "WorkerFailed"}
        kept = shard_inodes(out)
        resumed = run_ptm([*args, "--resume"])
        assert resumed.code == 1, resumed.stderr
        summary = json.loads(resumed.stdout)
        assert summary["images_run"] == len(lost)  # only the shards without a complete file ran again
        after = shard_inodes(out)
        assert {name: after[name] for name in kept} == kept  # complete shards were not redone
    assert_same_records(merged(out), reference)


def test_an_input_that_kills_every_worker_does_not_hang_ray(
    ray_cluster: Any, tiny: TinyClassifier, tmp_path: Path
) -> None:
    """Ray would retry a lost actor's shard forever; ptm allows a few tries, then gives WorkerFailed records."""
    inputs = [*corpus(tmp_path / "photos", photos=2), str(tmp_path / "pipe.jpg")]
    out = tmp_path / "out"
    with FifoInput(tmp_path / "pipe.jpg", b"", kill_all=True) as pipe:
        result = run_ptm(
            ["batch", "classify", *tiny.options, *inputs, "--engine", "ray", "--shard-size", "3", "--output", str(out)]
        )
    assert result.code == 1, result.stderr
    assert len(pipe.killed) == 3  # the first try and ptm's two retries, then no more
    summary = json.loads(result.stdout)
    assert "stopped" in summary
    records = merged(out)
    assert [r["input"] for r in records][-1] == str(tmp_path / "pipe.jpg")
    assert records[-1]["error"]["type"] == "WorkerFailed"
    assert len(records) == 7  # every input has its record: 2 photos, 3 bad files, the missing one, the pipe


def inputs_of(records: list[dict[str, Any]]) -> list[str]:
    return [str(r["input"]) for r in records]


def test_every_engine_gives_the_records_of_ptm_detect(
    engine: str, seeded_weights: SeededWeights, tmp_path: Path
) -> None:
    """A task other than classify through the same engines: the shards hold `ptm detect`'s records."""
    weights = seeded_weights.detector("ssdlite320_mobilenet_v3_large")
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        (folder / f"photo{i}.jpg").write_bytes(photo_bytes(i, size=(160, 120)))
    (folder / "broken.jpg").write_bytes(photo_bytes(0)[:300])
    model = ["-m", "ssdlite320_mobilenet_v3_large", "-w", str(weights), "--min-score", "0.2", "--classes", "person"]
    reference = run_ptm(["detect", *model, "-f", "jsonl", str(folder)]).records()
    for chosen in ("local", engine):
        out = tmp_path / f"out-{chosen}"
        result = run_ptm(
            ["batch", "detect", *model, str(folder), "--output", str(out), "--engine", chosen, "--shard-size", "2"]
        )
        assert result.code == 1, result.stderr  # the broken photo
        records = merged(out)
        assert [r["input"] for r in records] == [r["input"] for r in reference]
        for mine, theirs in zip(records, reference, strict=True):
            if "error" in theirs:
                assert mine["error"]["type"] == theirs["error"]["type"]
                continue
            assert (mine["width"], mine["height"]) == (theirs["width"], theirs["height"])
            assert [d["label"] for d in mine["detections"]] == [d["label"] for d in theirs["detections"]] != []
            for d, e in zip(mine["detections"], theirs["detections"], strict=True):
                assert d["score"] == pytest.approx(e["score"], rel=1e-5)
                assert list(d["box"].values()) == pytest.approx(list(e["box"].values()), rel=1e-5, abs=1e-4)


def test_every_engine_gives_the_records_and_masks_of_ptm_segment(
    engine: str, seeded_weights: SeededWeights, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ptm batch segment --mask-dir`: each engine's records are `ptm segment`'s, and so are its mask files."""
    weights = seeded_weights.segmenter("lraspp_mobilenet_v3_large", boost={15: 1.0})
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"photo{i}.jpg").write_bytes(photo_bytes(i, size=(160, 120)))
    (folder / "broken.jpg").write_bytes(photo_bytes(0)[:300])
    model = ["-m", "lraspp_mobilenet_v3_large", "-w", str(weights)]
    reference = run_ptm(["segment", *model, "--mask-dir", str(tmp_path / "masks-ref"), "-f", "jsonl", str(folder)])
    expected = reference.records()
    for chosen in ("local", engine):
        masks = tmp_path / f"masks-{chosen}"
        out = tmp_path / f"out-{chosen}"
        monkeypatch.chdir(tmp_path)  # a relative --mask-dir is where the command was typed, on every engine
        where = ["--mask-dir", masks.name, "--output", str(out), "--engine", chosen, "--shard-size", "2"]
        result = run_ptm(["batch", "segment", *model, str(folder), *where])
        assert result.code == 1, result.stderr  # the broken photo
        records = merged(out)
        assert [r["input"] for r in records] == [r["input"] for r in expected]
        for mine, theirs in zip(records, expected, strict=True):
            if "error" in theirs:
                assert mine["error"]["type"] == theirs["error"]["type"]
                continue
            assert mine["coverage"] == theirs["coverage"] != []
            assert Path(mine["mask"]).read_bytes() == Path(theirs["mask"]).read_bytes()
            assert Path(mine["mask"]).parent == masks


def test_every_engine_merges_into_the_index_of_ptm_embed(engine: str, tiny: TinyClassifier, tmp_path: Path) -> None:
    """`ptm batch embed` then `ptm batch merge -o`: the index of `ptm embed -o`.

    The local engine gives the same bytes. Ray and Spark workers run torch on fewer threads each, and
    oneDNN's convolutions round differently per thread count (MobileNetV3 here: by under 1e-6 after
    normalising), so there the vectors agree to float rounding and the rows, order and metadata exactly.
    """
    import numpy as np

    from ptm_cli.vectors.indexfile import open_index

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        (folder / f"photo{i}.jpg").write_bytes(photo_bytes(i, size=(160, 120)))
    (folder / "broken.jpg").write_bytes(photo_bytes(0)[:300])
    reference = tmp_path / "reference.npy"
    assert run_ptm(["embed", *tiny.options, str(folder), "-o", str(reference)]).code == 1
    expected = open_index(reference)
    for chosen in ("local", engine):
        out = tmp_path / f"out-{chosen}"
        where = ["--output", str(out), "--engine", chosen, "--shard-size", "3", "--format", "parquet"]
        assert run_ptm(["batch", "embed", *tiny.options, str(folder), *where]).code == 1
        index = tmp_path / f"{chosen}.npy"
        result = run_ptm(["batch", "merge", str(out), "-o", str(index)])
        assert result.code == 0, result.stderr
        merged_index = open_index(index)
        assert merged_index.paths() == expected.paths()
        assert merged_index.meta.same_vectors() == expected.meta.same_vectors()
        if chosen == "local":
            assert np.load(index).tobytes() == np.load(reference).tobytes()
        else:
            np.testing.assert_allclose(np.load(index), np.load(reference), rtol=0, atol=1e-6)
        assert merged_index.rows.drop(["mtime_ns"]).equals(expected.rows.drop(["mtime_ns"]))
