"""Which frames of a video a run takes: ``--every``, ``--frames``, ``--start`` and ``--end``, checked.

Without any of them a run takes every frame. ``--every 1s`` (or ``0.5s``,
``250ms``) takes the first frame at or after each multiple of that interval
from the start; ``--every 10`` takes every tenth frame. ``--frames N`` takes
N frames spread evenly over the part of the video that is read. ``--start``
and ``--end`` bound that part, in seconds (``90``, ``90.5``) or as a clock
time (``1:30``, ``0:01:30.5``); ``--end`` is exclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError

MAX_FRAMES = 1_000_000
MAX_SECONDS = 1e7  # 115 days: any time past this is a typing mistake


@dataclass(frozen=True)
class Sampling:
    """The frames to take; the default takes them all."""

    every_seconds: float | None = None
    every_frames: int | None = None
    count: int | None = None
    start: float = 0.0
    end: float | None = None

    @property
    def everything(self) -> bool:
        return self == Sampling()

    @property
    def seeks(self) -> bool:
        """Whether frames between the ones taken may be skipped by seeking (times, not frame counts, decide)."""
        return self.every_seconds is not None or self.count is not None or self.start > 0

    def targets(self, duration: float | None) -> list[float] | None:
        """``--frames N``: the N times to take, spread over [start, end) (None: not a count)."""
        if self.count is None:
            return None
        end = self.end if self.end is not None else duration
        if end is None:
            raise UsageError("--frames needs the video's length, which it does not give; use --every instead")
        span = max(0.0, end - self.start)
        return [self.start + span * i / self.count for i in range(self.count)]


def parse_time(option: str, text: str) -> float:
    """Seconds from ``90``, ``90.5``, ``90s``, ``1:30`` or ``1:02:03.5``."""
    value = text.strip().lower().removesuffix("s")
    parts = value.split(":")
    try:
        if len(parts) > 3 or any(p.strip() == "" for p in parts):
            raise ValueError
        numbers = [float(p) for p in parts]
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a time; give seconds (90, 90.5) or a clock time (1:30)") from None
    seconds = 0.0
    for number in numbers:
        seconds = seconds * 60 + number
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_SECONDS:
        raise UsageError(f"{option} {text!r} is not a time within a video")
    if len(numbers) > 1 and any(n >= 60 for n in numbers[1:]):
        raise UsageError(f"{option} {text!r}: minutes and seconds of a clock time are below 60")
    return seconds


def parse_every(text: str) -> tuple[float | None, int | None]:
    """``--every``: (seconds, None) for ``1s``/``500ms``, (None, frames) for a whole number of frames."""
    value = text.strip().lower()
    try:
        if value.endswith("ms"):
            seconds = float(value[:-2]) / 1000
        elif value.endswith("s"):
            seconds = float(value[:-1])
        else:
            frames = int(value)
            if not 1 <= frames <= MAX_FRAMES:
                raise ValueError
            return None, frames
    except ValueError:
        raise UsageError(
            f"--every {text!r} is neither an interval (1s, 0.5s, 250ms) nor a whole number of frames (1, 10)"
        ) from None
    if not math.isfinite(seconds) or not 0.001 <= seconds <= MAX_SECONDS:
        raise UsageError(f"--every {text!r}: the interval must be from 1ms to {MAX_SECONDS:.0f}s")
    return seconds, None


def sampling_from(every: str | None, frames: int | None, start: str | None, end: str | None) -> Sampling:
    """The sampling the command line asks for, checked before anything opens."""
    if every is not None and frames is not None:
        raise UsageError("use either --every or --frames, not both")
    seconds, step = parse_every(every) if every is not None else (None, None)
    if frames is not None and not 1 <= frames <= MAX_FRAMES:
        raise UsageError(f"--frames must be from 1 to {MAX_FRAMES}")
    begin = parse_time("--start", start) if start is not None else 0.0
    finish = parse_time("--end", end) if end is not None else None
    if finish is not None and finish <= begin:
        raise UsageError("--end must come after --start")
    return Sampling(every_seconds=seconds, every_frames=step, count=frames, start=begin, end=finish)
