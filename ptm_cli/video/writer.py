"""Writing a video whole or not at all: frames at their source's timestamps, the source's sound copied as it was.

A :class:`ClipWriter` is made for one output file and one source
:class:`~.reader.Clip`. Frames are encoded as they come (memory stays flat
however long the clip is) into a temporary file beside the output; the
source's first sound stream is copied packet by packet, interleaved with
the frames, without re-encoding. :meth:`ClipWriter.finish` publishes the file
with one rename; anything else (an error, Ctrl-C, a full disk) leaves no file
under the output's name, and an existing output is replaced only with
``force``.

Timestamps are the source's, moved so that the first frame written is at 0
(``--start`` trims the sound with them); variable frame rates stay variable.
H.264 in yuv420p plays everywhere and is the default; ``--codec`` picks
H.265, VP9 or AV1 and ``--crf`` the quality.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import OutputError, UsageError, first_line
from ..runtime import fsutil
from . import OUTPUT_CONTAINERS

if TYPE_CHECKING:
    from PIL import Image

    from .reader import Clip, Frame

NoteCallback = Callable[[str], None]


@dataclass(frozen=True)
class Codec:
    """A video codec ptm writes: its encoder, the containers it goes in, and its quality scale."""

    encoder: str
    containers: frozenset[str]
    default_crf: int
    max_crf: int
    options: tuple[tuple[str, str], ...] = ()
    tag: str | None = None


CODECS = {
    "h264": Codec("libx264", frozenset({"mp4", "mov", "matroska"}), 23, 51),
    "h265": Codec(
        "libx265", frozenset({"mp4", "mov", "matroska"}), 28, 51, (("x265-params", "log-level=error"),), "hvc1"
    ),
    "vp9": Codec("libvpx-vp9", frozenset({"webm", "matroska", "mp4"}), 32, 63, (("b", "0"), ("row-mt", "1"))),
    "av1": Codec("libsvtav1", frozenset({"webm", "matroska", "mp4"}), 35, 63),
}
CODEC_NAMES = ("h264", "h265", "vp9", "av1")


def container_for(path: Path) -> str:
    """The container a written video's name asks for; UsageError for a name that is not a video's."""
    container = OUTPUT_CONTAINERS.get(path.suffix.lower())
    if container is None:
        names = ", ".join(sorted(OUTPUT_CONTAINERS))
        raise UsageError(f"{path}: a video is written as {names}; name the output file with one of them")
    return container


def check_codec(path: Path, codec: str | None, crf: int | None) -> Codec:
    """The codec for ``path`` (``--codec``, else VP9 for .webm and H.264 otherwise), its ``--crf`` checked."""
    container = container_for(path)
    name = codec or ("vp9" if container == "webm" else "h264")
    chosen = CODECS.get(name)
    if chosen is None:
        raise UsageError(f"--codec {name!r} is not one ptm writes; use one of {', '.join(CODEC_NAMES)}")
    if container not in chosen.containers:
        raise UsageError(f"{path}: {name} does not go in a .{path.suffix.lower().lstrip('.')} file; choose another")
    if crf is not None and not 0 <= crf <= chosen.max_crf:
        raise UsageError(f"--crf for {name} is from 0 (best) to {chosen.max_crf}")
    return chosen


class ClipWriter:
    """One output video, staged beside ``dest`` until :meth:`finish`."""

    def __init__(
        self,
        dest: Path,
        clip: Clip,
        *,
        codec: str | None = None,
        crf: int | None = None,
        force: bool = False,
        on_note: NoteCallback | None = None,
    ):
        self.dest = dest
        self.clip = clip
        self.codec = check_codec(dest, codec, crf)
        self.crf = self.codec.default_crf if crf is None else crf
        self.force = force
        self.on_note = on_note
        self.frames = 0
        self._staged: fsutil.StagedFile | None = None
        self._out: Any = None
        self._video: Any = None
        self._sound: _SoundCopy | None = None
        self._size: tuple[int, int] | None = None  # the first frame's; later frames are made this size
        self._even = (0, 0)  # the size encoded: yuv420p needs even sides
        self._shift: int | None = None  # the first frame's pts: written frames start at 0
        self._last_pts = -1
        self._noted: set[str] = set()

    # -- writing

    def add(self, image: Image.Image, frame: Frame) -> None:
        """Encode ``image`` as ``frame``'s picture, at ``frame``'s time."""
        import av

        try:
            if self._out is None:
                self._start(image.size)
            assert self._size is not None
            if image.size != self._size:
                image = self._fit(image)
            if self._even != self._size:
                image = image.crop((0, 0, *self._even))
            pts = self._pts(frame)
            if self._sound is not None:
                self._sound.copy_until(float(pts * self.clip.time_base), self._out)
            picture = av.VideoFrame.from_image(image)  # type: ignore[no-untyped-call]  # PyAV leaves it unannotated
            # BT.709, limited range, as the stream is tagged: players and decoders read the colours back as they were.
            picture = picture.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
            picture.pts = pts
            picture.time_base = self.clip.time_base
            for packet in self._video.encode(picture):
                self._out.mux(packet)
            self.frames += 1
        except av.FFmpegError as exc:
            raise OutputError(f"cannot write {self.dest}: {_reason(exc)}") from None

    def finish(self) -> None:
        """Flush the encoder, copy the rest of the sound, and publish the file under its name."""
        import av

        if self._out is None or self._staged is None:
            raise OutputError(f"{self.dest}: no frames to write")
        try:
            for packet in self._video.encode(None):
                self._out.mux(packet)
            if self._sound is not None:
                self._sound.copy_until(self._end_seconds(), self._out)
                self._sound.close()
            self._out.close()
            self._out = None
            self._staged.finish()
            self._staged.commit(replace=self.force)
        except FileExistsError:
            raise OutputError(f"{self.dest} already exists; use --force to overwrite it") from None
        except fsutil.NotReplaceable:
            raise OutputError(f"{self.dest} is not a regular file, so ptm will not replace it") from None
        except (av.FFmpegError, OSError) as exc:
            raise OutputError(f"cannot write {self.dest}: {_reason(exc)}") from None
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop and remove the staged file (nothing under the output's name changes)."""
        import contextlib

        if self._sound is not None:
            self._sound.close()
            self._sound = None
        if self._out is not None:
            with contextlib.suppress(Exception):
                self._out.close()
            self._out = None
        if self._staged is not None:
            self._staged.__exit__(None, None, None)
            self._staged = None

    # -- steps

    def _start(self, size: tuple[int, int]) -> None:
        import av

        width, height = size
        even = (width - width % 2, height - height % 2)  # yuv420p halves both sides
        if even != size:
            if min(even) < 2:
                raise OutputError(f"{self.dest}: frames of {width}x{height} are too small to encode")
            self._tell(
                f"{self.dest}: frames of {width}x{height} written at {even[0]}x{even[1]} (yuv420p needs even sides)"
            )
        self._size = size
        self._even = even
        if not self.dest.parent.exists():
            self.dest.parent.mkdir(parents=True, exist_ok=True)
        self._staged = fsutil.StagedFile(self.dest)
        container = container_for(self.dest)
        # Through the staged file's own descriptor, never by its name: a name in a shared folder can be swapped
        # for a link between two opens. (So no "faststart" pass, which reopens the file by name: the index
        # stays at the end, which players and browsers read all the same.)
        self._out = av.open(self._staged.stream, mode="w", format=container)
        rate = self.clip.rate if self.clip.rate else Fraction(25)
        video = self._out.add_stream(self.codec.encoder, rate=rate)
        video.width, video.height = even
        video.pix_fmt = "yuv420p"
        context = video.codec_context
        context.colorspace, context.color_primaries, context.color_trc, context.color_range = 1, 1, 1, 1  # BT.709
        video.time_base = self.clip.time_base
        video.codec_context.time_base = self.clip.time_base
        video.codec_context.options = {"crf": str(self.crf), **dict(self.codec.options)}
        if self.codec.tag and container in ("mp4", "mov"):
            video.codec_tag = self.codec.tag
        self._video = video
        if self.clip.audio:
            self._sound = _SoundCopy.attach(self.clip, self._out, container)
            if self._sound is None:
                self._tell(
                    f"{self.dest}: a .{self.dest.suffix.lower().lstrip('.')} file cannot hold this video's sound as "
                    "it is, so it was left out; name the output .mkv to keep it"
                )
        self._out.start_encoding()

    def _fit(self, image: Image.Image) -> Image.Image:
        from PIL import Image

        assert self._size is not None
        if "resized" not in self._noted:
            self._noted.add("resized")
            self._tell(
                f"{self.dest}: the video changes frame size; later frames are scaled to {self._size[0]}x{self._size[1]}"
            )
        return image.resize(self._size, Image.Resampling.BICUBIC)

    def _pts(self, frame: Frame) -> int:
        clip = self.clip
        pts = int(frame.pts) if frame.pts is not None else round(frame.time / clip.time_base) + clip.start_pts
        if self._shift is None:
            self._shift = pts
            if self._sound is not None:
                self._sound.shift_to(float((pts - self.clip.start_pts) * self.clip.time_base))
        pts -= self._shift
        if pts <= self._last_pts:  # timestamps that repeat or go back: keep the order, one tick apart
            pts = self._last_pts + 1
        self._last_pts = pts
        return pts

    def _end_seconds(self) -> float:
        """Where the sound stops: the end of the last frame written."""
        rate = float(self.clip.rate) if self.clip.rate else 25.0
        return float(self._last_pts * self.clip.time_base) + 1 / rate

    def _tell(self, message: str) -> None:
        if self.on_note is not None:
            self.on_note(message)


