"""``ptm classify``: ImageNet labels for images."""

from __future__ import annotations

from typing import IO, Any

import click

from .common import CONTEXT, image_inputs, outcome, stdout_is_data, writer
from .options import device_option, format_option, input_options, precision_option


@click.command(context_settings=CONTEXT)
@input_options
@click.option(
    "-m",
    "--model",
    default="resnet101",
    show_default=True,
    help="Model name (see `ptm models`), or hub:OWNER/NAME[:REF]/ENTRY or hub:./DIR/ENTRY for a torch.hub model.",
)
@click.option(
    "-w",
    "--weights",
    default="DEFAULT",
    show_default=True,
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
) -> int:
    """Classify IMAGES (files, directories, or - for stdin) with an ImageNet model.

    \b
    Examples:
      ptm classify dog.jpg
      ptm classify -m alexnet -k 3 photos/
      ptm classify -w IMAGENET1K_V1 --resize 256 --crop 224 dog.jpg
      find . -name '*.jpg' | ptm classify --files-from - -f csv > labels.csv
      ptm classify -m hub:pytorch/vision:v0.10.0/resnet18 --arg pretrained=true dog.jpg
    """
    from ..classify import classify_images, to_record
    from ..loading import ModelOptions, plan_classifier

    options = ModelOptions(
        model=model, weights=weights, device=device, precision=precision, resize=resize, crop=crop,
        labels_file=labels_file, trust_repo=trust_repo, hub_args=hub_args,
    )  # fmt: skip
    plan = plan_classifier(options)
    inputs = image_inputs(images, recursive, files_from)
    failed = count = 0
    with stdout_is_data() as out:
        classifier = plan.load()
        if compile_model:
            classifier.compile()
        results = classify_images(
            inputs, classifier, top_k=top_k, batch_size=batch_size, workers=workers, full_decode=full_decode
        )
        with classify_writer(out, fmt) as records:
            for result in results:
                records.write(to_record(result, classifier))
                failed += not result.ok
                count += 1
                if count % batch_size == 0:
                    records.flush()
    return outcome(count, failed)


def classify_writer(out: IO[str], fmt: str | None) -> Any:
    """The writer for classification records: one row per prediction in csv/tsv/table."""

    def rows(record: dict[str, Any]) -> list[dict[str, Any]]:
        if "error" in record:
            error = record["error"]
            return [{"input": record["input"], "error": f"{error['type']}: {error['message']}"}]
        return [{"input": record["input"], **p} for p in record["predictions"]]

    def table_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
        result = rows(record)
        for i, row in enumerate(result):
            if "probability" in row:
                row["probability"] = f"{100 * row['probability']:.2f}%"
            if i:
                row["input"] = ""
        return result

    from ..output import default_format

    chosen = fmt or default_format(out)
    if chosen == "table":
        return writer(
            out,
            chosen,
            columns=["input", "rank", "label", "index", "probability", "error"],
            flatten=table_rows,
            table_style=lambda row: "red" if row.get("error") else None,
        )
    return writer(out, chosen, columns=["input", "rank", "index", "label", "probability", "error"], flatten=rows)
