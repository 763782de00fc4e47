"""``ptm batch``: classify or translate a large set of images in resumable shards, here, on Ray or on Spark."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from .cmd_translate import SizeParam
from .common import CONTEXT, note, outcome, stdout_is_data, writer
from .options import device_option, format_option, input_options, precision_option, quiet_option, report_option
from .progress import RunProgress


def job_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        input_options,
        click.option("--output", "output", required=True, metavar="DIR",
                     help="Folder for the job: manifest, shard files, summary (and images/ for translate)."),
        click.option("--engine", type=click.Choice(["local", "ray", "spark"]), default="local", show_default=True,
                     help="Where shards run: this process, a Ray cluster, or Spark."),
        click.option("--format", "record_format", type=click.Choice(["jsonl", "parquet"]), default="jsonl",
                     show_default=True, help="Format of the shard files (parquet needs pyarrow)."),
        click.option("--shard-size", default=1000, show_default=True, type=click.IntRange(min=1),
                     help="Inputs per shard: the unit of work, retry and --resume."),
        click.option("--resume", is_flag=True,
                     help="Finish the job in DIR: keep the shards whose files are complete, run the rest."),
        click.option("--address", metavar="ADDRESS",
                     help="Ray cluster (auto, ray://HOST:PORT) or Spark master (spark://HOST:PORT); default: here."),
        device_option,
        precision_option("the model"),
        click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
                     help="Images per forward pass on each worker."),
        quiet_option,
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


@click.group(context_settings=CONTEXT)
def batch() -> None:
    """Classify or translate many images in shards, here or on Ray or Spark, resumable.

    \b
    Examples:
      ptm batch classify -r photos/ --output run1
      ptm batch classify --files-from list.txt --output run1 --engine ray --address auto
      ptm batch classify -r photos/ --output run1 --resume
      ptm batch merge run1 -f csv > labels.csv
    """


@batch.command("classify", context_settings=CONTEXT)
@job_options
@click.option("-m", "--model", default="resnet101", show_default=True, help="Model name (see `ptm models`).")
@click.option("-w", "--weights", default="DEFAULT", show_default=True,
              help="Weights variant, or the path of a local weights file (every worker must see it).")  # fmt: skip
@click.option("-k", "--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="Labels per image.")
@click.option("--resize", type=click.IntRange(min=1), help="Resize the shorter side to N before cropping.")
@click.option("--crop", type=click.IntRange(min=1), help="Centre crop of N x N pixels.")
def batch_classify(model: str, weights: str, top_k: int, resize: int | None, crop: int | None, **job: Any) -> int:
    """Classify IMAGES (files, folders, --files-from) into shard files under --output DIR.

    \b
    Examples:
      ptm batch classify -r photos/ --output run1
      ptm batch classify -m alexnet --shard-size 500 --format parquet -r photos/ --output run2 --engine spark
    """
    from ..tasks.loading import ModelOptions

    options = ModelOptions(model=model, weights=weights, device=job.pop("device"), precision=job.pop("precision"),
                           resize=resize, crop=crop)  # fmt: skip
    return _run("classify", options, top_k=top_k, **job)


@batch.command("translate", context_settings=CONTEXT)
@job_options
@click.option("-m", "--model", required=True, help="A translation model (see `ptm models --task translate`).")
@click.option("-w", "--weights", default="DEFAULT", show_default=True,
              help="Weights variant, or the path of a local generator file (every worker must see it).")
@click.option("--size", default="256", show_default=True, type=SizeParam(),
              help="Short side the generator runs at, or 'full' for the image's own resolution in tiles.")
@click.option("--tile", type=click.IntRange(min=64),
              help="Tile side for --size full; default: one pass when the image fits the memory budget, else 512.")
@click.option("--suffix", default="", help="Added to each output's stem, e.g. _zebra.")
@click.option("--image-format", metavar="FORMAT", help="Images to write: png (default), jpeg, webp, bmp, tiff.")
def batch_translate(model: str, weights: str, size: int | str, tile: int | None, suffix: str, image_format: str | None,
                    **job: Any) -> int:  # fmt: skip
    """Translate IMAGES into DIR/images/ (names keep the input's stem; nothing is overwritten).

    \b
    Examples:
      ptm batch translate -m horse2zebra -r horses/ --output zebras --suffix _zebra
    """
    from ..tasks.loading import ModelOptions

    options = ModelOptions(model=model, weights=weights, device=job.pop("device"), precision=job.pop("precision"))
    return _run("translate", options, size=size, tile=tile, suffix=suffix, image_format=image_format, **job)


def _run(task: str, options: Any, *, images: tuple[str, ...], recursive: bool, files_from: str | None, output: str,
         engine: str, record_format: str, shard_size: int, resume: bool, address: str | None, batch_size: int,
         quiet: bool, **extra: Any) -> int:  # fmt: skip
    from ..batch.job import Request, plan_job
    from ..batch.run import engine_runner, run_job

    if not images and files_from is None:
        raise click.UsageError("give at least one image, directory or --files-from")
    engine_runner(engine)  # a missing engine fails before the job folder is made
    request = Request(task=task, options=options, inputs=images, output=output, recursive=recursive,
                      files_from=files_from, record_format=record_format, shard_size=shard_size,
                      batch_size=batch_size, **extra)  # fmt: skip
    job = plan_job(request, resume=resume, stdin_list=sys.stdin.buffer if files_from == "-" else None)
    with stdout_is_data() as out, RunProgress(quiet=quiet) as progress:
        progress.set_total(sum(len(s.names) for s in job.shards))
        summary = run_job(job, engine=engine, address=address, notify=progress.note, on_shard=progress.advance_by)
        out.write(json.dumps(summary) + "\n")
    if summary["inputs"]:
        note(f"{summary['ok']} of {summary['inputs']} inputs done in {summary['wall_seconds']:.1f} s; "
             f"`ptm batch merge {output}` prints the records")  # fmt: skip
    return outcome(summary["inputs"], summary["failed"])


@batch.command("merge", context_settings=CONTEXT)
@click.argument("folder", metavar="DIR")
@format_option
@report_option
def merge(folder: str, fmt: str | None, report_path: str | None) -> int:
    """Print the records of the batch job in DIR, in manifest order (missing shards as WorkerFailed records).

    \b
    Examples:
      ptm batch merge run1 > records.jsonl
      ptm batch merge run1 -f csv > labels.csv
      ptm batch merge run1 --report run1.html
    """
    from pathlib import Path

    from ..batch.run import merge as merged

    if report_path is not None:
        from ..output.report import check_destination

        check_destination(Path(report_path))
    task, records = merged(Path(folder))
    report = cwd = None
    if report_path is not None:
        from ..batch.job import read_job

        facts = read_job(Path(folder))
        cwd = str(facts.get("cwd") or ".")
        report = _merge_report(facts, folder, task)
    failed = count = 0
    with stdout_is_data() as out:
        if task == "classify":
            from .records import classify_writer

            chosen = classify_writer(out, fmt)
        else:
            from .cmd_translate import _rows

            chosen = writer(out, fmt, columns=["input", "output", "size", "seconds", "error"], flatten=_rows)
        with chosen as sink:
            for record in records:
                sink.write(record)
                count += 1
                failed += "error" in record
                if report is not None and cwd is not None:
                    _add_to_report(report, cwd, task, record)
    if report is not None and report_path is not None:
        report.write(Path(report_path))
        note(f"wrote the report {report_path}")
    return outcome(count, failed) if count else 0


def _merge_report(facts: dict[str, Any], folder: Any, task: str) -> Any:
    """A results page for a finished job, its header from the job file."""
    from ..output.report import Report

    header = {"model": facts.get("model", ""), "weights": facts.get("weights", ""),
              "precision": facts.get("precision", ""), "job": str(folder)}  # fmt: skip
    if task == "classify":
        header.update({"resize": facts.get("resize"), "crop": facts.get("crop"), "top-k": facts.get("top_k")})
    return Report(task, header)


def _add_to_report(report: Any, cwd: str, task: str, record: dict[str, Any]) -> None:
    """The record with thumbnails made now from its input (and, for translation, its output image)."""
    name = str(record.get("input"))
    source = _open_quietly(name, cwd) if "error" not in record else None
    if source is not None:
        report.keep_thumbnail(name, source)
    output = record.get("output") if task == "translate" and "error" not in record else None
    report.add(record, output_image=_open_quietly(str(output), cwd) if output else None)


def _open_quietly(name: str, cwd: str) -> Any:
    """The image at ``name`` (relative to where the job was started) for a thumbnail, or None."""
    from pathlib import Path

    from ..errors import PtmError
    from ..images.decode import load_image

    path = Path(name) if Path(name).is_absolute() else Path(cwd) / name
    try:
        return load_image(path, name=name)
    except PtmError:
        return None
