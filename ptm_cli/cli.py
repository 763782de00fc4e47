"""The ``ptm`` command line: parse arguments, call the library, write results.

Only click is imported at start-up; each command imports what it needs when
it runs, so ``ptm --help`` stays instant. Library errors (``PtmError``) become
one-line messages and exit codes in `main`, the only place that does so.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import click

from . import __version__
from .errors import EXIT_INPUT_FAILED, EXIT_INTERRUPTED, EXIT_OK, PtmError, UsageError

FORMATS = ("table", "jsonl", "json", "csv", "tsv")
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process ended by SIGPIPE
EXIT_INTERNAL = 70  # a bug in ptm (EX_SOFTWARE)
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _debug() -> bool:
    return os.environ.get("PTM_DEBUG", "").lower() in ("1", "true", "yes")


def _note(message: str) -> None:
    click.echo(f"ptm: {message}", err=True)


class _ReaderGone(Exception):
    """stdout's reader closed the pipe (``| head -1``)."""


@contextlib.contextmanager
def _stdout_is_data() -> Iterator[IO[str]]:
    """Yield the real stdout for records; anything else printed goes to stderr.

    torch.hub and some model code print progress with ``print()``; inside
    this block that lands on stderr and cannot corrupt piped output. A closed
    pipe is turned into `_ReaderGone` here so that click, which would exit 1
    for it, never sees it.
    """
    data = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield data
    except BrokenPipeError:
        raise _ReaderGone from None


def _writer(stream: IO[str], fmt: str | None, **kwargs: Any) -> Any:
    from .output import RecordWriter, default_format

    return RecordWriter(stream, fmt or default_format(stream), **kwargs)


def _format_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-f",
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        help="Output format. Default: table on a terminal, jsonl when piped.",
    )(f)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="ptm")
def cli() -> None:
    """Run pretrained PyTorch image models on your own pictures.

    Results go to stdout (a table on a terminal, JSON Lines in a pipe);
    progress and messages go to stderr. Exit codes: 0 all done, 1 some
    inputs failed, 2 usage/configuration/weights error, 130 interrupted.
    """


