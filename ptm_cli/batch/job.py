"""A batch job on disk: what to run, on which inputs, in which shards, and where each shard's records go.

The output folder holds:

* ``_JOB.json`` - the job: task, model, the weights verified on the driver
  (label and sha256), the options that change results (the task's own among
  them), and the inputs as given; ``--resume`` refuses to continue a folder
  made with other ones;
* ``_MANIFEST.jsonl`` - every input, one JSON string a line, in the order
  ``ptm classify`` would take them, written once;
* ``shards/shard-NNNNN.jsonl`` (or ``.parquet``) - the records of manifest
  lines ``[N * shard_size, (N + 1) * shard_size)``, each file written whole
  or not at all;
* ``images/`` - the images a task writes (``ptm batch translate``);
* ``_SUMMARY.json`` - counts, errors by type, model, weights, engine, wall
  time and images/s of the last run.

Shards are consecutive slices of the manifest, so the same inputs and
``--shard-size`` always give the same shards: that is what lets a killed
run be resumed, and any shard be redone on any worker.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .. import tasks
from ..cache.catalog import Entry
from ..errors import MissingDependency, UsageError
from ..images.inputs import ImageInput, check_not_empty, expand_inputs
from ..runtime import fsutil
from ..tasks.base import ModelOptions, Plan

JOB_FILE = "_JOB.json"
MANIFEST_FILE = "_MANIFEST.jsonl"
SUMMARY_FILE = "_SUMMARY.json"
SHARDS_DIR = "shards"
IMAGES_DIR = "images"
ENGINES = ("local", "ray", "spark")
RECORD_FORMATS = ("jsonl", "parquet")
JOB_VERSION = 1


@dataclass(frozen=True)
class Request:
    """A batch job as the command line asks for it: ``params`` holds the task's own options."""

    task: str
    options: ModelOptions
    inputs: tuple[str, ...]
    output: str
    recursive: bool = False
    files_from: str | None = None
    record_format: str = "jsonl"
    shard_size: int = 1000
    batch_size: int = 8
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Spec:
    """Everything a worker needs to run any shard of a job; small and picklable (engines ship it)."""

    task: str
    entry: Entry
    weights_path: str  # absolute: workers do not share the driver's working directory
    weights_sha256: str
    weights_label: str  # what records show: the variant, or the file as the user wrote it
    device: str
    precision: str
    resize: int | None
    crop: int | None
    params: dict[str, Any]  # the task's own options, batch_size among them
    cwd: str  # relative input names are opened from here
    folder: str  # the output folder, absolute
    folder_as_written: str
    record_format: str
    resume: bool = False
    threads: int | None = None  # torch threads per worker, set by an engine that runs several workers per machine
    # A task that writes images: manifest position -> the earlier input whose output file has the same name.
    taken: dict[int, str] = field(default_factory=dict)

    def shard_path(self, index: int) -> Path:
        return shard_path(Path(self.folder), index, self.record_format)

    @property
    def model_key(self) -> tuple[Any, ...]:
        """What identifies the loaded model, so a worker builds it once for all the shards it runs."""
        return (
            self.task,
            self.entry.ref,
            self.weights_path,
            self.weights_sha256,
            self.device,
            self.precision,
            self.resize,
            self.crop,
        )

    def plan(self, weights_path: Path) -> Plan[Any]:
        """The plan a worker builds its model from: the driver's entry, the file it verified, the user's label."""
        options = ModelOptions(
            model=self.entry.model,
            weights=self.weights_label,
            device=self.device,
            precision=self.precision,
            resize=self.resize,
            crop=self.crop,
        )
        return Plan(tasks.get(self.task), options, self.entry, weights_path)


@dataclass(frozen=True)
class Shard:
    index: int
    start: int  # the position of names[0] in the manifest
    names: tuple[str, ...]


@dataclass
class Job:
    spec: Spec
    names: list[str]
    shard_size: int

    @property
    def folder(self) -> Path:
        return Path(self.spec.folder)

    @property
    def shards(self) -> list[Shard]:
        return split(self.names, self.shard_size)


def split(names: list[str], shard_size: int) -> list[Shard]:
    """Consecutive slices of ``shard_size`` names: the same manifest always gives the same shards."""
    return [
        Shard(index, start, tuple(names[start : start + shard_size]))
        for index, start in enumerate(range(0, len(names), shard_size))
    ]


