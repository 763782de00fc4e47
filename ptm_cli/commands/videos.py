"""Video inputs in a task command: checked before the model loads, expanded into frames, records told apart.

Any task runs on a video's frames (see :mod:`ptm_cli.video`): the command
checks what it can before any model loads (PyAV installed, the output's
name, a task call that cannot take videos), expands the inputs, pairs each
record with the input it came from (so a frame's record says which frame
and when), and, for a task that writes one record per video
(``frame_records = False``: ``ptm translate``), folds the frames' records
into one. PyAV is imported only when a video is read.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..images.inputs import ImageInput
from ..tasks.base import Outcome, Task
from ..video.sampling import Sampling, sampling_from

__all__ = ["FRAME_FIELDS", "VideoRun", "check_named", "check_taken", "named_videos", "sampling_from"]

FRAME_FIELDS = ("frame", "time")  # what a frame's record adds after "input"


def _is_video(arg: str, sampling: Sampling) -> bool:
    from ..video.expand import is_video_input

    return arg != "-" and is_video_input(ImageInput(arg, Path(arg)), sampling)


def check_named(
    params: Mapping[str, Any],
    images: tuple[str, ...],
    files_from: str | None,
    sampling: Sampling,
    destination: Any,
) -> list[str]:
    """The videos named on the command line, after refusing what cannot work with them (PyAV missing, an output
    that is no video's, a codec the container cannot hold); before any model loads. See also :func:`check_taken`."""
    named = named_videos(images, sampling)
    if not named:
        if not sampling.everything and files_from is None:
            raise UsageError("--every, --frames, --start and --end choose frames of videos; name a video")
        return named
    from .. import video

    if any(not arg.lower().endswith(".webp") for arg in named):  # Pillow reads an animated WebP
        video.require()
    if destination is not None:
        from ..output.imagefiles import is_video_output
        from ..video.writer import check_codec

        if destination.stdout:
            raise UsageError(f"{named[0]} is a video, and a video is not written to stdout; give -o FILE.mp4")
        if destination.file is not None and not is_video_output(destination.file):
            raise UsageError(f"{named[0]} is a video; name its output FILE.mp4 (or .mov, .mkv, .webm)")
        check_codec(destination.file or Path("video.mp4"), params.get("codec"), params.get("crf"))
    return named


def check_taken(task: Task[Any], params: Mapping[str, Any], named: list[str]) -> None:
    """Refuse named videos in a call that cannot take them (before the task's own checks make any folder)."""
    refusal = task.refuses_videos(params) if named else None
    if refusal is not None:
        raise UsageError(f"{named[0]} is a video; {refusal}")


def named_videos(images: tuple[str, ...], sampling: Sampling) -> list[str]:
    """The arguments that name videos."""
    return [arg for arg in images if _is_video(arg, sampling)]


class VideoRun:
    """A task command's video state: the outputs being written, and which input each record is for."""

    def __init__(
        self,
        task: Task[Any],
        params: Mapping[str, Any],
        sampling: Sampling,
        *,
        force: bool,
        on_note: Callable[[str], None],
        writes: bool,
    ):
        from ..output.videofiles import VideoOutputs

        self.task = task
        self.sampling = sampling
        self.on_note = on_note
        self.refusal = task.refuses_videos(params)
        self.outputs = (
            VideoOutputs(codec=params.get("codec"), crf=params.get("crf"), force=force, on_note=on_note)
            if writes
            else None
        )
        self._items: collections.deque[ImageInput] = collections.deque()
        self._folded: dict[int, dict[str, Any]] = {}  # frame_records=False: a video's record so far
        self._closed: set[int] = set()  # ... and the videos whose one record is out

    def __enter__(self) -> VideoRun:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.outputs is not None:
            self.outputs.close()

    def count(self, images: tuple[str, ...], recursive: bool, files_from: str | None) -> int | None:
        """The progress bar's total: images, and each named video's frames."""
        from ..images.inputs import count_inputs

        total = count_inputs(images, recursive=recursive, files_from=files_from)
        if total is None:
            return None
        for arg in images:
            if _is_video(arg, self.sampling):
                from ..video.expand import count_frames

                total += count_frames(Path(arg), arg, self.sampling) - 1
        return total

    def expand(self, inputs: Iterable[ImageInput]) -> Iterator[ImageInput]:
        """The inputs with videos as their frames, each remembered until its record comes back."""
        from ..video.expand import expand_videos

        abandoned = self.outputs.abandoned if self.outputs is not None else (lambda clip: False)
        for item in expand_videos(
            inputs, self.sampling, on_note=self.on_note, abandoned=abandoned, refuse=self.refusal
        ):
            self._items.append(item)
            yield item

    def paired(self, outcomes: Iterable[Outcome]) -> Iterator[tuple[ImageInput | None, Outcome]]:
        """Each outcome with its input (tasks give one outcome per input, in input order)."""
        for outcome in outcomes:
            yield (self._items.popleft() if self._items else None), outcome

    def frame_outcome(self, item: ImageInput, outcome: Outcome) -> Outcome | None:
        """A frame's outcome as the command writes it: with its frame and time, or folded into its video's."""
        assert item.frame is not None
        if not outcome.ok and self.outputs is not None:
            self.outputs.fail(item)
        record = outcome.record
        fields = {"frame": item.frame.index, "time": item.frame.time}
        if self.task.frame_records:
            ordered = {"input": record.get("input", item.name), **fields}
            ordered.update((k, v) for k, v in record.items() if k != "input")
            return Outcome(ordered, outcome.output_image)
        return self._fold(item, outcome, fields)

    def _fold(self, item: ImageInput, outcome: Outcome, fields: dict[str, Any]) -> Outcome | None:
        """One record per video: the first failure (with where), a skip, or the last frame's with the count."""
        assert item.frame is not None
        key = id(item.frame.clip)
        if key in self._closed:
            return None
        record = outcome.record
        if not outcome.ok:
            self._closed.add(key)
            self._folded.pop(key, None)
            return Outcome({"input": item.name, **fields, "error": record["error"]})
        if record.get("skipped"):
            self._closed.add(key)
            return outcome
        so_far = self._folded.setdefault(key, {"frames": 0, "seconds": 0.0})
        so_far["frames"] += 1
        so_far["seconds"] += float(record.get("seconds") or 0.0)
        if not item.frame.last:
            return None
        self._closed.add(key)
        del self._folded[key]
        whole: dict[str, Any] = {}
        for name, value in record.items():
            whole[name] = value
            if name == "size":
                whole["frames"] = so_far["frames"]
        whole.setdefault("frames", so_far["frames"])
        if "seconds" in whole:
            whole["seconds"] = round(so_far["seconds"], 3)
        return Outcome(whole, outcome.output_image)
