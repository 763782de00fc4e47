"""``ptm classify``: ImageNet labels for images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import completion, remote
from .common import CONTEXT, image_inputs, note, outcome, stdout_is_data
from .options import device_option, format_option, input_options, precision_option, quiet_option, report_option
from .progress import RunProgress
from .records import classify_writer, write_served_records


@click.command(context_settings=CONTEXT)
@input_options
@click.option(
    "-m",
    "--model",
    default="resnet101",
    show_default=True,
    shell_complete=completion.models("classify"),
    help="Model name (see `ptm models`), or hub:OWNER/NAME[:REF]/ENTRY or hub:./DIR/ENTRY for a torch.hub model.",
)
@click.option(
    "-w",
    "--weights",
    default="DEFAULT",
    show_default=True,
    shell_complete=completion.weights,
    help="Weights variant (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT), or the path of a local weights file.",
)
@click.option("-k", "--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="Labels per image.")
@format_option
@device_option
@precision_option("the model")
@click.option(
    "--batch-size", default=8, show_default=True, type=click.IntRange(1, 1024), help="Images per forward pass."
)
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64), help="Image decoding threads.")
@click.option("--resize", type=click.IntRange(min=1), help="Resize the shorter side to N before cropping.")
@click.option("--crop", type=click.IntRange(min=1), help="Centre crop of N x N pixels.")
@click.option(
    "--full-decode",
    is_flag=True,
    help="Decode large JPEGs at full size instead of a reduced scale that still covers --resize twice over.",
)
@click.option(
    "--compile",
    "compile_model",
    is_flag=True,
    help="Compile the model with torch.compile: a minute or more at start, then faster batches (see README).",
)
@click.option("--labels", "labels_file", metavar="FILE", help="Class names for a hub: model, one per line.")
@click.option("--trust-repo", is_flag=True, help="Run a hub: model's repository code without it being trusted first.")
@click.option("--arg", "hub_args", multiple=True, metavar="KEY=VALUE", help="Argument for a hub: entry point.")
@quiet_option
@report_option
@remote.server_option
def classify(
    images: tuple[str, ...],
    recursive: bool,
    files_from: str | None,
    model: str,
    weights: str,
    top_k: int,
    fmt: str | None,
    device: str,
    precision: str,
    batch_size: int,
    workers: int,
    resize: int | None,
    crop: int | None,
    full_decode: bool,
    compile_model: bool,
    labels_file: str | None,
    trust_repo: bool,
    hub_args: tuple[str, ...],
    quiet: bool,
    report_path: str | None,
    server: str | None,
) -> int:
    """Classify IMAGES (files, directories, or - for stdin) with an ImageNet model.

    \b
    Examples:
      ptm classify dog.jpg
      ptm classify -m alexnet -k 3 photos/
      ptm classify -w IMAGENET1K_V1 --resize 256 --crop 224 dog.jpg
      find . -name '*.jpg' | ptm classify --files-from - -f csv > labels.csv
      ptm classify -m hub:pytorch/vision:v0.10.0/resnet18 --arg pretrained=true dog.jpg
      ptm classify --server auto dog.jpg      # a warm server answers in a fraction of a second
    """
    from ..images.inputs import count_inputs
    from ..tasks.loading import ModelOptions, plan_classifier

    options = ModelOptions(
        model=model, weights=weights, device=device, precision=precision, resize=resize, crop=crop,
        labels_file=labels_file, trust_repo=trust_repo, hub_args=hub_args,
    )  # fmt: skip
    plan = plan_classifier(options)
    inputs = image_inputs(images, recursive, files_from)
    # --compile, --report and hub: models need this process; they run here, with the same output.
    if remote.wanted(server) and not (compile_model or report_path or options.is_hub):
        items = list(inputs)
        job = _server_job(options, items, top_k, batch_size, workers, full_decode)
        if job is not None:
            with job:
                return write_served_records(job.records(), fmt, quiet, batch_size, (images, recursive, files_from))
        inputs = iter(items)
    from ..tasks.classify import classify_images, to_record

    report = None
    if report_path is not None:
        from ..output.report import check_destination

        check_destination(Path(report_path))
    failed = count = 0
    with stdout_is_data() as out, RunProgress(quiet=quiet) as progress:
        progress.count_in_background(lambda: count_inputs(images, recursive=recursive, files_from=files_from))
        classifier = plan.load()
        if compile_model:
            classifier.compile()
        if report_path is not None:
            report = _classify_report(classifier, top_k)
        results = classify_images(
            inputs, classifier, top_k=top_k, batch_size=batch_size, workers=workers, full_decode=full_decode,
            on_image=None if report is None else lambda item, image: report.keep_thumbnail(item.name, image),
            on_note=progress.note,
        )  # fmt: skip
        with classify_writer(out, fmt) as records:
            for result in results:
                record = to_record(result, classifier)
                records.write(record)
                if report is not None:
                    report.add(record)
                failed += not result.ok
                count += 1
                progress.advance(result.ok)
                if count % batch_size == 0:
                    records.flush()
    if report is not None and report_path is not None:
        report.write(Path(report_path))
        note(f"wrote the report {report_path}")
    return outcome(count, failed)


def _server_job(
    options: Any, items: list[Any], top_k: int, batch_size: int, workers: int, full_decode: bool
) -> Any:
    from ..serve.client import encode_inputs

    encoded, payload = encode_inputs(items)
    request = {"options": remote.model_fields(options), "inputs": encoded, "top_k": top_k,
               "batch_size": batch_size, "workers": workers, "full_decode": full_decode}  # fmt: skip
    return remote.open_job("classify", request, payload)


def _classify_report(classifier: Any, top_k: int) -> Any:
    from ..output.report import Report

    p = classifier.preprocess
    steps = [f"resize {p.resize}" if p.resize else "", f"crop {p.crop}" if p.crop else "", p.interpolation]
    return Report(
        "classify",
        {
            "model": classifier.entry.model,
            "weights": classifier.weights_label,
            "preprocessing": ", ".join(x for x in steps if x),
            "top-k": top_k,
            "device": str(classifier.device),
            "precision": classifier.precision.name,
        },
    )