def shard_path(folder: Path, index: int, record_format: str) -> Path:
    return folder / SHARDS_DIR / f"shard-{index:05d}.{record_format}"


def absolute(cwd: str, name: str) -> Path:
    """Where a worker opens ``name``: relative names are relative to the driver's working directory."""
    return Path(os.path.join(cwd, name))


def hash_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise MissingDependency(
            "--format parquet needs pyarrow: pip install 'ptm[parquet]', or use --format jsonl"
        ) from None


# --- planning --------------------------------------------------------------------------------------


def plan_job(request: Request, *, resume: bool = False, stdin_list: BinaryIO | None = None) -> Job:
    """Check the request, resolve and verify the weights here, and write (or, with ``resume``, reread) the manifest.

    Nothing runs on a worker before the weights are verified: a bad file or
    a hash mismatch fails here, once, with the cache's own message.
    """
    task = tasks.get(request.task)
    if request.record_format not in RECORD_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(RECORD_FORMATS)}")
    if request.record_format == "parquet":
        require_pyarrow()
    if request.shard_size < 1:
        raise UsageError("--shard-size must be at least 1")
    check_not_empty(request.inputs, request.files_from)
    if "-" in request.inputs:
        raise UsageError(
            "ptm batch reads its images by path on its workers, so '-' (an image on stdin) cannot be used; "
            "save it to a file first (--files-from - for a list of paths works)"
        )
    if request.options.is_hub:
        raise UsageError(
            "ptm batch runs catalog models and local weights files; hub: models would run repository code on "
            "every worker, so run them with the task's own command"
        )
    params = _task_params(task, request)
    task.check(params)
    plan = task.plan(request.options)
    if plan.entry is not None and plan.entry.is_video:
        raise UsageError(
            f"{plan.entry.ref} labels clips of video, and batch jobs take images; run `ptm {task.name}` on the videos"
        )
    task.check_plan(plan, params)
    assert plan.entry is not None
    folder = Path(request.output)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--output {request.output} is a file; give a folder (new or empty) for the job")
    stored = _read_job(folder) if resume else None
    if stored is None:
        if resume and folder.is_dir() and any(folder.iterdir()):
            raise UsageError(
                f"--output {request.output} holds no ptm batch job ({JOB_FILE}) and is not empty; "
                "give a new or empty folder"
            )
        # Before the weights are fetched and the inputs listed (which may wait on stdin): a second job
        # started meanwhile is refused, never mixed with this one.
        created = _claim(folder, request.output)
        try:
            return _plan_new(request, task, plan, params, folder, stdin_list)
        except BaseException:
            _unclaim(folder, created)
            raise
    return _plan_resumed(request, task, plan, params, folder, stored, stdin_list)


def _spec(request: Request, task: Any, plan: Plan[Any], params: dict[str, Any], folder: Path, resume: bool) -> Spec:
    """What every worker needs: the weights verified (and fetched, if need be) here, once."""
    assert plan.entry is not None
    weights_path = _verified_weights(plan)
    digest = hash_file(weights_path)
    spec = Spec(
        task=task.name,
        entry=plan.entry,
        weights_path=str(weights_path),
        weights_sha256=digest,
        weights_label=plan.weights_label,
        device=request.options.device,
        precision=request.options.precision,
        resize=request.options.resize,
        crop=request.options.crop,
        params=params,
        cwd=os.getcwd(),
        folder=str(folder.absolute()),
        folder_as_written=request.output,
        record_format=request.record_format,
        resume=resume,
    )
    return spec


def _listed(request: Request, stdin_list: BinaryIO | None) -> list[str]:
    listed = expand_inputs(
        request.inputs, recursive=request.recursive, files_from=request.files_from, stdin_list=stdin_list
    )
    return [item.name for item in listed]


def _plan_new(
    request: Request, task: Any, plan: Plan[Any], params: dict[str, Any], folder: Path, stdin_list: BinaryIO | None
) -> Job:
    spec = _spec(request, task, plan, params, folder, resume=False)
    names = _listed(request, stdin_list)
    _write_new_job(folder, _fingerprint(request, spec, task), names)
    return Job(_with_taken(spec, names), names, request.shard_size)


