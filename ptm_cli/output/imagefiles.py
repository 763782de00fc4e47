"""Image files ptm writes: where each output goes, its format, and writing it whole or not at all.

:class:`Destination` says where a task's image for each input goes (one
named file, stdout, a folder, or beside the input); :func:`write_output`
never replaces an existing file without ``force`` and never leaves a partial
one. :func:`encode_image` embeds the sRGB profile where the format holds one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OutputError, UsageError
from ..images.inputs import ImageInput
from ..runtime import fsutil

IMAGE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


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


def check_output_file(
    path: Path, option: str, *, force: bool, suffix: str, ours: Callable[[Path], bool] | None = None
) -> Path:
    """Refuse an ``option FILE`` (``--report``, ``--coco``) that cannot be written, before any work is done.

    An existing regular file is replaced only with ``force``, or when
    ``ours(path)`` says ptm wrote it (a results page): naming a photo or a
    batch job's manifest by mistake leaves it as it was. A device or FIFO is
    written through.
    """
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give the name of the {suffix} file to write")
    if not fsutil.folder_of(path).is_dir():
        raise UsageError(f"{option} {path}: the folder {path.parent} does not exist")
    if not (fsutil.is_regular_or_absent(path) or fsutil.is_stream_target(path)):
        raise UsageError(f"{option} {path} is not a regular file, so ptm will not replace it; choose another name")
    if not force and path.exists() and not fsutil.is_stream_target(path) and not (ours is not None and ours(path)):
        what = " and is not a ptm results page" if ours is not None else ""
        raise UsageError(f"{option} {path} exists{what}; choose another name, or add --force to replace it")
    return path


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


def is_video_output(path: Path) -> bool:
    """Whether an output file's name asks for a video (.mp4, .mov, .mkv, .webm)."""
    from ..video import OUTPUT_CONTAINERS

    return path.suffix.lower() in OUTPUT_CONTAINERS


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
        """The output file for ``item``; None means stdout. A video's frames go to one video file."""
        if item.frame is not None:
            return self.video_path_for(item)
        if self.stdout:
            return None
        if self.file is not None:
            if is_video_output(self.file):
                raise OutputError(f"{self.file} names a video, but {item.name} is an image; give an image name")
            return self.file
        if self.beside:
            if item.path is None:
                raise UsageError("an image read from stdin has no folder to write beside; give -o FILE or -o -")
            return item.path.with_name(f"{item.path.stem or 'image'}{self.suffix}{self.extension}")
        assert self.directory is not None
        stem = "stdin" if item.name == "-" else Path(item.name).stem or "image"
        return self.directory / f"{stem}{self.suffix}{self.extension}"

    def video_path_for(self, item: ImageInput) -> Path:
        """The video file a video input's frames are written to: -o FILE, or the input's stem with its
        container's extension (.mp4 for a container ptm does not write) beside it or in --output-dir."""
        if self.stdout:
            raise OutputError(f"{item.name} is a video, and a video is not written to stdout; give -o FILE.mp4")
        if self.file is not None:
            if not is_video_output(self.file):
                raise OutputError(f"{item.name} is a video; name its output FILE.mp4 (or .mov, .mkv, .webm)")
            return self.file
        source = Path(item.name)
        extension = source.suffix.lower() if is_video_output(source) else ".mp4"
        if self.beside:
            assert item.path is not None
            return item.path.with_name(f"{item.path.stem or 'video'}{self.suffix}{extension}")
        assert self.directory is not None
        return self.directory / f"{source.stem or 'video'}{self.suffix}{extension}"

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
    default_format: str | None = None,
) -> Destination:
    """Check ``-o``/``--output-dir``/``--format`` together; raise UsageError on a bad mix.

    With neither ``-o`` nor ``--output-dir``, each output goes next to its
    input, named ``STEM{suffix or '.' + beside_tag}.png`` (``horse.zebra.png``).
    ``default_format`` replaces PNG for outputs beside the inputs or in a folder.
    """
    fmt = image_format_for("", image_format) if image_format else None
    if output is not None and output_dir is not None:
        raise UsageError("use either -o/--output or --output-dir, not both")
    if output is None and output_dir is None:
        if beside_tag is None:
            raise UsageError("say where the images go: -o FILE, -o - for stdout, or --output-dir DIR")
        return Destination(beside=True, suffix=suffix or f".{beside_tag}", image_format=fmt or default_format)
    if output is not None:
        if n_inputs_hint != 1:
            raise UsageError("-o names one output file; for several inputs use --output-dir DIR")
        if output == "-":
            return Destination(stdout=True, image_format=fmt)
        if fmt is None and fsutil.is_stream_target(Path(output)):
            fmt = "PNG"  # -o /dev/null, -o >(cmd): a stream, like stdout, whatever its name
        if fmt is None and not is_video_output(Path(output)):
            image_format_for(output)  # fail now on an unknown extension
        return Destination(file=Path(output), image_format=fmt)
    assert output_dir is not None
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output-dir {output_dir} is a file, not a directory")
    return Destination(directory=output_dir, suffix=suffix, image_format=fmt or default_format)
