"""Reading videos safely: what a file declares, checked, and its frames as upright 8-bit sRGB images.

:func:`open_clip` probes a video (a path or its bytes) and refuses, before
any frame is decoded, what cannot be worked on: no video stream (an audio
file), frames larger than the pixel limit, sizes of zero. :meth:`Clip.frames`
yields the frames a :class:`~.sampling.Sampling` asks for, each turned
upright by the stream's display matrix (as EXIF orientation turns photos)
and converted to 8-bit RGB; 10-bit and HDR video is converted with a note.
Only the frames taken are converted. With a sampling by time, frames far
ahead are reached by seeking to the keyframe before them instead of decoding
everything in between. A file that stops decoding part way (truncated,
damaged) ends with an :class:`~ptm_cli.errors.UnreadableImage` naming where.

Only container formats known to hold one video are opened: a playlist or a
concatenation list, which would make FFmpeg read other files or URLs, is
refused (``format_whitelist``). Timestamps are the stream's own: variable
frame rates are kept, and a frame rate of zero or nonsense is not needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import settings
from ..errors import ImageTooLarge, InputNotFound, UnreadableImage, UnsupportedFormat, first_line
from . import require
from .sampling import Sampling

if TYPE_CHECKING:
    from PIL import Image

NoteCallback = Callable[[str], None]

# Demuxers a video may be opened with: containers of one or more media streams, never lists of other files.
DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,gif"
# A gap between samples larger than this (with no keyframe interval seen yet) is crossed by seeking.
SEEK_GAP_SECONDS = 1.0
# Frames this far apart (or --frames) are read sparsely: seeking between them, without frame threads.
SPARSE_SECONDS = 0.5
# Transfer characteristics of HDR video (SMPTE ST 2084 PQ, ARIB STD-B67 HLG), as FFmpeg numbers them.
HDR_TRANSFERS = {16: "PQ", 18: "HLG"}
_ROTATIONS = {90: "ROTATE_90", -90: "ROTATE_270", 270: "ROTATE_270", 180: "ROTATE_180", -180: "ROTATE_180"}


@dataclass(frozen=True)
class Clip:
    """A probed video: where it is, and what its video stream declares (sizes upright)."""

    name: str
    source: Path | bytes
    width: int
    height: int
    rotation: int  # degrees counter-clockwise the stored frames are turned when shown
    time_base: Fraction
    start_pts: int
    rate: Fraction | None  # the average frame rate, when it is sensible
    duration: float | None  # seconds, when declared
    declared_frames: int | None
    pixel_format: str
    audio: bool  # has a sound stream to copy
    animation: bool = False  # an animated WebP, whose frames Pillow decodes (this FFmpeg cannot)

    def open_container(self) -> Any:
        """A fresh PyAV input container on the file (each reader and the sound copier has its own)."""
        return _open(self.source, self.name)

    def frames(self, sampling: Sampling | None = None, *, on_note: NoteCallback | None = None) -> Iterator[Frame]:
        """The frames ``sampling`` takes, in order, the last one marked ``last``.

        Raises UnreadableImage when the file stops decoding part way (after the
        frames decoded before that point), and when no frame falls in the range.
        """
        sampling = sampling or Sampling()
        held: Frame | None = None
        decoded = _animation_frames(self, sampling) if self.animation else _decoded(self, sampling, on_note)
        for frame in decoded:
            if held is not None:
                yield held
            held = frame
        if held is None:
            where = f" from {sampling.start:g} s" if sampling.start else ""
            length = f" (the video is {self.duration:.2f} s long)" if self.duration else ""
            raise UnreadableImage(f"{self.name}: no frames{where}{length}")
        yield Frame(held.index, held.time, held.image, held.pts, self, last=True)

    def estimated_frames(self, sampling: Sampling) -> int | None:
        """How many frames ``sampling`` will take, from what the file declares (a progress bar's total)."""
        span = self.duration
        if span is not None:
            span = max(0.0, min(span, sampling.end or span) - sampling.start)
        if sampling.count is not None:
            return sampling.count
        if sampling.every_seconds is not None:
            return None if span is None else max(1, math.ceil(span / sampling.every_seconds))
        total = self.declared_frames
        trimmed = bool(sampling.start or sampling.end)
        if (total is None or trimmed) and span is not None and self.rate is not None:
            total = round(span * self.rate)
        if total is None:
            return None
        return max(1, math.ceil(total / (sampling.every_frames or 1)))


@dataclass(frozen=True)
class Frame:
    """One frame taken from a clip: its number from the start, its time in seconds, the upright image."""

    index: int
    time: float
    image: Image.Image
    pts: int | None
    clip: Clip
    last: bool = False


def open_clip(source: Path | bytes, name: str) -> Clip:
    """Probe ``source`` and check what it declares; nothing is decoded yet."""
    if _is_webp(source):
        return _open_animation(source, name)
    require()
    container = _open(source, name)
    try:
        stream = _video_stream(container, name)
        context = stream.codec_context
        width, height = int(context.width or 0), int(context.height or 0)
        if width <= 0 or height <= 0:
            raise UnreadableImage(f"{name}: the video declares a frame size of {width}x{height}")
        limit = settings.max_pixels()
        if width * height > limit:
            raise ImageTooLarge(
                f"{name}: its frames are {width}x{height} pixels, more than the limit of {limit} "
                "(raise PTM_MAX_PIXELS to read it)"
            )
        rotation = _declared_rotation(stream)
        if rotation in (90, -90, 270):
            width, height = height, width
        time_base = stream.time_base or Fraction(1, 90000)
        rate = stream.average_rate or stream.guessed_rate
        if rate is not None and not (0 < float(rate) <= 1000):
            rate = None  # a frame rate of zero or thousands is a lie; timestamps decide instead
        duration = float(stream.duration * time_base) if stream.duration else None
        if duration is None and container.duration:
            duration = container.duration / 1_000_000
        return Clip(
            name=name,
            source=source,
            width=width,
            height=height,
            rotation=rotation,
            time_base=Fraction(time_base),
            start_pts=int(stream.start_time or 0),
            rate=Fraction(rate) if rate is not None else None,
            duration=duration if duration is not None and math.isfinite(duration) and duration > 0 else None,
            declared_frames=int(stream.frames) if stream.frames and stream.frames > 0 else None,
            pixel_format=str(context.pix_fmt or "unknown"),
            audio=any(s.type == "audio" for s in container.streams),
        )
    finally:
        container.close()


# --- opening ---------------------------------------------------------------------------------------------


def _is_webp(source: Path | bytes) -> bool:
    if isinstance(source, bytes):
        head = source[:12]
    else:
        try:
            with source.open("rb") as stream:
                head = stream.read(12)
        except OSError:
            return False
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def _open_animation(source: Path | bytes, name: str) -> Clip:
    """An animated WebP's facts, from Pillow (frame times in milliseconds)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            width, height = image.size
            limit = settings.max_pixels()
            if width * height > limit:
                raise ImageTooLarge(f"{name}: its frames are {width}x{height} pixels, more than the limit of {limit}")
            frames = int(getattr(image, "n_frames", 1))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UnreadableImage(f"{name} is not an animation ptm can read ({first_line(exc, 120)})") from None
    return Clip(
        name=name,
        source=source,
        width=width,
        height=height,
        rotation=0,
        time_base=Fraction(1, 1000),
        start_pts=0,
        rate=None,
        duration=None,
        declared_frames=frames,
        pixel_format="rgba",
        audio=False,
        animation=True,
    )


def _animation_frames(clip: Clip, sampling: Sampling) -> Iterator[Frame]:
    """An animated WebP's frames through Pillow, each shown for its own duration."""
    import io

    from PIL import Image

    from ..images.colour import to_rgb

    picker = _Picker(clip, sampling)
    source = clip.source
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            pts = 0
            for index in range(int(getattr(image, "n_frames", 1))):
                image.seek(index)
                verdict = picker.verdict(index, pts / 1000)
                if verdict == "stop":
                    return
                if verdict == "take":
                    yield Frame(index, round(pts / 1000, 6), to_rgb(image.convert("RGBA")), pts, clip)
                pts += max(1, int(image.info.get("duration") or 100))
    except (OSError, ValueError) as exc:
        raise UnreadableImage(f"{clip.name}: decoding stopped ({first_line(exc, 120)})") from None


def _open(source: Path | bytes, name: str) -> Any:
    import io

    import av

    options = {"format_whitelist": DEMUXERS}
    try:
        if isinstance(source, bytes):
            return av.open(io.BytesIO(source), mode="r", options=options, metadata_errors="ignore")
        return av.open(str(source), mode="r", options=options, metadata_errors="ignore")
    except FileNotFoundError:
        raise InputNotFound(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputNotFound(f"{name} is a folder, not a video") from None
    except PermissionError:
        raise InputNotFound(f"{name}: permission denied") from None
    except av.FFmpegError as exc:
        raise UnreadableImage(f"{name} is not a video ptm can read ({_reason(exc)})") from None


def _video_stream(container: Any, name: str, *, sparse: bool = False) -> Any:
    """The video stream to read: the first real one (cover art in a sound file is not a video).

    Reading ``sparse`` frames (seeking between them), the decoder threads over slices only: frame
    threads hold several frames back, so each seek would decode that many before the one wanted
    (measured on a 1080p clip, one frame a second: 0.39 s for 20 frames against 0.65 s).
    """
    import av

    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            stream.thread_type = "SLICE" if sparse else "AUTO"
            return stream
    kinds = sorted({s.type for s in container.streams})
    held = f" (it holds {', '.join(kinds)})" if kinds else ""
    raise UnsupportedFormat(f"{name} has no video stream{held}")


def _declared_rotation(stream: Any) -> int:
    """The rotation the stream's display matrix declares, read from its first frame's side data."""
    rotation = 0
    container = stream.container
    try:
        for frame in container.decode(stream):
            rotation = round(frame.rotation or 0)
            break
    except Exception:  # a damaged first frame is reported when the frames are read
        return 0
    return rotation if rotation in _ROTATIONS else 0


def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return first_line(Exception(text), 120)


# --- decoding ------------------------------------------------------------------------------------------


def _decoded(clip: Clip, sampling: Sampling, on_note: NoteCallback | None) -> Iterator[Frame]:
    """Walk the stream, seeking across long gaps, and convert only the frames taken."""
    import av

    container = clip.open_container()
    try:
        sparse = sampling.count is not None or (sampling.every_seconds or 0) >= SPARSE_SECONDS
        stream = _video_stream(container, clip.name, sparse=sparse)
        picker = _Picker(clip, sampling)
        noted: set[str] = set()
        index: int | None = -1  # counted from the first frame; None after a seek (then from timestamps)
        last_time = -math.inf
        last_key: float | None = None  # the last keyframe decoded since the last seek
        interval: float | None = None  # the shortest gap seen between two keyframes decoded in a row
        seek_to = sampling.start if sampling.start > 0 else None
        while True:
            if seek_to is not None:
                _seek(container, stream, clip, seek_to)
                index, last_key = None, None
            seek_to = None
            try:
                for frame in container.decode(stream):
                    time = _frame_time(frame, clip, index)
                    index = index + 1 if index is not None else _index_at(time, clip)
                    if frame.key_frame:
                        if last_key is not None and time > last_key:
                            interval = min(interval or math.inf, time - last_key)
                        last_key = time
                    last_time = time
                    verdict = picker.verdict(index, time)
                    if verdict == "stop":
                        return
                    if verdict == "take":
                        image = _to_image(frame, clip, noted, on_note)
                        yield Frame(index, round(time, 6), image, frame.pts, clip)
                        target = picker.next_time()
                        if target is not None and _worth_seeking(target, last_time, last_key, interval):
                            seek_to = target
                            break
                else:
                    return
            except av.FFmpegError as exc:
                at = f" at {last_time:.2f} s" if last_time > -math.inf else ""
                raise UnreadableImage(f"{clip.name}: decoding stopped{at} ({_reason(exc)})") from None
    finally:
        container.close()


class _Picker:
    """Decides, frame by frame, whether a sampling takes it."""

    def __init__(self, clip: Clip, sampling: Sampling):
        self.sampling = sampling
        self.targets = sampling.targets(clip.duration)
        self.next_index = 0  # --every N: counted from the first frame in range
        self.next_seconds = sampling.start
        self.first_index: int | None = None

    def verdict(self, index: int, time: float) -> str:
        s = self.sampling
        if s.end is not None and time >= s.end:
            return "stop"
        if time < s.start - 1e-9:
            return "skip"
        if self.first_index is None:
            self.first_index = index
        if self.targets is not None:
            if not self.targets:
                return "stop"
            if time + 1e-9 < self.targets[0]:
                return "skip"
            while self.targets and self.targets[0] <= time + 1e-9:
                self.targets.pop(0)
            return "take"
        if s.every_seconds is not None:
            if time + 1e-9 < self.next_seconds:
                return "skip"
            steps = math.floor((time - s.start) / s.every_seconds + 1e-9) + 1
            self.next_seconds = s.start + steps * s.every_seconds
            return "take"
        if s.every_frames is not None and (index - self.first_index) % s.every_frames:
            return "skip"
        return "take"

    def next_time(self) -> float | None:
        """The time of the next frame wanted, when time (not frame counting) decides it."""
        if self.targets is not None:
            return self.targets[0] if self.targets else None
        if self.sampling.every_seconds is not None:
            return self.next_seconds
        return None


def _worth_seeking(target: float, now: float, last_key: float | None, interval: float | None) -> bool:
    """Seek when the next keyframe comes at or before the target (decoding up to it would be wasted)."""
    if last_key is not None and interval is not None:
        return target >= last_key + interval - 1e-6
    return target - now >= SEEK_GAP_SECONDS


def _seek(container: Any, stream: Any, clip: Clip, seconds: float) -> None:
    import av

    pts = clip.start_pts + int(seconds / clip.time_base)
    try:
        container.seek(pts, stream=stream, backward=True, any_frame=False)
    except av.FFmpegError:
        container.seek(clip.start_pts, stream=stream, backward=True, any_frame=False)  # decode forward instead
    stream.codec_context.flush_buffers()


def _frame_time(frame: Any, clip: Clip, index: int | None) -> float:
    """Seconds from the clip's start: the frame's timestamp, else worked out from the frame rate."""
    pts = frame.pts if frame.pts is not None else frame.best_effort_timestamp
    if pts is not None:
        return float((pts - clip.start_pts) * clip.time_base)
    rate = float(clip.rate) if clip.rate else 25.0
    return ((index or 0) + 1) / rate


def _index_at(time: float, clip: Clip) -> int:
    """A frame's number from its time (after a seek): exact for a constant frame rate."""
    rate = float(clip.rate) if clip.rate else 25.0
    return max(0, round(time * rate))


def _to_image(frame: Any, clip: Clip, noted: set[str], on_note: NoteCallback | None) -> Image.Image:
    """The frame as an upright 8-bit RGB image; a note the first time a conversion loses something."""
    from PIL import Image

    limit = settings.max_pixels()
    if frame.width * frame.height > limit:  # a stream may change size part way: each frame is checked
        raise ImageTooLarge(f"{clip.name}: a frame of {frame.width}x{frame.height} pixels is over the limit of {limit}")
    bits = max((c.bits for c in frame.format.components), default=8)
    if bits > 8 and "bits" not in noted:
        noted.add("bits")
        hdr = HDR_TRANSFERS.get(int(frame.color_trc or 0))
        extra = f"; its {hdr} HDR is shown without tone mapping, so colours look flatter" if hdr else ""
        _note(on_note, f"{clip.name}: {bits}-bit video converted to 8-bit sRGB{extra}")
    image: Image.Image = frame.to_image()
    if image.mode != "RGB":
        image = image.convert("RGB")
    name = _ROTATIONS.get(clip.rotation)
    if name is not None:
        image = image.transpose(getattr(Image.Transpose, name))
    return image


def _note(on_note: NoteCallback | None, message: str) -> None:
    if on_note is not None:
        on_note(message)
    else:
        import warnings

        from ..images.colour import ImageNote

        warnings.warn(message, ImageNote, stacklevel=3)
