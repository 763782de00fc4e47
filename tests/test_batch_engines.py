"""`ptm batch` on real engines: a local Ray cluster (2 CPUs) and Spark on local[2], both on loopback only.

Each engine starts once per session (a fixture) and is stopped at the end,
even when a test fails. The records must be the ones `ptm classify -f jsonl`
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
from helpers import TinyClassifier, run_ptm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    with environment(RAY_USAGE_STATS_ENABLED="0"):
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING)
        try:
            yield ray
        finally:
            ray.shutdown()


@pytest.fixture(scope="session")
def spark_session() -> Iterator[Any]:
    if shutil.which("java") is None:
        pytest.skip("Spark 4 needs Java 17 or newer and no `java` is on PATH (see README, Scaling out)")
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