def _fits(source: Any, sound: Any, container_format: str) -> bool:
    """Whether a ``container_format`` file can hold ``sound``'s packets as they are: one is written, in memory."""
    import io

    import av

    try:
        with av.open(io.BytesIO(), mode="w", format=container_format) as trial:
            stream = trial.add_stream_from_template(sound)
            for packet in source.demux(sound):
                if packet.dts is not None:
                    packet.stream = stream
                    trial.mux(packet)
                    break
        return True
    except (av.FFmpegError, ValueError):
        return False


class _SoundCopy:
    """The source's first sound stream, copied packet by packet into the output as the frames advance."""

    def __init__(self, container: Any, stream: Any, output: Any):
        self.container = container
        self.stream = stream
        self.output = output
        self.packets = container.demux(stream)
        self.offset = 0.0  # seconds of sound before the first frame written, dropped
        self.pending: Any = None
        self.done = False

    @classmethod
    def attach(cls, clip: Clip, out: Any, container_format: str) -> _SoundCopy | None:
        """The copier of ``clip``'s first sound stream into ``out``; None when ``container_format`` cannot
        hold it as it is (PCM in .mp4), found by writing its first packet into a file in memory."""
        source = clip.open_container()
        sound = next(iter(source.streams.audio), None)
        if sound is None or not _fits(source, sound, container_format):
            source.close()
            return None
        source.seek(0)
        output = out.add_stream_from_template(sound)
        return cls(source, sound, output)

    def shift_to(self, seconds: float) -> None:
        self.offset = seconds

    def copy_until(self, seconds: float, out: Any) -> None:
        """Mux every sound packet that starts before ``seconds`` (output time)."""
        base = self.stream.time_base
        start = self.stream.start_time or 0
        while not self.done:
            packet = self.pending or next(self.packets, None)
            self.pending = None
            if packet is None:
                self.done = True
                return
            if packet.pts is None or packet.dts is None:
                continue  # the demuxer's end-of-stream marker
            at = float((packet.pts - start) * base) - self.offset
            if at >= seconds:
                self.pending = packet
                return
            if self.offset > 0 and at + float((packet.duration or 0) * base) <= 0:
                continue  # before the first frame written (--start)
            shift = start + round(self.offset / base)
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = self.output
            out.mux(packet)

    def close(self) -> None:
        import contextlib

        self.done = True
        with contextlib.suppress(Exception):
            self.container.close()


def _reason(exc: BaseException) -> str:
    return first_line(Exception(getattr(exc, "strerror", None) or str(exc)), 120)
