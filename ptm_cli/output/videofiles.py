"""The videos a run writes: a video input's frames, as a task makes them, go into one video file.

A task that writes an image per input hands a frame's image to
:meth:`VideoOutputs.write` instead of writing a file; the first frame of a
video opens its :class:`~ptm_cli.video.writer.ClipWriter` (after the same
checks as an image file: nothing existing replaced without ``force``, never
the input itself, never two videos into one file), and its last frame
publishes it. When any frame of a video fails, its output is dropped
(nothing appears under its name) and the run stops reading that video.
:meth:`VideoOutputs.close` drops whatever an interrupted run left unfinished.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import OutputError
from ..runtime import fsutil

if TYPE_CHECKING:
    from PIL import Image

    from ..images.inputs import ImageInput
    from ..video.writer import ClipWriter


class VideoOutputs:
    """Open video outputs of one run, by source video."""

    def __init__(
        self,
        *,
        codec: str | None = None,
        crf: int | None = None,
        force: bool = False,
        on_note: Callable[[str], None] | None = None,
    ):
        self.codec = codec
        self.crf = crf
        self.force = force
        self.on_note = on_note
        self._writers: dict[int, ClipWriter] = {}
        self._failed: set[int] = set()
        self._skipped: set[int] = set()
        self._owners: dict[Path, str] = {}  # outputs of this run, so two videos never share one

    def abandoned(self, clip: Any) -> bool:
        """Whether ``clip``'s output has failed or is skipped, so reading its frames is wasted."""
        return id(clip) in self._failed or id(clip) in self._skipped

    def skips(self, item: ImageInput, path: Path) -> bool:
        """``--skip-existing``: whether ``item``'s video is skipped because its output exists (decided once)."""
        assert item.frame is not None
        key = id(item.frame.clip)
        undecided = key not in self._skipped and key not in self._writers and key not in self._failed
        if undecided and os.path.lexists(path) and not fsutil.is_stream_target(path):
            self._skipped.add(key)
        return key in self._skipped

    def write(self, item: ImageInput, path: Path, image: Image.Image) -> None:
        """Add ``image`` as ``item``'s frame to ``path``; the video's last frame publishes the file."""
        frame = item.frame
        assert frame is not None
        key = id(frame.clip)
        if key in self._failed:
            raise OutputError(f"{path} was not written: an earlier frame of {item.name} failed")
        try:
            writer = self._writers.get(key)
            if writer is None:
                writer = self._open(item, path)
                self._writers[key] = writer
            writer.add(image, frame)  # type: ignore[arg-type]  # a video.reader.Frame
            if frame.last:
                del self._writers[key]
                writer.finish()
        except BaseException:
            self.fail(item)
            raise

    def fail(self, item: ImageInput) -> None:
        """Drop the output of ``item``'s video (a frame failed); its later frames are not read."""
        if item.frame is None:
            return
        key = id(item.frame.clip)
        self._failed.add(key)
        writer = self._writers.pop(key, None)
        if writer is not None:
            writer.abort()

    def close(self) -> None:
        """Drop every output not finished (an interrupted or failed run): no partial file is left."""
        for writer in self._writers.values():
            writer.abort()
        self._writers.clear()

    def _open(self, item: ImageInput, path: Path) -> ClipWriter:
        from ..video.writer import ClipWriter

        key = path.resolve()
        if key in self._owners:
            raise OutputError(
                f"{path} was already written for {self._owners[key]} in this run (same file name in another "
                "folder); use separate runs or output folders"
            )
        if item.path is not None and path.exists() and path.resolve() == item.path.resolve():
            raise OutputError(f"{path} is the input itself; choose another --output-dir or a --suffix")
        if fsutil.is_stream_target(path) or (os.path.lexists(path) and not fsutil.is_regular_or_absent(path)):
            raise OutputError(f"{path} is not a regular file; a video is written to a file, published when it is done")
        if os.path.lexists(path) and not self.force:
            raise OutputError(f"{path} already exists; use --force to overwrite it or --skip-existing to keep it")
        assert item.frame is not None
        writer = ClipWriter(
            path,
            item.frame.clip,
            codec=self.codec,
            crf=self.crf,
            force=self.force,
            on_note=self.on_note,
        )
        self._owners[key] = item.name
        return writer
