"""A run's inputs with each video replaced by its frames, decoded ahead in a thread of their own.

:func:`expand_videos` passes images through and turns a video (by its name;
an animated GIF too when a frame option is given) into one input per frame
taken, named as the video, each carrying its frame. Frames are decoded by a
background thread a few ahead of the run, so decoding overlaps the model,
and never more than that: memory stays flat whatever the video's length. A
video that cannot be opened, or stops decoding part way, becomes one failed
input in its place; ``abandoned(clip)`` lets the run stop reading a video
whose output has already failed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError, PtmError, UnsupportedFormat
from ..images.inputs import ImageInput, is_video_name
from . import INSTALL_HINT, available
from .reader import Clip, Frame, open_clip
from .sampling import Sampling

PREFETCH = 4  # frames decoded ahead of the run
ANIMATIONS = frozenset({".gif", ".webp"})  # read frame by frame only when a frame option asks for it


def is_video_input(item: ImageInput, sampling: Sampling) -> bool:
    """Whether ``item`` is read as a video in a run with ``sampling``."""
    if item.path is None or item.error is not None or item.frame is not None:
        return False
    return is_video_name(item.path) or (not sampling.everything and item.path.suffix.lower() in ANIMATIONS)


def expand_videos(
    inputs: Iterable[ImageInput],
    sampling: Sampling,
    *,
    on_note: Callable[[str], None] | None = None,
    abandoned: Callable[[Clip], bool] = lambda clip: False,
    refuse: str | None = None,
) -> Iterator[ImageInput]:
    """``inputs`` with each video's frames in its place (``refuse``: why videos are not taken, as an error)."""
    for item in inputs:
        if item.path is None or not is_video_input(item, sampling):
            yield item
            continue
        if refuse is not None:
            yield item._replace(error=UnsupportedFormat(f"{item.name} is a video; {refuse}"))
            continue
        if not available() and item.path.suffix.lower() != ".webp":  # Pillow reads an animated WebP
            yield item._replace(error=UnsupportedFormat(f"{item.name} is a video; to read it, {INSTALL_HINT}"))
            continue
        yield from _frames_of(item, sampling, on_note, abandoned)


def _frames_of(
    item: ImageInput, sampling: Sampling, on_note: Callable[[str], None] | None, abandoned: Callable[[Clip], bool]
) -> Iterator[ImageInput]:
    assert item.path is not None
    try:
        clip = open_clip(item.path, item.name)
    except InputError as exc:
        yield item._replace(error=exc)
        return
    frames = _Prefetched(lambda: clip.frames(sampling, on_note=on_note), PREFETCH)
    try:
        for frame in frames:
            if isinstance(frame, InputError):
                yield item._replace(error=frame, frame=_failed_frame(clip, frames.last))
                return
            yield item._replace(frame=frame)
            if abandoned(clip):
                return
    finally:
        frames.close()


def _failed_frame(clip: Clip, before: Frame | None) -> Frame:
    """Where a video stopped decoding, as the frame after the last one taken (it has no image)."""
    from PIL import Image

    index = 0 if before is None else before.index + 1
    time = 0.0 if before is None else before.time
    return Frame(index, time, Image.new("RGB", (1, 1)), None, clip, last=True)


class _Prefetched:
    """Items of ``make()`` produced by a daemon thread, at most ``depth`` ahead; an error ends them."""

    def __init__(self, make: Callable[[], Iterator[Frame]], depth: int):
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.last: Frame | None = None
        self._thread = threading.Thread(target=self._work, args=(make,), name="ptm-video", daemon=True)
        self._thread.start()

    def _work(self, make: Callable[[], Iterator[Frame]]) -> None:
        source = make()
        try:
            for frame in source:
                if not self._put(frame):
                    return
            self._put(None)
        except InputError as exc:
            self._put(exc)
        except Exception as exc:  # a decoder failure that is not an FFmpeg error: still this video's, not the run's
            from ..errors import UnreadableImage, first_line

            self._put(UnreadableImage(f"decoding failed: {type(exc).__name__}: {first_line(exc, 120)}"))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Frame | InputError]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, Frame):
                self.last = item
            yield item
            if isinstance(item, InputError):
                return

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)


def count_frames(path: Path, name: str, sampling: Sampling) -> int:
    """How many inputs a video becomes (a progress bar's total; 1 when it cannot be told)."""
    try:
        return open_clip(path, name).estimated_frames(sampling) or 1
    except PtmError:
        return 1
