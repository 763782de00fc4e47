"""``ptm translate`` and ``ptm zebra``: images in, images of the same size out."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .common import CONTEXT, image_inputs, outcome, stdout_is_data, writer
from .options import device_option, input_options, precision_option


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
        click.option("-w", "--weights", default="DEFAULT", show_default=True,
                     help="Weights variant, or the path of a local .pth/.safetensors/.h5 generator file."),
        click.option("-o", "--output", metavar="FILE|-",
                     help="Output file for one input; '-' writes the image to stdout."),
        click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Directory for the outputs of several inputs (names keep the input's stem)."),
        click.option("--suffix", default="", help="Added to each output's stem in --output-dir, e.g. _zebra."),
        click.option("--format", "image_format", metavar="FORMAT",
                     help="Image format to write (png, jpeg, webp, bmp, tiff); default: -o's extension, else png."),
        click.option("--size", default="256", show_default=True, type=SizeParam(),
                     help="Short side the generator runs at (the result is scaled back), or 'full' for the image's "
                          "own resolution in tiles."),
        click.option("--tile", default=512, show_default=True, type=click.IntRange(min=64),
                     help="Tile side for --size full (bounds memory)."),
        device_option,
        precision_option("the generator"),
        click.option("--force", is_flag=True, help="Overwrite existing output files."),
        click.option("--skip-existing", is_flag=True, help="Skip inputs whose output file already exists."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


@click.command(context_settings=CONTEXT)
@click.option("-m", "--model", required=True, help="A translation model (see `ptm models --task translate`).")
@translate_options
def translate(model: str, **options: Any) -> int:
    """Turn IMAGES into new images with a CycleGAN generator, at the input's size.

    \b
    Examples:
      ptm translate -m style_monet photo.jpg -o monet.png
      ptm translate -m summer2winter_yosemite --output-dir winter/ --suffix _winter summer/*.jpg
      ptm translate -m apple2orange --size full --tile 384 apples.jpg -o oranges.png
    """
    return run_translate(model, **options)


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
    return run_translate("horse2zebra", **options)


def run_translate(
    model: str,
    *,
    images: tuple[str, ...],
    weights: str,
    output: str | None,
    output_dir: Path | None,
    suffix: str,
    image_format: str | None,
    size: Any,  # a number of pixels or "full" (SizeParam)
    tile: int,
    device: str,
    precision: str,
    force: bool,
    skip_existing: bool,
    recursive: bool,
    files_from: str | None,
) -> int:
    from ..imagejobs import make_destination, run_image_jobs
    from ..loading import ModelOptions, plan_translator
    from ..transforms import check_side_pixels

    check_side_pixels("--tile", tile)  # before the model loads
    if isinstance(size, int):
        check_side_pixels("--size", size)
    plan = plan_translator(ModelOptions(model=model, weights=weights, device=device, precision=precision))
    inputs = image_inputs(images, recursive, files_from)
    single = len(images) == 1 and files_from is None and not Path(images[0]).is_dir()
    destination = make_destination(output, output_dir, suffix, image_format, 1 if single else 2)
    failed = count = 0
    with stdout_is_data() as out, Progress() as progress:
        translator = plan.load()

        def transform(image: Any) -> Any:
            return translator.translate(image, size=size, tile=tile, on_tile=progress.tiles)

        def describe() -> dict[str, Any]:
            return {"model": translator.entry.model, "weights": translator.weights_label}

        def emit(data: bytes) -> None:
            out.flush()
            binary = out.buffer  # type: ignore[attr-defined]
            binary.write(data)
            binary.flush()

        jobs = run_image_jobs(inputs, transform, destination, force=force, skip_existing=skip_existing,
                              describe=describe, emit_bytes=emit)  # fmt: skip
        with writer(sys.stderr if destination.stdout else out, None,
                    columns=["input", "output", "size", "seconds", "error"], flatten=_rows) as records:  # fmt: skip
            for record in jobs:
                count += 1
                failed += "error" in record
                progress.file_done()
                if destination.stdout and "error" not in record:
                    continue  # stdout holds the image; nothing else may go there
                records.write(record)
                records.flush()
    return outcome(count, failed)


def _rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    if "error" in record:
        return [{"input": record["input"], "error": f"{record['error']['type']}: {record['error']['message']}"}]
    size = record.get("size")
    return [{**record, "size": f"{size[0]}x{size[1]}" if size else "skipped"}]


class Progress:
    """A progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._files: Any = None

    def __enter__(self) -> Progress:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(console=Console(stderr=True), transient=True)
            self._files = self._bar.add_task("images", total=None)  # inputs are read lazily
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def tiles(self, done: int, total: int) -> None:
        if self._bar is None:
            return
        if self._task is None:
            self._task = self._bar.add_task("tiles", total=total)
        self._bar.update(self._task, completed=done, total=total)

    def file_done(self) -> None:
        if self._bar is None:
            return
        self._bar.advance(self._files)
        if self._task is not None:
            self._bar.remove_task(self._task)
            self._task = None
