"""Running an image-to-image model over many inputs, one output file each.

Owns what happens around the model: where each result goes (a
:class:`~ptm_cli.output.imagefiles.Destination`), the rules for existing
files (never overwritten without ``force``; skipped with ``skip_existing``,
so an interrupted run can be resumed), atomic writes, and one record per
input in input order. A failed input leaves no file behind and does not stop
the others.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError, OutputError, UsageError
from ..images.inputs import ImageInput
from ..output.imagefiles import Destination, encode_image, write_output
from ..output.videofiles import VideoOutputs
from ..runtime import fsutil

Transform = Callable[[Any], Any]  # PIL image in, PIL image of the same size out


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
    on_image: Callable[[str, Any], None] | None = None,
    videos: VideoOutputs | None = None,
) -> Iterator[tuple[dict[str, Any], Any]]:
    """Transform each input and write it; yield one record per input, in order, with the image it made.

    ``describe()`` adds fields (model, weights) to successful records;
    ``emit_bytes`` receives the encoded image when the destination is stdout;
    ``on_note`` hears about inputs that load with a caveat (a damaged colour
    profile); ``on_image(name, image)`` sees each decoded input. The image
    made is None for a skipped or failed input.
    """
    written: dict[Path, str] = {}  # outputs of this run, so two inputs never share one
    for item in inputs:
        started = time.perf_counter()
        try:
            path = destination.path_for(item)
            if item.frame is not None and path is not None:
                if skip_existing and videos is not None and videos.skips(item, path):
                    yield {"input": item.name, "output": str(path), "skipped": True}, None
                    continue
                yield _frame_job(item, path, transform, videos, on_image, describe, started)
                continue
            if path is not None and path.resolve() in written:
                raise OutputError(
                    f"{path} was already written for {written[path.resolve()]} in this run "
                    "(same file name in another folder); translate them in separate runs or output directories"
                )
            if path is not None:
                if skip_existing and path.exists() and not fsutil.is_stream_target(path):
                    written[path.resolve()] = item.name
                    yield {"input": item.name, "output": str(path), "skipped": True}, None
                    continue
                check_writable(item, path, force)
            image = item.open(on_note=on_note)
            if on_image is not None:
                on_image(item.name, image)
            result = transform(image)
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
            yield {"input": item.name, "error": exc.record()}, None
            continue
        except BrokenPipeError:
            raise  # stdout's reader left: the whole run ends, quietly (141)
        except OSError as exc:
            error = OutputError(f"{item.name}: {exc.strerror or exc}")
            yield {"input": item.name, "error": error.record()}, None
            continue
        record: dict[str, Any] = {"input": item.name, "output": "-" if path is None else str(path), "size": list(size)}
        record.update(describe() if describe else {})
        record["seconds"] = round(time.perf_counter() - started, 3)
        yield record, result


def _frame_job(
    item: ImageInput,
    path: Path,
    transform: Transform,
    videos: VideoOutputs | None,
    on_image: Callable[[str, Any], None] | None,
    describe: Callable[[], dict[str, Any]] | None,
    started: float,
) -> tuple[dict[str, Any], Any]:
    """One frame of a video input through ``transform`` and into its output video; its record and image."""
    if videos is None:
        raise UsageError("writing a video's frames needs the run's video outputs")
    image = item.open()
    if on_image is not None:
        on_image(item.name, image)
    result = transform(image)
    videos.write(item, path, result)
    record: dict[str, Any] = {"input": item.name, "output": str(path), "size": list(result.size)}
    record.update(describe() if describe else {})
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record, result


def check_writable(item: ImageInput, path: Path, force: bool) -> None:
    """Refuse before any work: an existing output, or the input itself as output."""
    if item.path is not None and path.exists() and path.resolve() == item.path.resolve():
        raise OutputError(f"{path} is the input itself; choose another --output-dir or a --suffix")
    if fsutil.is_stream_target(path):
        return  # a device or FIFO is written through: `-o /dev/null` needs no --force
    if os.path.lexists(path) and not force:
        raise OutputError(f"{path} already exists; use --force to overwrite it or --skip-existing to keep it")