# --- classify ----------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.argument("images", nargs=-1)
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
    help="Weights variant (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT) or a local weights file.",
)
@click.option("-k", "--top-k", default=5, show_default=True, type=click.IntRange(min=1), help="Labels per image.")
@_format_option
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option(
    "--precision",
    type=click.Choice(("fp32", "bf16", "fp16", "auto")),
    default="fp32",
    show_default=True,
    help="Float type for the model. fp32 matches the reference results exactly.",
)
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1), help="Images per forward pass.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Image decoding threads.")
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
@click.option("-r", "--recursive", is_flag=True, help="Descend into sub-directories.")
@click.option("--files-from", metavar="FILE", help="Read image paths, one per line, from FILE ('-' for stdin).")
@click.option("--labels", "labels_file", metavar="FILE", help="Class names for a hub: model, one per line.")
@click.option("--trust-repo", is_flag=True, help="Run a hub: model's repository code without it being trusted first.")
@click.option("--arg", "hub_args", multiple=True, metavar="KEY=VALUE", help="Argument for a hub: entry point.")
def classify(
    images: tuple[str, ...],
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
    recursive: bool,
    files_from: str | None,
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
    from .classify import classify_images, to_record
    from .device import check_device_spec

    check_device_spec(device)
    load_classifier = _classifier_loader(
        model, weights, device=device, precision=precision, resize=resize, crop=crop,
        labels_file=labels_file, trust_repo=trust_repo, hub_args=hub_args,
    )  # fmt: skip
    inputs = _inputs(images, recursive, files_from)
    failed = 0
    count = 0
    with _stdout_is_data() as out:
        classifier = load_classifier()
        if compile_model:
            classifier.compile()
        results = classify_images(
            inputs, classifier, top_k=top_k, batch_size=batch_size, workers=workers, full_decode=full_decode
        )
        with _classify_writer(out, fmt) as writer:
            for result in results:
                writer.write(to_record(result, classifier))
                failed += not result.ok
                count += 1
                if count % batch_size == 0:
                    writer.flush()
    return _outcome(count, failed)


def _outcome(count: int, failed: int) -> int:
    """The exit code of a run over many inputs, with a note when it is not 0."""
    if count == 0:
        _note("no images found in the given directories")
        return EXIT_INPUT_FAILED
    if failed:
        _note(f"{failed} of {count} inputs failed; see their error records")
        return EXIT_INPUT_FAILED
    return EXIT_OK


def _inputs(images: tuple[str, ...], recursive: bool, files_from: str | None) -> Iterator[Any]:
    """The images named on the command line, checked now and read lazily."""
    from .inputs import expand_inputs

    if not images and files_from is None:
        raise click.UsageError("give at least one image, directory, '-' or --files-from")
    return expand_inputs(
        images,
        recursive=recursive,
        files_from=files_from,
        stdin=sys.stdin.buffer if "-" in images else None,
        stdin_list=sys.stdin.buffer if files_from == "-" else None,
    )


def _classifier_loader(
    model: str,
    weights: str,
    *,
    device: str,
    precision: str,
    resize: int | None,
    crop: int | None,
    labels_file: str | None,
    trust_repo: bool,
    hub_args: tuple[str, ...],
) -> Callable[[], Any]:
    """Check the model arguments now; return what loads the classifier later."""
    from dataclasses import replace

    from .classify import Classifier

    if model.startswith("hub:"):
        from .hub import hub_classifier, parse_kwargs, parse_model_spec

        parse_model_spec(model)
        kwargs = parse_kwargs(list(hub_args))
        if weights.upper() != "DEFAULT":
            raise UsageError("-w/--weights does not apply to hub: models; pass entry-point arguments with --arg")

        def load_hub() -> Any:
            classifier = hub_classifier(
                model, labels_file=labels_file, device=device, precision=precision, trust_repo=trust_repo,
                kwargs=kwargs,
            )  # fmt: skip
            if resize is not None or crop is not None:
                current = classifier.preprocess
                classifier.preprocess = replace(current, resize=resize or current.resize, crop=crop or current.crop)
            return classifier

        return load_hub
    if labels_file or trust_repo or hub_args:
        raise UsageError("--labels, --trust-repo and --arg apply to hub: models only")
    entry, weights_file = _resolve_model(model, weights, task="classify")
    return lambda: Classifier.load(
        entry, weights_file=weights_file, device=device, precision=precision, resize=resize, crop=crop
    )


def _resolve_model(model: str, weights: str, *, task: str) -> tuple[Any, Path | None]:
    """The catalog entry for ``-m``/``-w`` (``-m MODEL:WEIGHTS`` works too) and a local weights file, if any."""
    from .catalog import Catalog

    weights_file = _local_weights(weights)
    named = None if weights_file or weights.upper() == "DEFAULT" else weights
    if ":" in model and named is not None:
        raise UsageError(f"-m {model} already names its weights; drop -w {weights}")
    return Catalog.load().resolve(model, named, task=task), weights_file


def _local_weights(value: str) -> Path | None:
    """``-w`` names a file when it looks like a path or a file by that name exists."""
    path = Path(value).expanduser()
    looks_like_file = os.sep in value or path.suffix.lower() in (".pth", ".pt", ".bin", ".safetensors", ".h5", ".hdf5")
    if not (looks_like_file or path.is_file()):
        return None
    if not path.is_file():
        raise UsageError(f"weights file {value} does not exist")
    return path


def _classify_writer(out: IO[str], fmt: str | None) -> Any:
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

    from .output import default_format

    chosen = fmt or default_format(out)
    if chosen == "table":
        return _writer(
            out,
            chosen,
            columns=["input", "rank", "label", "index", "probability", "error"],
            flatten=table_rows,
            table_style=lambda row: "red" if row.get("error") else None,
        )
    return _writer(out, chosen, columns=["input", "rank", "index", "label", "probability", "error"], flatten=rows)


# --- translate and zebra -----------------------------------------------------


class _SizeParam(click.ParamType):
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


def _translate_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.argument("images", nargs=-1),
        click.option("-w", "--weights", default="DEFAULT", show_default=True,
                     help="Weights variant, or a local .pth/.safetensors/.h5 generator file."),
        click.option("-o", "--output", metavar="FILE|-",
                     help="Output file for one input; '-' writes the image to stdout."),
        click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="Directory for the outputs of several inputs (names keep the input's stem)."),
        click.option("--suffix", default="", help="Added to each output's stem in --output-dir, e.g. _zebra."),
        click.option("--format", "image_format", metavar="FORMAT",
                     help="Image format to write (png, jpeg, webp, bmp, tiff); default: -o's extension, else png."),
        click.option("--size", default="256", show_default=True, type=_SizeParam(),
                     help="Short side the generator runs at (the result is scaled back), or 'full' for the image's "
                          "own resolution in tiles."),
        click.option("--tile", default=512, show_default=True, type=click.IntRange(min=64),
                     help="Tile side for --size full (bounds memory)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps."),
        click.option("--precision", type=click.Choice(("fp32", "bf16", "fp16", "auto")), default="fp32",
                     show_default=True, help="Float type for the generator."),
        click.option("--force", is_flag=True, help="Overwrite existing output files."),
        click.option("--skip-existing", is_flag=True, help="Skip inputs whose output file already exists."),
        click.option("-r", "--recursive", is_flag=True, help="Descend into sub-directories."),
        click.option("--files-from", metavar="FILE",
                     help="Read image paths, one per line, from FILE ('-' for stdin)."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


@cli.command(context_settings=CONTEXT)
@click.option("-m", "--model", required=True, help="A translation model (see `ptm models --task translate`).")
@_translate_options
def translate(model: str, **options: Any) -> int:
    """Turn IMAGES into new images with a CycleGAN generator, at the input's size.

    \b
    Examples:
      ptm translate -m style_monet photo.jpg -o monet.png
      ptm translate -m summer2winter_yosemite --output-dir winter/ --suffix _winter summer/*.jpg
      ptm translate -m apple2orange --size full --tile 384 apples.jpg -o oranges.png
    """
    return _run_translate(model, **options)


@cli.command(context_settings=CONTEXT)
@_translate_options
def zebra(**options: Any) -> int:
    """Horses into zebras: the book's CycleGAN generator (ptm translate -m horse2zebra).

    \b
    Examples:
      ptm zebra horse.jpg -o zebra.png
      cat horse.jpg | ptm zebra - -o - > zebra.png
      ptm zebra --size full big-horse.jpg -o big-zebra.png
      ptm zebra --output-dir zebras/ --skip-existing horses/
    """
    return _run_translate("horse2zebra", **options)


def _run_translate(
    model: str,
    *,
    images: tuple[str, ...],
    weights: str,
    output: str | None,
    output_dir: Path | None,
    suffix: str,
    image_format: str | None,
    size: Any,  # a number of pixels or "full" (_SizeParam)
    tile: int,
    device: str,
    precision: str,
    force: bool,
    skip_existing: bool,
    recursive: bool,
    files_from: str | None,
) -> int:
    from .device import check_device_spec
    from .imagejobs import make_destination, run_image_jobs

    check_device_spec(device)
    inputs = _inputs(images, recursive, files_from)
    single = len(images) == 1 and files_from is None and not Path(images[0]).is_dir()
    destination = make_destination(output, output_dir, suffix, image_format, 1 if single else 2)
    entry, weights_file = _resolve_model(model, weights, task="translate")
    failed = count = 0
    with _stdout_is_data() as out, _Progress() as progress:
        from .translate import Translator

        translator = Translator.load(entry, weights_file=weights_file, device=device, precision=precision)

        def transform(image: Any) -> Any:
            return translator.translate(image, size=size, tile=tile, on_tile=progress.tiles)

        def describe() -> dict[str, Any]:
            return {"model": entry.model, "weights": translator.weights_label}

        def emit(data: bytes) -> None:
            out.flush()
            binary = out.buffer  # type: ignore[attr-defined]
            binary.write(data)
            binary.flush()

        jobs = run_image_jobs(inputs, transform, destination, force=force, skip_existing=skip_existing,
                              describe=describe, emit_bytes=emit)  # fmt: skip
        with _writer(sys.stderr if destination.stdout else out, None,
                     columns=["input", "output", "size", "seconds", "error"], flatten=_translate_rows) as records:
            for record in jobs:
                count += 1
                failed += "error" in record
                progress.file_done()
                if destination.stdout and "error" not in record:
                    continue  # stdout holds the image; nothing else may go there
                records.write(record)
                records.flush()
    return _outcome(count, failed)


def _translate_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    if "error" in record:
        return [{"input": record["input"], "error": f"{record['error']['type']}: {record['error']['message']}"}]
    size = record.get("size")
    return [{**record, "size": f"{size[0]}x{size[1]}" if size else "skipped"}]


class _Progress:
    """A progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._files: Any = None

    def __enter__(self) -> _Progress:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self._bar = Progress(console=Console(stderr=True), transient=True)
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



# --- models ------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@click.option("-t", "--task", type=click.Choice(("classify", "translate")), help="Only models for this task.")
@_format_option
def models(task: str | None, fmt: str | None) -> int:
    """List the models and weights ptm knows (without importing torch).

    \b
    Examples:
      ptm models
      ptm models -t classify -f csv | sort -t, -k7 -n
    """
    from .catalog import Catalog
    from .weights import cache_dir

    cache = cache_dir()
    with _stdout_is_data() as out:
        writer = _writer(
            out,
            fmt,
            columns=["model", "weights", "task", "default", "params", "size_mib", "acc1", "acc5", "cached"],
        )
        for entry in Catalog.load().entries(task):
            writer.write(
                {
                    "model": entry.model,
                    "weights": entry.weights,
                    "task": entry.task,
                    "default": entry.is_default,
                    "params": entry.num_params,
                    "size_mib": entry.size_mb,
                    "acc1": entry.acc1,
                    "acc5": entry.acc5,
                    "cached": bool(entry.file_name and (cache / entry.file_name).is_file()),
                }
            )
        writer.close()
    return EXIT_OK


# --- weights -----------------------------------------------------------------


@cli.group(context_settings=CONTEXT)
def weights() -> None:
    """Manage the weights cache (list, download, verify, import, path, rm, prune) and weights files (inspect, convert).

    The cache is PTM_CACHE_DIR, else torch's own checkpoint directory
    ($TORCH_HOME/hub/checkpoints), so files torchvision downloaded are reused.
    NAME is a model (its default weights) or MODEL:WEIGHTS.
    """


def _entry(name: str, weights_name: str | None) -> Any:
    from .catalog import Catalog

    return Catalog.load().resolve(name, weights_name)


_weights_option = click.option(
    "-w", "--weights", "weights_name", help="Weights variant (default: the model's default)."
)


@weights.command("list", context_settings=CONTEXT)
@_format_option
def weights_list(fmt: str | None) -> int:
    """Files in the cache, their size, and whether they were verified."""
    from .catalog import Catalog
    from .weights import list_cached

    with _stdout_is_data() as out:
        writer = _writer(out, fmt, columns=["file", "size_mib", "verified", "entries"])
        for item in list_cached(Catalog.load().entries()):
            writer.write(
                {
                    "file": item.path.name,
                    "size_mib": round(item.size / 2**20, 3),
                    "verified": item.verified,
                    "entries": " ".join(item.entries),
                }
            )
        writer.close()
    return EXIT_OK


@weights.command("download", context_settings=CONTEXT)
@click.argument("name")
@_weights_option
def weights_download(name: str, weights_name: str | None) -> int:
    """Download and verify NAME's weights; print the file's path."""
    from .weights import ensure_weights

    entry = _entry(name, weights_name)
    with _stdout_is_data() as out:
        path = ensure_weights(entry, progress=True)
        out.write(f"{path}\n")
    return EXIT_OK


@weights.command("verify", context_settings=CONTEXT)
@click.argument("name", required=False)
@_weights_option
@_format_option
def weights_verify(name: str | None, weights_name: str | None, fmt: str | None) -> int:
    """Re-hash cached files (NAME's, or every cached one); exit 1 on any mismatch."""
    from .catalog import Catalog
    from .weights import cached_path, verify

    catalog = Catalog.load()
    if name is not None:
        entries = [catalog.resolve(name, weights_name)]
    else:
        entries = [e for e in catalog.entries() if e.file_name and cached_path(e).is_file()]
    bad = 0
    with _stdout_is_data() as out:
        writer = _writer(out, fmt, columns=["entry", "file", "status", "sha256"])
        for entry in entries:
            result = verify(entry)
            bad += result.status in ("mismatch", "missing")
            writer.write(
                {"entry": entry.ref, "file": str(result.path), "status": result.status, "sha256": result.digest}
            )
        writer.close()
    if bad:
        _note(f"{bad} file(s) failed verification; remove them with `ptm weights rm NAME` and download again")
        return EXIT_INPUT_FAILED
    return EXIT_OK


@weights.command("import", context_settings=CONTEXT)
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_weights_option
def weights_import(name: str, file: Path, weights_name: str | None) -> int:
    """Check FILE against NAME's hash and copy it into the cache (for offline machines)."""
    from .weights import import_weights

    entry = _entry(name, weights_name)
    with _stdout_is_data() as out:
        path = import_weights(entry, file)
        out.write(f"{path}\n")
    return EXIT_OK


@weights.command("path", context_settings=CONTEXT)
@click.argument("name")
@_weights_option
def weights_path(name: str, weights_name: str | None) -> int:
    """Print where NAME's weights live in the cache; exit 1 if not there yet."""
    from .weights import cached_path

    entry = _entry(name, weights_name)
    path = cached_path(entry)
    click.echo(str(path))
    if not path.is_file():
        _note(f"{entry.ref} is not downloaded yet; run `ptm weights download {entry.ref}`")
        return EXIT_INPUT_FAILED
    return EXIT_OK


@weights.command("rm", context_settings=CONTEXT)
@click.argument("name")
@_weights_option
@click.option(
    "--forget-pin",
    is_flag=True,
    help="Also forget the sha256 pinned at the first download, to accept a file that changed upstream.",
)
def weights_rm(name: str, weights_name: str | None, forget_pin: bool) -> int:
    """Delete NAME's weights file from the cache."""
    from .weights import remove

    entry = _entry(name, weights_name)
    if remove(entry, forget_pin=forget_pin):
        _note(f"removed {entry.file_name}")
    else:
        _note(f"{entry.file_name} was not in the cache")
    return EXIT_OK


def _weights_file_or_entry(target: str) -> Path:
    """A FILE argument, or the cached file of a catalog NAME."""
    from .weights import cached_path

    path = Path(target).expanduser()
    if path.is_file():
        return path
    if os.sep in target or path.suffix in (".pth", ".pt", ".bin", ".safetensors", ".h5", ".hdf5"):
        raise UsageError(f"{target} does not exist")
    cached = cached_path(_entry(target, None))
    if not cached.is_file():
        raise UsageError(f"{target} is not downloaded yet; run `ptm weights download {target}` first")
    return cached


@weights.command("inspect", context_settings=CONTEXT)
@click.argument("target", metavar="FILE|NAME")
@_format_option
def weights_inspect(target: str, fmt: str | None) -> int:
    """One row per tensor: shape, dtype, size, stride, storage offset, contiguity, sharing.

    Reads .pth/.pt (weights_only, memory-mapped), .safetensors (header only)
    and .h5 files; NAME inspects a cached catalog file. The totals and the
    catalog architecture the file fits go to stderr (or into the object
    printed with -f json).

    \b
    Examples:
      ptm weights inspect resnet101-cd907fc2.pth
      ptm weights inspect alexnet -f csv > alexnet-tensors.csv
    """
    from .catalog import Catalog
    from .tensorfiles import inspect_file, match_architecture, summary, to_rows

    inspection = inspect_file(_weights_file_or_entry(target))
    totals = {**summary(inspection), "architecture": match_architecture(inspection, Catalog.load())}
    rows = to_rows(inspection)
    with _stdout_is_data() as out:
        if fmt == "json":
            import json

            out.write(json.dumps({**totals, "tensors": rows}, indent=1) + "\n")
        else:
            columns = ["name", "shape", "dtype", "numel", "bytes", "stride", "offset", "contiguous", "storage",
                       "shares_with"]  # fmt: skip
            writer = _writer(out, fmt, columns=columns)
            for row in rows:
                writer.write(row)
            writer.close()
    by_dtype = ", ".join(f"{k} {v:,} B" for k, v in totals["bytes_by_dtype"].items())
    _note(
        f"{totals['tensors']} tensors, {totals['float_values']:,} floating-point values, {totals['storages']} storages "
        f"({totals['storage_bytes']:,} bytes; {by_dtype}); architecture: {totals['architecture'] or 'no match'}"
    )
    for warning in totals["warnings"]:
        _note(f"warning: {warning}")
    return EXIT_OK


@weights.command("convert", context_settings=CONTEXT)
@click.argument("src", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dtype", type=click.Choice(("bf16", "fp16", "fp32")), help="Cast floating-point tensors.")
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
@_format_option
def weights_convert(src: Path, dst: Path, dtype: str | None, force: bool, fmt: str | None) -> int:
    """Convert a weights file between .pth, .safetensors and .h5 (by extension).

    Non-contiguous and shared tensors are written correctly; a round trip is
    bit-identical. .safetensors and .h5 files cannot run code when loaded.

    \b
    Examples:
      ptm weights convert resnet101-cd907fc2.pth resnet101.safetensors
      ptm weights convert model.pth model-half.h5 --dtype fp16
    """
    from .tensorfiles import convert_file

    with _stdout_is_data() as out:
        report = convert_file(src, dst, dtype=dtype, force=force)
        writer = _writer(out, fmt, columns=["src", "dst", "tensors", "bytes_written", "dtype", "cast",
                                            "made_contiguous", "duplicated"])  # fmt: skip
        writer.write(
            {"src": str(report.src), "dst": str(report.dst), "tensors": report.tensors,
             "bytes_written": report.bytes_written, "dtype": report.dtype, "cast": len(report.cast),
             "made_contiguous": len(report.made_contiguous), "duplicated": len(report.duplicated)}
        )  # fmt: skip
        writer.close()
    return EXIT_OK


@weights.command("prune", context_settings=CONTEXT)
def weights_prune() -> int:
    """Delete partial files left by interrupted downloads."""
    from .weights import prune

    removed = prune()
    for path in removed:
        _note(f"removed {path.name}")
    if not removed:
        _note("nothing to prune")
    return EXIT_OK


# --- hub ---------------------------------------------------------------------


@cli.group(context_settings=CONTEXT)
def hub() -> None:
    """Models from torch.hub repositories, with a trust policy that never prompts.

    REPO is OWNER/NAME[:REF] (a GitHub repository at a branch, tag or commit)
    or a local directory holding a hubconf.py. A repository runs its own code,
    so ptm refuses one that is not trusted (exit 2) instead of asking: trust
    it for one run with --trust-repo or for good with `ptm hub trust REPO`.
    A repository cached at an explicit REF loads without any network call.
    """


_trust_option = click.option("--trust-repo", is_flag=True, help="Run this repository's code even if not trusted yet.")


@hub.command("list", context_settings=CONTEXT)
@click.argument("repo")
@_trust_option
@_format_option
def hub_list(repo: str, trust_repo: bool, fmt: str | None) -> int:
    """The entry points REPO offers."""
    from .hub import list_entrypoints, parse_repo

    with _stdout_is_data() as out:
        names = list_entrypoints(parse_repo(repo), trust_repo=trust_repo)
        writer = _writer(out, fmt, columns=["entry"])
        for name in names:
            writer.write({"entry": name})
        writer.close()
    return EXIT_OK


@hub.command("help", context_settings=CONTEXT)
@click.argument("repo")
@click.argument("entry")
@_trust_option
def hub_help(repo: str, entry: str, trust_repo: bool) -> int:
    """Print the docstring of REPO's ENTRY."""
    from .hub import entry_help, parse_repo

    with _stdout_is_data() as out:
        text = entry_help(parse_repo(repo), entry, trust_repo=trust_repo)
        out.write((text or f"{entry} has no docstring") + "\n")
    return EXIT_OK


@hub.command("load", context_settings=CONTEXT)
@click.argument("repo")
@click.argument("entry")
@click.option("--arg", "args", multiple=True, metavar="KEY=VALUE", help="Argument for the entry point (repeatable).")
@_trust_option
@_format_option
def hub_load(repo: str, entry: str, args: tuple[str, ...], trust_repo: bool, fmt: str | None) -> int:
    """Load REPO's ENTRY and report its class, parameter count and origin.

    \b
    Example (the book's hub.load("pytorch/vision:v0.10.0", "resnet18", pretrained=True)):
      ptm hub load pytorch/vision:v0.10.0 resnet18 --arg pretrained=true
    """
    from .hub import load_model, parse_kwargs, parse_repo

    parsed, kwargs = parse_repo(repo), parse_kwargs(list(args))
    with _stdout_is_data() as out:
        _, info = load_model(parsed, entry, kwargs=kwargs, trust_repo=trust_repo)
        writer = _writer(out, fmt, columns=["repo", "entry", "class", "params", "source", "trusted_by"])
        writer.write(
            {"repo": info.repo, "entry": info.entry, "class": info.class_name, "params": info.num_params,
             "source": info.source, "trusted_by": info.trusted_by}
        )  # fmt: skip
        writer.close()
    return EXIT_OK


@hub.command("trust", context_settings=CONTEXT)
@click.argument("repo")
def hub_trust(repo: str) -> int:
    """Record OWNER/NAME as trusted (in the list torch.hub itself keeps)."""
    from .hub import parse_repo, trust

    parsed = parse_repo(repo)
    added = trust(parsed)
    _note(f"{parsed.slug} {'is now trusted' if added else 'was already trusted'}")
    return EXIT_OK


# --- doctor ------------------------------------------------------------------


@cli.command(context_settings=CONTEXT)
@_format_option
def doctor(fmt: str | None) -> int:
    """Check that ptm can run here: Python, torch, devices, cache, settings.

    Exit 0 when ptm can run, 1 (with the reasons) when it cannot.

    \b
    Examples:
      ptm doctor
      ptm doctor -f json | jq .cuda
    """
    from .doctor import collect, rows

    report = collect()
    with _stdout_is_data() as out:
        if fmt == "json":
            import json

            out.write(json.dumps(report, indent=1) + "\n")
        else:
            writer = _writer(out, fmt, columns=["section", "key", "value"])
            for row in rows(report):
                writer.write(row)
            writer.close()
    for problem in report.get("problems") or []:
        _note(f"problem: {problem}")
    return EXIT_OK if report.get("ok") else EXIT_INPUT_FAILED


# --- entry point -------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with a code scripts can trust."""
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    try:
        code = cli.main(args=argv, prog_name="ptm", standalone_mode=False)
        return int(code or 0)
    except click.exceptions.Abort:
        return _interrupted()
    except KeyboardInterrupt:
        return _interrupted()
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except PtmError as exc:
        if _debug():
            import traceback

            traceback.print_exc()
        _note(f"error: {exc}")
        return exc.exit_code
    except (_ReaderGone, BrokenPipeError):
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if _debug():
            raise
        lines = str(exc).strip().splitlines()
        _note(f"internal error: {type(exc).__name__}" + (f": {lines[0]}" if lines else ""))
        _note("this is a bug in ptm; run again with PTM_DEBUG=1 for the traceback and report it")
        return EXIT_INTERNAL


def _interrupted() -> int:
    with contextlib.suppress(BrokenPipeError):
        _note("interrupted")
    return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    """The reader went away (``| head``): drop what is still buffered, quietly."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
