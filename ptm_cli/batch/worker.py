"""What runs on a worker: check the weights file, build the model once per process, run a shard into its file.

Workers never download: they load the file the driver resolved and
verified, after checking its sha256 again (a worker may see another copy,
on another machine's disk or a shared folder that changed). The model is
built by the task, as for its own command, and the records come from the
task's own run, so a shard's records are the command's records.
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Any

from ..errors import HashMismatch, InputError, OutputError, PtmError, WeightsError, first_line
from ..images.inputs import ImageInput
from .job import IMAGES_DIR, Shard, Spec, absolute, destination, output_name
from .shardfile import Record, write_shard

# One model per worker process, kept between shards (an engine sends a process many shards).
_MODEL: dict[tuple[Any, ...], Any] = {}
# Weights files hashed in this process: (path, size, mtime) -> sha256.
_VERIFIED: dict[tuple[str, int, int], str] = {}


def check_weights(spec: Spec) -> Path:
    """The weights file, if its bytes here are the ones the driver verified."""
    path = Path(spec.weights_path)
    try:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in _VERIFIED:
            from .job import hash_file

            _VERIFIED[key] = hash_file(path)
    except OSError as exc:
        raise WeightsError(
            f"a worker cannot read the weights file {path} ({exc.strerror or exc}); put it on storage every "
            "worker can read, at the same path"
        ) from None
    if _VERIFIED[key] != spec.weights_sha256:
        raise HashMismatch(
            f"the weights file {path} on a worker has sha256 {_VERIFIED[key][:16]}..., not the "
            f"{spec.weights_sha256[:16]}... the driver verified; give every worker the same file"
        )
    return path


def model_for(spec: Spec) -> Any:
    """The ready model for ``spec``, built on this process's first shard."""
    model = _MODEL.get(spec.model_key)
    if model is not None:
        return model
    from ..runtime.tuning import tune_process

    tune_process()  # a worker is a ptm process: it tunes its memory and threads as the command does
    path = check_weights(spec)
    if spec.threads is not None and not spec.device.startswith("cuda"):
        import torch

        # Several workers share a machine's cores: one that took them all would slow every other one down.
        torch.set_num_threads(spec.threads)
    _MODEL.clear()  # one model at a time: a worker that switches jobs frees the last one
    plan = spec.plan(path)
    model = plan.task.build(plan, progress=False)
    _MODEL[spec.model_key] = model
    return model


def forget_model() -> None:
    """Drop this process's model (the local engine, once its job is done: the caller may live on)."""
    _MODEL.clear()


def run_shard(spec: Spec, shard: Shard) -> list[Record]:
    """One record per input of ``shard``, in manifest order."""
    from .. import tasks
    from ..tasks.base import RunContext

    task = tasks.get(spec.task)
    model = model_for(spec)
    context = RunContext()
    shown = Path(spec.folder_as_written)
    if task.image_outputs:
        # A shard redone by --resume may find the images its first attempt wrote: they are whole (atomic).
        context = RunContext(destination=destination(spec, Path(spec.folder)), skip_existing=spec.resume)
    records: dict[int, Record] = {}
    runnable = []
    for position, name in enumerate(shard.names, start=shard.start):
        if position in spec.taken:
            path = shown / IMAGES_DIR / output_name(destination(spec, Path(".")), name)
            error = OutputError(
                f"{path} was already written for {spec.taken[position]} in this run (same file name in another "
                "folder); translate them in separate runs or output directories"
            )
            records[position] = {"input": name, "error": error.record()}
        else:
            runnable.append((position, ImageInput(name, path=absolute(spec.cwd, name))))
    results = task.run(model, [item for _, item in runnable], spec.params, context)
    for (position, _), result in zip(runnable, results, strict=True):
        record = result.record
        if "output" in record:
            record["output"] = str(shown / IMAGES_DIR / Path(record["output"]).name)
        records[position] = record
    return [records[position] for position in range(shard.start, shard.start + len(shard.names))]


def run_shard_to_file(spec: Spec, shard: Shard) -> dict[str, Any]:
    """Run ``shard`` and publish its file; a status row for the driver (flat, so every engine can carry it).

    ``fatal`` is set when the job cannot run at all (weights, device,
    configuration): the driver stops and reports it. ``problem`` is set when
    this shard could not be written; its inputs become ``WorkerFailed``.
    """
    started = time.perf_counter()
    status: dict[str, Any] = {
        "shard": shard.index,
        "count": 0,
        "failed": 0,
        "seconds": 0.0,
        "pid": os.getpid(),
        "problem": "",
        "fatal_type": "",
        "fatal_message": "",
    }
    try:
        records = run_shard(spec, shard)
    except InputError as exc:  # cannot happen per input (those are records), so it is about the shard
        status["problem"] = first_line(exc, 300)
        return status
    except PtmError as exc:
        status.update(fatal_type=exc.kind, fatal_message=str(exc))
        return status
    except Exception as exc:  # a bug: the driver reports it as one, with the worker's traceback
        status.update(
            fatal_type="internal",
            fatal_message=f"{type(exc).__name__}: {first_line(exc, 300)}\n" + traceback.format_exc(),
        )
        return status
    try:
        write_shard(spec.shard_path(shard.index), records, spec.record_format, spec.task)
    except OSError as exc:
        status["problem"] = f"cannot write {spec.shard_path(shard.index)}: {exc.strerror or exc}"
        return status
    status.update(
        count=len(records), failed=sum("error" in r for r in records), seconds=round(time.perf_counter() - started, 3)
    )
    return status
