"""``ptm classify``, ``ptm translate``, ``ptm zebra`` and every other task: one command per task, from its declaration.

Each task module declares its options as data (:class:`~ptm_cli.tasks.base.Option`);
here they become a click command with the options every task shares
(inputs, model, weights, device, precision, progress, results page, warm
server), and one loop runs any task: check, plan, hand over to a warm
server or load the model, run, write the records.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..runtime import streams
from . import remote, videos
from .common import CONTEXT, image_inputs, note, outcome, stdout_is_data
from .options import (
    click_option,
    device_option,
    format_option,
    input_options,
    model_option,
    precision_option,
    quiet_option,
    report_force_option,
    report_option,
    server_option,
    stack,
    video_options,
    weights_option,
)
from .progress import RunProgress


def command(name: str) -> click.Command | None:
    """The click command for the task (or alias) ``name``; None when there is none."""
    from .. import tasks

    found = tasks.find(name)
    if found is None:
        return None
    task, alias = found
    decorators: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [input_options, video_options]
    if alias is None:
        decorators.append(model_option(task.models_of(), default=task.default_model, help=task.model_help))
    decorators.append(weights_option(task.weights_help))
    decorators += [click_option(option, option.flags) for option in task.options]
    if task.record_formats:
        decorators.append(format_option)
    decorators += [device_option, precision_option, quiet_option, report_option, server_option]
    if not _declares_force(task):
        decorators.append(report_force_option)

    def callback(**params: Any) -> int:
        return run_task(name, params)

    help_text = task.help if alias is None else alias.help
    built = click.command(name, context_settings=CONTEXT, help=help_text)(stack(*decorators)(callback))
    return built


def run_task(name: str, params: dict[str, Any]) -> int:
    """One task over the inputs the command line names: the records on stdout, the exit code."""
    from .. import tasks
    from ..tasks.base import ModelOptions, RunContext

    found = tasks.find(name)
    assert found is not None
    task, alias = found
    model_fields = {option.name: params.pop(option.name) for option in task.options if option.stage == "model"}
    if "hub_args" in model_fields:
        model_fields["hub_args"] = tuple(model_fields["hub_args"])
    model = alias.model if alias is not None else params.pop("model")
    options = ModelOptions(
        model=model,
        weights=params.pop("weights"),
        device=params.pop("device"),
        precision=params.pop("precision"),
        **model_fields,
    )
    images, recursive, files_from = params.pop("images"), params.pop("recursive"), params.pop("files_from")
    report_path, quiet, fmt = params.pop("report_path"), params.pop("quiet"), params.pop("fmt", None)
    force = bool(params["force"] if _declares_force(task) else params.pop("force"))
    asked = videos.sampling_from(params.pop("every"), params.pop("frame_count"), params.pop("start"), params.pop("end"))
    videos.check_taken(task, params, videos.named_videos(images, asked))
    task.check(params)
    plan = task.plan(options)
    task.check_plan(plan, params)
    inputs = image_inputs(images, recursive, files_from)
    destination = _destination(task, params, images, files_from, tag=alias.tag if alias else task.beside_tag or model)
    named_videos = videos.check_named(params, images, files_from, asked, destination)
    sampling = task.frame_sampling(plan, asked)
    if report_path is not None:
        from ..output.report import check_destination

        check_destination(Path(report_path), force=force)
    code = remote.hand_over(params.pop("server"), servable=task.servable(params, options))
    if code is not None:
        return code
    failed = count = 0
    report: Any = None
    to_stdout = destination is not None and destination.stdout
    what = "frames" if named_videos else "images"
    with (
        stdout_is_data() as out,
        RunProgress(quiet=quiet, what=what) as progress,
        videos.VideoRun(
            task, params, sampling, force=force, on_note=progress.note, writes=destination is not None
        ) as video_run,
    ):
        progress.count_in_background(lambda: video_run.count(images, recursive, files_from))
        loaded = plan.load()
        task.prepare(loaded, params)
        if report_path is not None:
            from ..output.report import Report

            report = Report(task, task.report_header(loaded, params))

        def emit(data: bytes) -> None:
            out.flush()
            binary = out.buffer
            binary.write(data)
            binary.flush()

        context = RunContext(
            destination=destination,
            force=force,
            skip_existing=bool(params.get("skip_existing")),
            emit_bytes=emit if to_stdout else None,
            on_image=None if report is None else report.keep_thumbnail,
            keep_images=report is not None,
            on_note=progress.note,
            on_tile=progress.tiles,
            videos=video_run.outputs,
        )
        flush_every = int(params.get(task.flush_every, 1)) if task.flush_every else 1
        # With the image on stdout, records go to stderr, and only failures: stdout holds nothing else.
        with task.writer(streams.stderr() if to_stdout else out, fmt) as records:
            if named_videos or not sampling.everything:
                records.insert_columns(videos.FRAME_FIELDS)
            for item, each in video_run.paired(task.run(loaded, video_run.expand(inputs), params, context)):
                progress.advance(each.ok)
                if each.pending:
                    continue  # its record comes with a later input's (a clip of frames)
                result = each if item is None or item.frame is None else video_run.frame_outcome(item, each)
                if result is None:
                    continue  # folded into its video's one record
                count += 1
                failed += not result.ok
                if report is not None:
                    picture = item.frame.image if item is not None and item.frame is not None else None
                    report.add(result.record, output_image=result.output_image, input_image=picture)
                if to_stdout and result.ok:
                    continue
                records.write(result.record)
                if count % flush_every == 0:
                    records.flush()
                    streams.written(count)
    streams.written(count)  # stdout flushed: every record is out
    if report is not None and report_path is not None:
        report.write(Path(report_path))
        note(f"wrote the report {report_path}")
    return outcome(count, failed)


def _declares_force(task: Any) -> bool:
    """Whether the task has its own ``--force`` (for the images it writes); it then covers the report too."""
    return any(option.name == "force" for option in task.options)


def _destination(
    task: Any, params: dict[str, Any], images: tuple[str, ...], files_from: str | None, *, tag: str
) -> Any:
    """Where a task that writes images puts them (-o, --output-dir, or beside each input); None for the others."""
    if not task.writes_images(params):
        return None
    from ..errors import UsageError
    from ..output.imagefiles import make_destination

    single = len(images) == 1 and files_from is None and not Path(images[0]).is_dir()
    destination = make_destination(
        params.get("output"),
        params.get("output_dir"),
        params.get("suffix") or "",
        params.get("image_format"),
        1 if single else 2,
        beside_tag=tag,
        default_format=task.default_image_format,
    )
    if destination.beside and "-" in images:
        raise UsageError("an image read from stdin has no folder to write beside; give -o FILE or -o -")
    return destination
