"""``ptm batch``: any task over a large set of images in resumable shards, here, on Ray or on Spark."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..runtime import streams
from . import completion
from .common import CONTEXT, note, outcome, stdout_is_data
from .options import (
    click_option,
    device_option,
    format_option,
    input_options,
    precision_option,
    quiet_option,
    report_force_option,
    report_option,
    stack,
)
from .progress import RunProgress

job_options = stack(
    input_options,
    click.option(
        "--output",
        "output",
        required=True,
        metavar="DIR",
        help="Folder for the job: manifest, shard files, summary (and images/ for tasks that write images).",
    ),
    click.option(
        "--engine",
        type=click.Choice(["local", "ray", "spark"]),
        default="local",
        show_default=True,
        help="Where shards run: this process, a Ray cluster, or Spark.",
    ),
    click.option(
        "--format",
        "record_format",
        type=click.Choice(["jsonl", "parquet"]),
        default="jsonl",
        show_default=True,
        help="Format of the shard files (parquet needs pyarrow).",
    ),
    click.option(
        "--shard-size",
        default=1000,
        show_default=True,
        type=click.IntRange(min=1, max=10_000_000),
        help="Inputs per shard: the unit of work, retry and --resume.",
    ),
    click.option(
        "--resume", is_flag=True, help="Finish the job in DIR: keep the shards whose files are complete, run the rest."
    ),
    click.option(
        "--address",
        metavar="ADDRESS",
        help="Ray cluster (auto, ray://HOST:PORT) or Spark master (spark://HOST:PORT); default: here.",
    ),
    device_option,
    precision_option,
    click.option(
        "--batch-size",
        default=8,
        show_default=True,
        type=click.IntRange(min=1, max=1024),
        help="Images per forward pass on each worker.",
    ),
    quiet_option,
)


class TaskGroup(click.Group):
    """``ptm batch TASK`` for every task, made from its declaration, and ``ptm batch merge``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from .. import tasks

        return sorted({*super().list_commands(ctx), *tasks.names()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from .. import tasks

        task = tasks.registry().get(name)
        if task is None:
            return super().get_command(ctx, name)
        decorators: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
            job_options,
            click.option(
                "-m",
                "--model",
                default=task.default_model,
                required=task.default_model is None,
                show_default=task.default_model is not None,
                shell_complete=completion.models(task.models_of()),
                help=f"Model name (see `ptm models --task {task.models_of()}`).",
            ),
            click.option(
                "-w",
                "--weights",
                default="DEFAULT",
                show_default=True,
                shell_complete=completion.weights,
                help="Weights variant, or the path of a local weights file (every worker must see it).",
            ),
            *(click_option(option, option.batch_flags) for option in task.options if option.batch_flags),
        ]

        def callback(**params: Any) -> int:
            return _run(task, params)

        return click.command(name, context_settings=CONTEXT, help=task.batch_help)(stack(*decorators)(callback))


@click.group(cls=TaskGroup, context_settings=CONTEXT)
def batch() -> None:
    """Run any task over many images in shards, here or on Ray or Spark, resumable.

    \b
    Examples:
      ptm batch classify -r photos/ --output run1
      ptm batch classify --files-from list.txt --output run1 --engine ray --address auto
      ptm batch classify -r photos/ --output run1 --resume
      ptm batch merge run1 -f csv > labels.csv
    """


def _run(task: Any, params: dict[str, Any]) -> int:
    from ..batch.job import Request, plan_job
    from ..batch.run import engine_runner, run_job
    from ..tasks.base import ModelOptions

    images, files_from = params.pop("images"), params.pop("files_from")
    if not images and files_from is None:
        raise click.UsageError("give at least one image, directory or --files-from")
    engine, output, quiet = params.pop("engine"), params.pop("output"), params.pop("quiet")
    engine_runner(engine)  # a missing engine fails before the job folder is made
    model_fields = {
        option.name: params.pop(option.name)
        for option in task.options
        if option.stage == "model" and option.name in params
    }
    options = ModelOptions(
        model=params.pop("model"),
        weights=params.pop("weights"),
        device=params.pop("device"),
        precision=params.pop("precision"),
        **model_fields,
    )
    request = Request(
        task=task.name,
        options=options,
        inputs=images,
        output=output,
        recursive=params.pop("recursive"),
        files_from=files_from,
        record_format=params.pop("record_format"),
        shard_size=params.pop("shard_size"),
        batch_size=params.pop("batch_size"),
        params={k: v for k, v in params.items() if k not in ("resume", "address")},
    )
    stdin = streams.stdin()
    job = plan_job(request, resume=params["resume"], stdin_list=stdin.buffer if files_from == "-" else None)
    with stdout_is_data() as out, RunProgress(quiet=quiet) as progress:
        progress.set_total(sum(len(s.names) for s in job.shards))
        summary = run_job(
            job, engine=engine, address=params["address"], notify=progress.note, on_shard=progress.advance_by
        )
        out.write(json.dumps(summary) + "\n")
    if summary["inputs"]:
        note(
            f"{summary['ok']} of {summary['inputs']} inputs done in {summary['wall_seconds']:.1f} s; "
            f"`ptm batch merge {output}` prints the records"
        )
    return outcome(summary["inputs"], summary["failed"])


@batch.command("merge", context_settings=CONTEXT)
@click.argument("folder", metavar="DIR")
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    help="Write the job's records into the one file its task makes of them instead (ptm batch embed: an index).",
)
@format_option
@report_option
@report_force_option
def merge(folder: str, output: str | None, fmt: str | None, report_path: str | None, force: bool) -> int:
    """Print the records of the batch job in DIR, in manifest order (missing shards as WorkerFailed records).

    \b
    Examples:
      ptm batch merge run1 > records.jsonl
      ptm batch merge run1 -f csv > labels.csv
      ptm batch merge run1 --report run1.html
      ptm batch merge run2 -o photos.parquet    # a `ptm batch embed` job as one index
    """
    from .. import tasks
    from ..batch.run import merge as merged

    if output is not None:
        from ..batch.job import read_job

        facts = read_job(Path(folder))
        task = tasks.get(str(facts["task"]))
        note(task.collect(lambda: merged(Path(folder))[1], Path(output), facts, force=force))
        return 0
    if report_path is not None:
        from ..output.report import check_destination

        check_destination(Path(report_path), force=force)
    name, records = merged(Path(folder))
    task = tasks.get(name)
    report = cwd = None
    if report_path is not None:
        from ..batch.job import read_job
        from ..output.report import Report

        facts = read_job(Path(folder))
        cwd = str(facts.get("cwd") or ".")
        report = Report(task, {**task.batch_report_header(facts), "job": folder})
    failed = count = 0
    with stdout_is_data() as out, task.writer(out, fmt) as sink:
        for record in records:
            sink.write(record)
            count += 1
            failed += "error" in record
            if report is not None and cwd is not None:
                _add_to_report(report, cwd, record)
    if report is not None and report_path is not None:
        report.write(Path(report_path))
        note(f"wrote the report {report_path}")
    return outcome(count, failed) if count else 0


def _add_to_report(report: Any, cwd: str, record: dict[str, Any]) -> None:
    """The record with thumbnails made now from its input (and the image the task wrote, if any)."""
    name = str(record.get("input"))
    source = _open_quietly(name, cwd) if "error" not in record else None
    if source is not None:
        report.keep_thumbnail(name, source)
    output = record.get("output") if "error" not in record else None
    report.add(record, output_image=_open_quietly(str(output), cwd) if output else None)


def _open_quietly(name: str, cwd: str) -> Any:
    """The image at ``name`` (relative to where the job was started) for a thumbnail, or None."""
    from ..errors import PtmError
    from ..images.decode import load_image

    path = Path(name) if Path(name).is_absolute() else Path(cwd) / name
    try:
        return load_image(path, name=name)
    except PtmError:
        return None