def _plan_resumed(
    request: Request,
    task: Any,
    plan: Plan[Any],
    params: dict[str, Any],
    folder: Path,
    stored: dict[str, Any],
    stdin_list: BinaryIO | None,
) -> Job:
    spec = _spec(request, task, plan, params, folder, resume=True)
    _check_same_job(request.output, stored, _fingerprint(request, spec, task))
    names = read_manifest(folder)
    _check_same_inputs(request.output, names, _listed(request, stdin_list))
    return Job(_with_taken(spec, names), names, request.shard_size)


def _check_same_inputs(output: str, manifest: list[str], now: list[str]) -> None:
    """``--resume`` with the same arguments must also mean the same inputs: a folder or a list may have changed."""
    if manifest == now:
        return
    differs = next((i for i, (a, b) in enumerate(zip(manifest, now, strict=False)) if a != b), None)
    if differs is not None:
        where = f"input {differs + 1} was {manifest[differs]!r} and is now {now[differs]!r}"
    else:
        where = f"the job has {len(manifest):,} inputs and they now list {len(now):,}"
    raise UsageError(
        f"--resume: the inputs changed since the job in {output} started ({where}); resume with the inputs it "
        "was given, or start a new job in a new --output folder"
    )


# The job file holds this while a new job is being planned: the folder is taken, the job not written yet.
_CLAIM = "planning"


