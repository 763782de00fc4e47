"""``ptm translate`` and ``ptm zebra``: images in, images of the same size out."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from . import completion, remote
from .common import CONTEXT, image_inputs, note, outcome, stdout_is_data, writer
from .options import device_option, input_options, precision_option, quiet_option, report_option
from .progress import RunProgress


class SizeParam(click.ParamType):
    name = "N|full"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, int) or value == "full":
            return value
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of pixels nor 'full'", param, ctx)
        if number < 1:
            self.fail("the size must be at least 1 pixel", param, ctx)
        return number


def translate_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        input_options,
        click.option("-w", "--weights", default="DEFAULT", show_default=True, shell_complete=completion.weights,
                     help="Weights variant, or the path of a local .pth/.safetensors/.h5 generator file."),
        click.option("-o", "--output", metavar="FILE|-",
                     help="Output file for one input; '-' writes the image to stdout. Without -o or --output-dir, "
                          "each output goes next to its input (horse.jpg -> horse.zebra.png)."),
        click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Directory for the outputs of several inputs (names keep the input's stem)."),
        click.option("--suffix", default="",
                     help="Added to each output's stem, e.g. _zebra (default next to the input: .zebra or .MODEL)."),
        click.option("--format", "image_format", metavar="FORMAT",
                     help="Image format to write (png, jpeg, webp, bmp, tiff); default: -o's extension, else png."),
        click.option("--size", default="256", show_default=True, type=SizeParam(),
                     help="Short side the generator runs at (the result is scaled back), or 'full' for the image's "
                          "own resolution in tiles."),
        click.option("--tile", type=click.IntRange(min=64),
                     help="Tile side for --size full (bounds memory); default: one pass when the image fits "
                          "the memory budget, else 512-pixel tiles."),
        device_option,
        precision_option("the generator"),
        click.option("--force", is_flag=True, help="Overwrite existing output files."),
        click.option("--skip-existing", is_flag=True, help="Skip inputs whose output file already exists."),
        quiet_option,
        report_option,
        remote.server_option,
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


@click.command(context_settings=CONTEXT)
@click.option("-m", "--model", required=True, shell_complete=completion.models("translate"),
              help="A translation model (see `ptm models --task translate`).")
@translate_options
def translate(model: str, **options: Any) -> int:
    """Turn IMAGES into new images with a CycleGAN generator, at the input's size.

    \b
    Examples:
      ptm translate -m style_monet photo.jpg -o monet.png
      ptm translate -m summer2winter_yosemite --output-dir winter/ --suffix _winter summer/*.jpg
      ptm translate -m apple2orange --size full --tile 384 apples.jpg -o oranges.png
    """
    return run_translate(model, tag=model, **options)


@click.command(context_settings=CONTEXT)
@translate_options
def zebra(**options: Any) -> int:
    """Horses into zebras: the book's CycleGAN generator (ptm translate -m horse2zebra).

    \b
    Examples:
      ptm zebra horse.jpg -o zebra.png
      cat horse.jpg | ptm zebra - -o - > zebra.png
      ptm zebra --size full big-horse.jpg -o big-zebra.png
      ptm zebra --output-dir zebras/ --skip-existing horses/
    """
    return run_translate("horse2zebra", tag="zebra", **options)


def run_translate(
    model: str,
    *,
    tag: str,
    images: tuple[str, ...],
    weights: str,
    output: str | None,
    output_dir: Path | None,
    suffix: str,
    image_format: str | None,
    size: Any,  # a number of pixels or "full" (SizeParam)
    tile: int | None,
    device: str,
    precision: str,
    force: bool,
    skip_existing: bool,
    recursive: bool,
    files_from: str | None,
    quiet: bool,
    report_path: str | None,
    server: str | None,
) -> int:
    from ..images.inputs import count_inputs
    from ..output.imagefiles import make_destination, run_image_jobs
    from ..settings import check_side_pixels
    from ..tasks.loading import ModelOptions, plan_translator

    if tile is not None:
        check_side_pixels("--tile", tile)  # before the model loads
    if isinstance(size, int):
        check_side_pixels("--size", size)
    options = ModelOptions(model=model, weights=weights, device=device, precision=precision)
    plan = plan_translator(options)
    inputs = image_inputs(images, recursive, files_from)
    single = len(images) == 1 and files_from is None and not Path(images[0]).is_dir()
    destination = make_destination(output, output_dir, suffix, image_format, 1 if single else 2, beside_tag=tag)
    if destination.beside and "-" in images:
        raise UsageError("an image read from stdin has no folder to write beside; give -o FILE or -o -")
    if report_path is not None:
        from ..output.report import check_destination

        check_destination(Path(report_path))
    job: Any = None
    if remote.wanted(server) and report_path is None:  # --report needs the images here: it runs in-process
        request = {"options": remote.model_fields(options), "size": size, "tile": tile}
        job = remote.open_job("translate", request)
    report: Any = None
    pending: list[Any] = []  # (input, output) of the image whose record comes next
    failed = count = 0
    with stdout_is_data() as out, RunProgress(quiet=quiet) as progress, job or contextlib.nullcontext():
        progress.count_in_background(lambda: count_inputs(images, recursive=recursive, files_from=files_from))
        translator: Any = plan.load() if job is None else None
        if report_path is not None:
            from ..output.report import Report

            report = Report("translate", {
                "model": translator.entry.model, "weights": translator.weights_label, "size": str(size),
                "tile": tile if size == "full" else None, "device": str(translator.device),
                "precision": translator.precision.name,
            })  # fmt: skip

        def transform(image: Any) -> Any:
            result = translator.translate(image, size=size, tile=tile, on_tile=progress.tiles)
            if report is not None:
                pending[:] = [image, result]
            return result

        def describe() -> dict[str, Any]:
            if translator is None:
                return {"model": job.ready()["model"], "weights": job.ready()["weights"]}
            return {"model": translator.entry.model, "weights": translator.weights_label}

        def emit(data: bytes) -> None:
            out.flush()
            binary = out.buffer  # type: ignore[attr-defined]
            binary.write(data)
            binary.flush()

        jobs = run_image_jobs(inputs, transform, destination, force=force, skip_existing=skip_existing,
                              describe=describe, emit_bytes=emit, on_note=progress.note,
                              render=None if job is None else job.render)  # fmt: skip
        with writer(sys.stderr if destination.stdout else out, None,
                    columns=["input", "output", "size", "seconds", "error"], flatten=_rows) as records:  # fmt: skip
            for record in jobs:
                count += 1
                failed += "error" in record
                progress.advance("error" not in record)
                if report is not None:
                    if pending and "error" not in record and not record.get("skipped"):
                        report.keep_thumbnail(record["input"], pending[0])
                        report.add(record, output_image=pending[1])
                    else:
                        report.add(record)
                    pending.clear()
                if destination.stdout and "error" not in record:
                    continue  # stdout holds the image; nothing else may go there
                records.write(record)
                records.flush()
    if report is not None and report_path is not None:
        report.write(Path(report_path))
        note(f"wrote the report {report_path}")
    return outcome(count, failed)


def _rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    if "error" in record:
        return [{"input": record["input"], "error": f"{record['error']['type']}: {record['error']['message']}"}]
    size = record.get("size")
    return [{**record, "size": f"{size[0]}x{size[1]}" if size else "skipped"}]
