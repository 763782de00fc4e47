"""Turning command-line arguments into the list of images to process.

Arguments can be files, directories (their images, sorted; ``recursive`` to
descend), ``-`` for one image's bytes on stdin, and a file of paths (one per
line, ``-`` for stdin). Paths are yielded lazily so a folder of a hundred
thousand photos starts processing at once. A path that does not exist is
still yielded: it becomes an error record, not a crash.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple, Protocol

from .. import settings
from ..errors import InputError, InputNotFound, UnsupportedFormat, UsageError

if TYPE_CHECKING:
    from PIL import Image


class FrameLike(Protocol):
    """A frame of a video, as :class:`ImageInput` carries it (see :class:`ptm_cli.video.reader.Frame`)."""

    @property
    def index(self) -> int: ...
    @property
    def time(self) -> float: ...
    @property
    def image(self) -> Image.Image: ...
    @property
    def last(self) -> bool: ...
    @property
    def clip(self) -> Any: ...


class ImageInput(NamedTuple):
    """One image to process: a file, bytes that came from stdin, or one frame of a video.

    Immutable, as a frozen dataclass would be; a named tuple because the
    warm server's client imports this module, and dataclasses would cost it
    the import of ``inspect``. A video's frames are inputs named as the
    video, each with its ``frame`` (index, time, upright image); ``path`` is
    the video's.
    """

    name: str
    path: Path | None = None
    data: bytes | None = None
    error: InputError | None = None  # found while reading the input (e.g. stdin too large)
    frame: FrameLike | None = None

    def open(
        self,
        *,
        min_short_side: int | None = None,
        on_note: Callable[[str], None] | None = None,
        keep_alpha: bool = False,
    ) -> Image.Image:
        """The decoded sRGB image (see `imageio.load_image` for ``min_short_side``, ``on_note`` and ``keep_alpha``)."""
        from .decode import load_image

        if self.error is not None:
            raise self.error
        if self.frame is not None:
            return self.frame.image
        if self.path is not None and self.data is None and is_video_name(self.path):
            raise UnsupportedFormat(
                f"{self.name} is a video: give it to a task command (ptm classify {self.name}), which reads its "
                "frames; batch jobs take images only"
            )
        source = self.data if self.data is not None else self.path
        if source is None:
            raise InputNotFound(f"{self.name}: neither a path nor data to read")
        return load_image(source, name=self.name, min_short_side=min_short_side, on_note=on_note, keep_alpha=keep_alpha)


# Names read as videos wherever an image is named (ptm_cli.video reads them); a folder gives its images only.
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"})


def is_video_name(name: str | os.PathLike[str]) -> bool:
    """Whether a path names a video (by its extension; the bytes decide only whether it opens)."""
    return os.path.splitext(os.fspath(name))[1].lower() in VIDEO_EXTENSIONS


# Extensions picked up when walking a directory. Files named explicitly are
# opened whatever their extension: the format is read from the bytes. Camera
# RAW files are picked up too, so that each gets a record (decoded with the
# raw extra, an honest UnsupportedFormat without it) instead of vanishing.
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".webp",
        ".gif",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".mpo",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".tga",
        ".ico",
        ".avif",
        ".heic",
        ".heif",
        ".hif",
    }
)
RAW_EXTENSIONS = frozenset(
    {
        ".dng",
        ".cr2",
        ".cr3",
        ".crw",
        ".nef",
        ".nrw",
        ".arw",
        ".srf",
        ".sr2",
        ".orf",
        ".rw2",
        ".rwl",
        ".raf",
        ".pef",
        ".srw",
        ".3fr",
        ".erf",
        ".kdc",
        ".dcr",
        ".mos",
        ".mef",
        ".mrw",
        ".x3f",
        ".iiq",
    }
)


def iter_directory(directory: Path, recursive: bool) -> Iterator[Path]:
    """Image files in ``directory`` in a stable (sorted) order; hidden entries skipped."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            if recursive:
                yield from iter_directory(path, recursive)
        # Regular files only: opening a FIFO or a device found in a folder would block the run.
        elif entry.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS | RAW_EXTENSIONS:
            yield path


def check_not_empty(args: Iterable[str], files_from: str | None) -> None:
    """Refuse an empty argument: ``ptm classify "$DIR"`` with DIR unset would otherwise mean the current folder."""
    if "" in args or files_from == "":
        where = "--files-from" if files_from == "" else "an image argument"
        raise UsageError(f"{where} is empty (an unset shell variable?); name a file, a folder or '-'")


