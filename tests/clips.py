"""Video files the tests build themselves with PyAV: frames that say which they are, sound, rotation, VFR.

Each frame of :func:`make_clip` is a flat colour that encodes its number
(``shade(i)``), so a test can tell frames apart after lossy encoding, and
a white square in the top-left corner, so a test can tell which way up a
frame is.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

MARK = 8  # side of the white square in each frame's top-left corner


def shade(index: int) -> tuple[int, int, int]:
    """Frame ``index``'s colour: far enough from its neighbours to survive H.264 (up to 64 frames)."""
    return (16 + (index * 53) % 224, 16 + (index * 97) % 224, 16 + (index * 29) % 224)


def frame_pixels(index: int, width: int, height: int) -> np.ndarray:
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[:] = shade(index)
    pixels[:MARK, :MARK] = 255
    return pixels


def make_clip(
    path: Path,
    *,
    frames: int = 12,
    size: tuple[int, int] = (64, 48),
    durations_ms: list[int] | None = None,
    rate: int = 25,
    audio: bool = False,
    rotation: int = 0,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    keyframe_every: int | None = None,
    container: str | None = None,
) -> Path:
    """A clip of ``frames`` frames; ``durations_ms`` makes the frame rate variable (timestamps in ms)."""
    import av

    width, height = size
    with av.open(str(path), "w", format=container) as out:
        video = out.add_stream(codec, rate=rate)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        time_base = Fraction(1, 1000) if durations_ms else Fraction(1, rate)
        video.codec_context.time_base = time_base
        if keyframe_every is not None:
            video.codec_context.gop_size = keyframe_every
            video.codec_context.options = {"keyint_min": str(keyframe_every), "sc_threshold": "0"}
        if rotation:
            video.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=16000) if audio else None
        pts = 0
        for i in range(frames):
            picture = av.VideoFrame.from_ndarray(frame_pixels(i, width, height), format="rgb24")
            picture.pts, picture.time_base = pts, time_base
            pts += durations_ms[i % len(durations_ms)] if durations_ms else 1
            for packet in video.encode(picture):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        if sound is not None:
            seconds = float(pts * time_base)
            samples = int(seconds * 16000)
            tone = (0.2 * np.sin(np.arange(samples) * 2 * np.pi * 440 / 16000)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = tone[start : start + 1024]
                if len(chunk) < 1024:
                    chunk = np.pad(chunk, (0, 1024 - len(chunk)))
                piece = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                piece.sample_rate, piece.pts = 16000, start
                for packet in sound.encode(piece):
                    out.mux(packet)
            for packet in sound.encode(None):
                out.mux(packet)
    return path


def encode_black(out: Any, video: Any, frames: int) -> None:
    """Encode and mux ``frames`` black frames of ``video``'s size into an open container, then flush it.

    For clips make_clip cannot describe (hundreds of streams, sound a container cannot hold).
    """
    import av

    for index in range(frames):
        picture = av.VideoFrame.from_ndarray(np.zeros((video.height, video.width, 3), np.uint8), format="rgb24")
        picture.pts = index
        for packet in video.encode(picture):
            out.mux(packet)
    for packet in video.encode(None):
        out.mux(packet)


def probe(path: Path) -> dict[str, object]:
    """What a written video holds: its streams, frame count, frame times, size and the sound's packets."""
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        times = [float(f.time) for f in container.decode(video)]
    with av.open(str(path)) as container:
        sound = [s for s in container.streams if s.type == "audio"]
        packets = sum(1 for p in container.demux(sound[0]) if p.dts is not None) if sound else 0
        codec = container.streams.video[0].codec_context.name
        size = (container.streams.video[0].width, container.streams.video[0].height)
    return {"frames": len(times), "times": times, "size": size, "codec": codec, "sound_packets": packets}


def decoded_frames(path: Path) -> list[np.ndarray]:
    """Every frame of ``path`` as RGB pixels, upright as ptm reads it."""
    from ptm_cli.video.reader import open_clip

    return [np.asarray(f.image) for f in open_clip(path, path.name).frames()]
