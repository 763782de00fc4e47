"""``--engine spark``: one Spark task per shard, the model cached per Python worker.

The shards go out with ``parallelize`` (one partition each) and every task
runs :func:`~ptm_cli.batch.worker.run_shard_to_file`, which opens the images
by path with ptm's decoder and writes the shard's file atomically. Spark's
``binaryFile`` source is not used: it drops 0-byte files without a word and
renames every path to a ``file:/`` URI, where ptm owes each input its own
record under the name the user gave. Python workers are reused between
tasks (Spark's default), so a worker builds the model once.

Without ``--address`` Spark runs here (``local[N,2]``: a task per CPU, each tried twice);
``--address spark://host:7077`` (or ``yarn``, ``k8s://...``) names a master.
A session that is already active in this process is used and left running.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from .. import settings
from ..errors import ConfigError, MissingDependency, first_line
from .job import Shard, Spec
from .worker import run_shard_to_file


def _run_row(spec: Spec, row: tuple[int, int, tuple[str, ...]]) -> dict[str, Any]:
    index, start, names = row
    return run_shard_to_file(spec, Shard(index, start, tuple(names)))


def require() -> None:
    """MissingDependency, saying what to install, when the engine's package is not importable."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise MissingDependency("--engine spark needs PySpark: pip install 'ptm[spark]' (and Java 17+)") from None


def run(spec: Spec, shards: list[Shard], *, address: str | None = None) -> Iterator[dict[str, Any]]:
    require()
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    owned = session is None
    if session is None:
        session = _start(SparkSession, address)
    try:
        context = session.sparkContext
        rows = [(s.index, s.start, s.names) for s in shards]
        # Each task gets spark.task.cpus cores (1 unless configured); torch would otherwise take every core.
        spec = dataclasses.replace(spec, threads=max(1, int(context.getConf().get("spark.task.cpus", "1") or 1)))
        try:
            statuses = context.parallelize(rows, numSlices=len(rows)).map(functools.partial(_run_row, spec)).collect()
        except Exception as exc:  # a Py4J error whose first line says only which call failed
            raise RuntimeError(_spark_reason(exc)) from exc
        yield from statuses
    finally:
        if owned:
            session.stop()


def _spark_reason(exc: Exception) -> str:
    """The line of a Spark failure that says what happened (a lost task, a crashed Python worker)."""
    for line in str(exc).splitlines():
        if "SparkException:" in line:
            return line.split("SparkException:", 1)[1].strip()
    return first_line(exc, 300)


def _start(session_class: Any, address: str | None) -> Any:
    builder = (
        session_class.builder.appName("ptm batch")
        .master(address or f"local[{os.cpu_count() or 1},2]")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.log.level", "ERROR")
    )
    if address is None and settings.spark_python() is None:
        # Local workers run this very Python, with ptm and torch in it; PySpark reads the choice from here.
        os.environ["PYSPARK_PYTHON"] = sys.executable
    try:
        with warnings.catch_warnings():
            # PySpark checks the pandas version as it starts and warns about pandas 3; ptm uses no pandas on Spark.
            warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)
            return builder.getOrCreate()
    except Exception as exc:  # the JVM did not start: most often no Java, or one older than 17
        raise ConfigError(
            f"cannot start Spark ({first_line(exc, 200)}); Spark 4 needs Java 17 or newer on PATH or in JAVA_HOME"
        ) from None