def expand_inputs(
    args: Iterable[str],
    *,
    recursive: bool = False,
    files_from: str | None = None,
    stdin: BinaryIO | None = None,
    stdin_list: BinaryIO | None = None,
) -> Iterator[ImageInput]:
    """Every image named by ``args`` and ``files_from``, in the order given.

    The arguments are checked now; the paths are produced as they are consumed.
    """
    args = list(args)
    check_not_empty(args, files_from)
    if args.count("-") > 1:
        raise UsageError("'-' (stdin) can be given only once")
    if "-" in args and files_from == "-":
        raise UsageError("stdin cannot hold both an image ('-') and a list of paths (--files-from -)")
    if "-" in args and stdin is None:
        raise UsageError("'-' needs an image on stdin")
    # A list file is read now, so a bad --files-from fails before any model loads.
    listed = None if files_from in (None, "-") else _read_list_file(files_from)
    return _generate(args, recursive, files_from, listed, stdin, stdin_list)


def _generate(
    args: list[str],
    recursive: bool,
    files_from: str | None,
    listed: list[str] | None,
    stdin: BinaryIO | None,
    stdin_list: BinaryIO | None,
) -> Iterator[ImageInput]:
    for arg in args:
        if arg == "-" and stdin is not None:
            yield _stdin_input(stdin)
            continue
        path = Path(arg)
        if path.is_dir():
            yield from (ImageInput(name=str(p), path=p) for p in iter_directory(path, recursive))
        else:
            yield ImageInput(name=arg, path=path)
    if files_from is not None:
        if listed is not None:
            yield from _named(listed)
        elif stdin_list is None:
            raise UsageError("--files-from - needs a list of paths on stdin")
        else:
            yield from _named(_stream_lines(stdin_list, "--files-from -"))


def _stdin_input(stdin: BinaryIO) -> ImageInput:
    """stdin's bytes, bounded: `cat /dev/zero | ptm classify -` must not eat all memory."""
    from .decode import read_limited

    try:
        return ImageInput(name="-", data=read_limited(stdin, "-"))
    except InputError as exc:
        return ImageInput(name="-", error=exc)


def count_inputs(args: Iterable[str], *, recursive: bool = False, files_from: str | None = None) -> int | None:
    """How many inputs ``expand_inputs`` will yield, or None when a stream decides (``--files-from -``).

    Walks folders as ``expand_inputs`` does; meant for a progress bar's total, run beside the work.
    """
    if files_from == "-":
        return None
    total = 0
    for arg in args:
        path = Path(arg)
        total += sum(1 for _ in iter_directory(path, recursive)) if arg != "-" and path.is_dir() else 1
    if files_from is not None:
        total += sum(1 for name in _read_list_file(files_from) if name.strip())
    return total


def _too_long(what: str, number: int) -> UsageError:
    limit = settings.tuning.max_line_bytes
    return UsageError(f"line {number} of {what} is longer than {limit} bytes, so it is not a path; check the list")


def _stream_lines(stream: BinaryIO, what: str) -> Iterator[str]:
    """Paths from a list on a stream, one line at a time, each bounded (``cat /dev/zero`` ends quickly)."""
    limit = settings.tuning.max_line_bytes
    number = 0
    while line := stream.readline(limit + 2):
        number += 1
        stripped = line.rstrip(b"\r\n")
        if len(stripped) > limit:
            raise _too_long(what, number)
        yield os.fsdecode(stripped)


def _read_list_file(source: str) -> list[str]:
    """The paths in a --files-from file; bytes that are not UTF-8 survive as the OS would name them.

    Read whole now (so a bad list fails before any model loads), but bounded:
    at most ``tuning.max_list_bytes``, and no line longer than a path can be.
    """
    limit = settings.tuning.max_list_bytes
    what = f"--files-from {source}"
    paths: list[str] = []
    total = 0
    try:
        with open(source, "rb") as stream:
            for path in _stream_lines(stream, what):
                total += len(path) + 1
                if total > limit:
                    raise UsageError(
                        f"{what} is larger than {limit >> 20} MiB; pass a list that long on stdin "
                        f"(--files-from - < {source}), which is read as it goes"
                    )
                paths.append(path)
    except OSError as exc:
        raise UsageError(f"cannot read {what}: {exc.strerror}") from None
    return paths


def _named(lines: Iterable[str]) -> Iterator[ImageInput]:
    for name in lines:
        if name.strip():
            yield ImageInput(name=name, path=Path(name))