def _claim(folder: Path, output: str) -> bool:
    """Take ``folder`` for a new job, atomically: create it if need be, then the job file, exclusively.

    Gives whether the folder was created here.
    """
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --output {output}: {exc.strerror or exc}") from None
    refused = UsageError(f"--output {output} is not empty; add --resume to finish the job in it, or give a new folder")
    if any(folder.iterdir()):
        raise refused
    claim = json.dumps({"ptm_batch_job": _CLAIM, "pid": os.getpid()}) + "\n"
    try:
        fd = os.open(folder / JOB_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise refused from None
    except OSError as exc:
        raise UsageError(f"cannot write the job into {output}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(claim)
    return created


def _unclaim(folder: Path, created: bool) -> None:
    """Give the folder back after planning failed: this process's claim goes, and the folder if made here and empty."""
    path = folder / JOB_FILE
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(stored, dict) and stored.get("ptm_batch_job") == _CLAIM and stored.get("pid") == os.getpid():
            path.unlink()
        if created:
            folder.rmdir()  # only when empty: anything else in it stays
    except (OSError, ValueError):
        pass


def _task_params(task: Any, request: Request) -> dict[str, Any]:
    """The task's options as workers get them: defaults filled in, an image format in Pillow's spelling."""
    params: dict[str, Any] = {
        option.name: option.default for option in task.options if option.stage == "run" and option.batch_flags
    }
    params.update(request.params)
    for option in task.options:  # a folder is where the user meant it, whichever machine's worker writes there
        if option.kind == "dir" and params.get(option.name) is not None:
            params[option.name] = os.path.abspath(params[option.name])
    params["batch_size"] = request.batch_size
    if params.get("image_format"):
        from ..output.imagefiles import image_format_for

        params["image_format"] = image_format_for("", params["image_format"])
    if params.get("size") not in (None, "full"):
        params["size"] = int(params["size"])
    return params


def _verified_weights(plan: Plan[Any]) -> Path:
    """The weights file every worker will load, verified here."""
    if plan.weights_file is not None:
        return Path(plan.weights_file).absolute()
    assert plan.entry is not None
    from ..nets.architectures import ensure_weights

    return ensure_weights(plan.entry).absolute()


def _fingerprint(request: Request, spec: Spec, task: Any) -> dict[str, Any]:
    """What makes two runs the same job: the options that change the records, and the inputs as given."""
    own = {
        option.name: spec.params.get(option.name)
        for option in task.options
        if option.stage == "run" and option.records and option.batch_flags
    }
    return {
        "ptm_batch_job": JOB_VERSION,
        "task": spec.task,
        "model": spec.entry.ref,
        "weights": spec.weights_label,
        "weights_sha256": spec.weights_sha256,
        "resize": spec.resize,
        "crop": spec.crop,
        "precision": spec.precision,
        **own,
        "format": spec.record_format,
        "shard_size": request.shard_size,
        "inputs": list(request.inputs),
        "recursive": request.recursive,
        "files_from": request.files_from,
        "cwd": spec.cwd,
    }


def _check_same_job(output: str, stored: dict[str, Any], facts: dict[str, Any]) -> None:
    for key, value in facts.items():
        if stored.get(key) != value:
            raise UsageError(
                f"--resume: {output} holds a job made with {key} {stored.get(key)!r}, not {value!r}; "
                "resume it with the first run's inputs and options, or give a new --output folder"
            )


def _read_job(folder: Path) -> dict[str, Any] | None:
    path = folder / JOB_FILE
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path} ({exc}); it is not a ptm batch job folder") from None
    if isinstance(stored, dict) and stored.get("ptm_batch_job") == _CLAIM:
        raise UsageError(
            f"{folder} is taken by a ptm batch job that is still being planned (process {stored.get('pid')}); "
            f"if that process is gone, remove {path} and start again"
        )
    if not isinstance(stored, dict) or stored.get("ptm_batch_job") != JOB_VERSION:
        raise UsageError(f"{path} is not a job file this version of ptm understands; give a new --output folder")
    if not (folder / MANIFEST_FILE).is_file():
        raise UsageError(f"{folder} has {JOB_FILE} but no {MANIFEST_FILE}; give a new --output folder")
    return stored


def read_job(folder: Path) -> dict[str, Any]:
    """The job file of a batch folder (for ``ptm batch merge``)."""
    stored = _read_job(folder)
    if stored is None:
        raise UsageError(f"{folder} is not a ptm batch folder (no {JOB_FILE}); give the --output of a batch run")
    return stored


def _write_new_job(folder: Path, facts: dict[str, Any], names: list[str]) -> None:
    try:
        (folder / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        # Manifest first: a folder with a job file always has its manifest.
        manifest = "".join(json.dumps(name) + "\n" for name in names)  # ASCII: any file name survives
        fsutil.write_atomic(folder / MANIFEST_FILE, manifest.encode("ascii"), replace=True)
        job = {**facts, "count": len(names)}
        fsutil.write_atomic(folder / JOB_FILE, (json.dumps(job, indent=1) + "\n").encode("utf-8"), replace=True)
    except OSError as exc:
        raise UsageError(f"cannot write the job into {folder}: {exc.strerror or exc}") from None


def read_manifest(folder: Path) -> list[str]:
    path = folder / MANIFEST_FILE
    try:
        return [json.loads(line) for line in path.read_text(encoding="ascii").splitlines()]
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path} ({exc}); the job folder is damaged, start a new one") from None


def destination(spec: Spec, folder: Path) -> Any:
    """Where a task that writes images puts them in a job: ``folder``/images, names kept, nothing replaced."""
    from ..output.imagefiles import Destination

    return Destination(
        directory=folder / IMAGES_DIR,
        suffix=str(spec.params.get("suffix") or ""),
        image_format=spec.params.get("image_format"),
    )


def _with_taken(spec: Spec, names: list[str]) -> Spec:
    """The later of two inputs whose outputs would share a name (a/x.jpg, b/x.jpg) gets an error.

    A task's own command refuses the second one in a run; across shards the
    order the workers finish in must not decide which one wins, so the first
    in the manifest keeps the name, always.
    """
    if not tasks.get(spec.task).image_outputs:
        return spec
    from dataclasses import replace

    place = destination(spec, Path("."))
    first: dict[str, str] = {}
    taken: dict[int, str] = {}
    for position, name in enumerate(names):
        path = output_name(place, name)
        if path in first:
            taken[position] = first[path]
        else:
            first[path] = name
    return replace(spec, taken=taken)


def output_name(destination: Any, name: str) -> str:
    """The file name the task's own command gives the output of input ``name`` in a folder."""
    path = destination.path_for(ImageInput(name=name))
    assert path is not None  # a directory destination always names a file
    return str(path.name)


def stale_parts(folder: Path) -> Iterator[Path]:
    """Temporary shard files a killed worker left behind (never under a shard's real name)."""
    directory = folder / SHARDS_DIR
    if directory.is_dir():
        yield from (p for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith(fsutil.PART_SUFFIX))


__all__ = ["ENGINES", "RECORD_FORMATS", "Job", "Request", "Shard", "Spec", "plan_job", "read_job"]
