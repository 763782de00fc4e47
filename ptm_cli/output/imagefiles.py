"""Running an image-to-image model over many inputs, one output file each.

Owns what happens around the model: where each result goes, the rules for
existing files (never overwritten without ``force``; skipped with
``skip_existing``, so an interrupted run can be resumed), atomic writes, and
one record per input in input order. A failed input leaves no file behind
and does not stop the others.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, OutputError, UsageError
from ..images.inputs import ImageInput
from ..runtime import fsutil

Transform = Callable[[Any], Any]  # PIL image in, PIL image of the same size out
# An input and a Pillow format in; the encoded result and its size out (decoding and the model elsewhere).
Render = Callable[[ImageInput, str], tuple[bytes, tuple[int, int]]]

IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
                 ".tiff": "TIFF"}  # fmt: skip


def image_format_for(path: str, forced: str | None = None) -> str:
    """The Pillow format to write ``path`` in: ``forced``, else from the extension."""
    if forced:
        name = forced.upper().replace("JPG", "JPEG").replace("TIF", "TIFF").replace("TIFFF", "TIFF")
        if name not in set(IMAGE_FORMATS.values()):
            raise UsageError(f"cannot write {forced!r} images; use one of png, jpeg, webp, bmp, tiff")
        return name
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in IMAGE_FORMATS:
        raise UsageError(f"cannot tell the image format from {path!r}; use a .png/.jpg/.webp name or --format")
    return IMAGE_FORMATS[suffix]


# Formats whose files can carry an ICC profile (Pillow writes none into BMP).
_PROFILE_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "TIFF"})


def encode_image(image: Any, fmt: str) -> bytes:
    """The bytes of ``image`` (a PIL image of sRGB pixels) in format ``fmt``.

    The sRGB profile is embedded where the format can hold one, so viewers and
    editors that manage colour show the result as it was computed.
    """
    import io

    from ..images.colour import srgb_profile

    buffer = io.BytesIO()
    options: dict[str, Any] = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    if fmt in _PROFILE_FORMATS:
        options["icc_profile"] = srgb_profile()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_output(path: Path, data: bytes, *, force: bool = False) -> None:
    """Write ``data`` to ``path`` whole or not at all; an existing file is replaced only with ``force``.

    A character device or FIFO (``-o /dev/null``) is written through, never
    replaced; anything else that is not a regular file is refused.
    """
    if fsutil.is_stream_target(path):
        try:
            with open(path, "wb") as stream:
                stream.write(data)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        return
    if os.path.lexists(path) and not force:
        raise OutputError(f"{path} already exists; use --force to overwrite it")
    try:
        fsutil.write_atomic(path, data, replace=force)
    except FileExistsError:
        raise OutputError(f"{path} already exists; use --force to overwrite it") from None
    except fsutil.NotReplaceable:
        raise OutputError(f"{path} is not a regular file, so ptm will not replace it; choose another name") from None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class Destination:
    """Where results go: one named file, stdout, or a directory."""

    file: Path | None = None  # -o FILE (one input only)
    stdout: bool = False  # -o -
    directory: Path | None = None  # --output-dir
    suffix: str = ""
    image_format: str | None = None  # --format; else from the file name, else PNG
    beside: bool = False  # next to each input: horse.jpg -> horse.zebra.png (suffix ".zebra")

    def path_for(self, item: ImageInput) -> Path | None:
        """The output file for ``item``; None means stdout."""
        if self.stdout:
            return None
        if self.file is not None:
            return self.file
        if self.beside:
            if item.path is None:
                raise UsageError("an image read from stdin has no folder to write beside; give -o FILE or -o -")
            return item.path.with_name(f"{item.path.stem or 'image'}{self.suffix}{self.extension}")
        assert self.directory is not None
        stem = "stdin" if item.name == "-" else Path(item.name).stem or "image"
        return self.directory / f"{stem}{self.suffix}{self.extension}"

    @property
    def extension(self) -> str:
        fmt = self.image_format or "PNG"
        return next(ext for ext, name in IMAGE_FORMATS.items() if name == fmt)

    def format_for(self, path: Path | None) -> str:
        if path is None or self.image_format:
            return self.image_format or "PNG"
        return image_format_for(str(path))


def make_destination(
    output: str | None,
    output_dir: Path | None,
    suffix: str,
    image_format: str | None,
    n_inputs_hint: int,
    *,
    beside_tag: str | None = None,
) -> Destination:
    """Check ``-o``/``--output-dir``/``--format`` together; raise UsageError on a bad mix.

    With neither ``-o`` nor ``--output-dir``, each output goes next to its
    input, named ``STEM{suffix or '.' + beside_tag}.png`` (``horse.zebra.png``).
    """
    fmt = image_format_for("", image_format) if image_format else None
    if output is not None and output_dir is not None:
        raise UsageError("use either -o/--output or --output-dir, not both")
    if output is None and output_dir is None:
        if beside_tag is None:
            raise UsageError("say where the images go: -o FILE, -o - for stdout, or --output-dir DIR")
        return Destination(beside=True, suffix=suffix or f".{beside_tag}", image_format=fmt)
    if output is not None:
        if n_inputs_hint != 1:
            raise UsageError("-o names one output file; for several inputs use --output-dir DIR")
        if output == "-":
            return Destination(stdout=True, image_format=fmt)
        if fmt is None and fsutil.is_stream_target(Path(output)):
            fmt = "PNG"  # -o /dev/null, -o >(cmd): a stream, like stdout, whatever its name
        if fmt is None:
            image_format_for(output)  # fail now on an unknown extension
        return Destination(file=Path(output), image_format=fmt)
    assert output_dir is not None
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output-dir {output_dir} is a file, not a directory")
    return Destination(directory=output_dir, suffix=suffix, image_format=fmt)


def run_image_jobs(
    inputs: Iterable[ImageInput],
    transform: Transform,
    destination: Destination,
    *,
    force: bool = False,
    skip_existing: bool = False,
    describe: Callable[[], dict[str, Any]] | None = None,
    emit_bytes: Callable[[bytes], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    render: Render | None = None,
) -> Iterator[dict[str, Any]]:
    """Transform each input and write it; yield one record per input, in order.

    ``describe()`` adds fields (model, weights) to successful records;
    ``emit_bytes`` receives the encoded image when the destination is stdout;
    ``on_note`` hears about inputs that load with a caveat (a damaged colour profile).
    ``render``, when given, does the decoding, ``transform`` and encoding in
    one step elsewhere (a warm server); where results go is still decided here.
    """
    written: dict[Path, str] = {}  # outputs of this run, so two inputs never share one
    for item in inputs:
        started = time.perf_counter()
        try:
            path = destination.path_for(item)
            if path is not None and path.resolve() in written:
                raise OutputError(
                    f"{path} was already written for {written[path.resolve()]} in this run "
                    "(same file name in another folder); translate them in separate runs or output directories"
                )
            if path is not None:
                if skip_existing and path.exists() and not fsutil.is_stream_target(path):
                    written[path.resolve()] = item.name
                    yield {"input": item.name, "output": str(path), "skipped": True}
                    continue
                _check_writable(item, path, force)
            if render is not None:
                data, size = render(item, destination.format_for(path))
            else:
                result = transform(item.open(on_note=on_note))
                data, size = encode_image(result, destination.format_for(path)), result.size
            if path is None:
                if emit_bytes is None:
                    raise UsageError("stdout output needs a byte sink")
                emit_bytes(data)
            else:
                if path.parent and not path.parent.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                write_output(path, data, force=force)
                written[path.resolve()] = item.name
        except InputError as exc:
            yield {"input": item.name, "error": exc.record()}
            continue
        except BrokenPipeError:
            raise  # stdout's reader left: the whole run ends, quietly (141)
        except OSError as exc:
            error = OutputError(f"{item.name}: {exc.strerror or exc}")
            yield {"input": item.name, "error": error.record()}
            continue
        record: dict[str, Any] = {"input": item.name, "output": "-" if path is None else str(path),
                                  "size": list(size)}  # fmt: skip
        record.update(describe() if describe else {})
        record["seconds"] = round(time.perf_counter() - started, 3)
        yield record


def _check_writable(item: ImageInput, path: Path, force: bool) -> None:
    """Refuse before any work: an existing output, or the input itself as output."""
    if item.path is not None and path.exists() and path.resolve() == item.path.resolve():
        raise OutputError(f"{path} is the input itself; choose another --output-dir or a --suffix")
    if fsutil.is_stream_target(path):
        return  # a device or FIFO is written through: `-o /dev/null` needs no --force
    if os.path.lexists(path) and not force:
        raise OutputError(f"{path} already exists; use --force to overwrite it or --skip-existing to keep it")
