"""The driver: run a job's shards on an engine, reconcile against the manifest, merge, summarise.

Whatever an engine does (retries, lost workers, a run stopped half-way),
every input in the manifest ends with exactly one record: its shard file's
record when the shard file is there and holds the shard's inputs in order,
else a ``WorkerFailed`` error record that says to run again with
``--resume``, which redoes just those shards.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import errors
from ..errors import PtmError, UsageError, WorkerFailed, first_line
from ..runtime import fsutil
from .job import JOB_FILE, SUMMARY_FILE, Job, Shard, Spec, read_job, read_manifest, shard_path, split, stale_parts
from .shardfile import Record, read_shard

Notify = Callable[[str], None]
LOST = "no worker returned its records (a lost worker, or the run stopped early)"


def shard_is_done(spec: Spec, shard: Shard) -> bool:
    """A shard's file is there, readable, and holds one record per input of the shard, in order."""
    records = read_shard(spec.shard_path(shard.index))
    return records is not None and [r.get("input") for r in records] == list(shard.names)


def engine_runner(engine: str) -> Callable[..., Iterator[dict[str, Any]]]:
    """The engine's ``run(spec, shards, address=...)``; Ray and Spark are imported only here, when chosen.

    Call it before planning: a missing package fails before the job folder is made.
    """
    if engine == "local":
        from . import local_engine

        return local_engine.run
    if engine == "ray":
        from . import ray_engine

        ray_engine.require()
        return ray_engine.run
    if engine == "spark":
        from . import spark_engine

        spark_engine.require()
        return spark_engine.run
    raise UsageError(f"unknown engine {engine!r}; use local, ray or spark")


def run_job(
    job: Job,
    *,
    engine: str = "local",
    address: str | None = None,
    notify: Notify = lambda _: None,
    on_shard: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the shards that are not done yet and write ``_SUMMARY.json``; returns the summary.

    ``on_shard(count, failed)`` hears of each shard as it is written (for a progress display).
    """
    folder = job.folder
    if fsutil.lock_is_held(folder / JOB_FILE):
        raise UsageError(f"another ptm batch is running in {job.spec.folder_as_written}; wait for it to finish")
    run = engine_runner(engine)
    with fsutil.locked(folder / JOB_FILE):
        for part in stale_parts(folder):  # left by a killed worker; the lock says no one else writes here
            with contextlib.suppress(OSError):
                part.unlink()
        shards = job.shards
        todo = [s for s in shards if not (job.spec.resume and shard_is_done(job.spec, s))]
        if job.spec.resume and len(todo) < len(shards):
            notify(f"--resume: {len(shards) - len(todo)} of {len(shards)} shards are done already; running {len(todo)}")
        started = time.perf_counter()
        problems, stopped = _drive(
            run, job.spec, todo, engine=engine, address=address, notify=notify, on_shard=on_shard
        )
        wall = time.perf_counter() - started
        summary = summarise(job, engine=engine, wall=wall, ran=todo, problems=problems, stopped=stopped)
        data = (json.dumps(summary, indent=1) + "\n").encode("utf-8")
        try:
            fsutil.write_atomic(folder / SUMMARY_FILE, data, replace=True)
        except OSError as exc:
            notify(f"cannot write {SUMMARY_FILE}: {exc.strerror or exc}")
    return summary


def _drive(
    run: Callable[..., Iterator[dict[str, Any]]],
    spec: Spec,
    todo: list[Shard],
    *,
    engine: str,
    address: str | None,
    notify: Notify,
    on_shard: Callable[[int, int], None] | None = None,
) -> tuple[dict[int, str], str | None]:
    """Run ``todo`` on the engine: the shards that could not be written, and why the engine stopped (if it did)."""
    problems: dict[int, str] = {}
    if not todo:
        return problems, None
    fatal: dict[str, Any] | None = None
    try:
        statuses = run(spec, todo, address=address)
        try:
            for status in statuses:
                if status["fatal_type"]:
                    fatal = status
                    break
                if status["problem"]:
                    problems[int(status["shard"])] = str(status["problem"])
                    notify(f"shard {int(status['shard'])}: {status['problem']}")
                elif on_shard is not None:
                    on_shard(int(status["count"]), int(status["failed"]))
        finally:
            close = getattr(statuses, "close", None)
            if close is not None:  # an engine's generator shuts its cluster down now, not at garbage collection
                close()
    except (PtmError, KeyboardInterrupt):
        raise
    except Exception as exc:  # the engine gave up (lost workers past its retries, a dead cluster)
        stopped = f"the {engine} run stopped early: {type(exc).__name__}: {first_line(exc, 300)}"
        notify(f"{stopped}; inputs without records get WorkerFailed records, and --resume redoes their shards")
        return problems, stopped
    if fatal is not None:
        raise _fatal(fatal)
    return problems, None


def _fatal(status: dict[str, Any]) -> Exception:
    """The error a worker met before it could run anything, as the driver raises it."""
    kind = getattr(errors, str(status["fatal_type"]), None)
    message = str(status["fatal_message"])
    if isinstance(kind, type) and issubclass(kind, PtmError):
        return kind(message)
    return RuntimeError(f"a batch worker failed: {message}")


def merged_records(
    folder: Path, names: list[str], shard_size: int, record_format: str, problems: dict[int, str] | None = None
) -> Iterator[Record]:
    """Every manifest input's record, in manifest order; ``WorkerFailed`` where a shard has no good file."""
    for shard in split(names, shard_size):
        records = read_shard(shard_path(folder, shard.index, record_format))
        if records is not None and [r.get("input") for r in records] == list(shard.names):
            yield from records
            continue
        reason = (problems or {}).get(shard.index, LOST)
        for name in shard.names:
            error = WorkerFailed(f"{name}: shard {shard.index}: {reason}; run the job again with --resume")
            yield {"input": name, "error": error.record()}


def merge(folder: Path) -> tuple[str, Iterator[Record]]:
    """The task of the job in ``folder`` and its records in manifest order (``ptm batch merge``)."""
    stored = read_job(folder)
    names = read_manifest(folder)
    record_format = str(stored.get("format", "jsonl"))
    if record_format == "parquet":
        from .job import require_pyarrow

        require_pyarrow()
    return str(stored["task"]), merged_records(folder, names, int(stored["shard_size"]), record_format)


def summarise(
    job: Job, *, engine: str, wall: float, ran: list[Shard], problems: dict[int, str], stopped: str | None
) -> dict[str, Any]:
    spec = job.spec
    errors_by_type: Counter[str] = Counter()
    ok = 0
    for record in merged_records(job.folder, job.names, job.shard_size, spec.record_format, problems):
        if "error" in record:
            errors_by_type[record["error"]["type"]] += 1
        else:
            ok += 1
    images_run = sum(len(s.names) for s in ran)
    summary: dict[str, Any] = {
        "task": spec.task,
        "engine": engine,
        "model": spec.entry.model,
        "weights": spec.weights_label,
        "weights_sha256": spec.weights_sha256,
        "format": spec.record_format,
        "inputs": len(job.names),
        "ok": ok,
        "failed": sum(errors_by_type.values()),
        "errors": dict(sorted(errors_by_type.items())),
        "shards": len(job.shards),
        "shards_run": len(ran),
        "images_run": images_run,
        "wall_seconds": round(wall, 3),
        "images_per_second": round(images_run / wall, 2) if wall > 0 else None,
    }
    if stopped:
        summary["stopped"] = stopped
    return summary


__all__ = ["merge", "merged_records", "run_job", "shard_is_done", "summarise"]
