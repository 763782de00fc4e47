"""Videos in and out: which inputs are videos, their frames as images, and clips written back.

A video named where an image is accepted is read frame by frame
(:mod:`.reader`): every task sees its frames as images, upright and in
8-bit sRGB, with their index and timestamp; :mod:`.sampling` says which
frames a run takes (``--every``, ``--frames``, ``--start``, ``--end``). A
task that writes an image per input writes a video per video input
(:mod:`.writer`): the frames it made, at the input's timestamps, with the
input's sound copied as it was.

Reading and writing need PyAV (the ``video`` extra, FFmpeg inside its
wheel); this module and :mod:`.sampling` import nothing heavy, so asking
whether a name is a video costs no import.
"""

from __future__ import annotations

from importlib.util import find_spec

from ..errors import MissingDependency
from ..images.inputs import VIDEO_EXTENSIONS, is_video_name

__all__ = ["INSTALL_HINT", "OUTPUT_CONTAINERS", "VIDEO_EXTENSIONS", "available", "is_video_name", "require"]

# What a written video may be called, and the container each name means.
OUTPUT_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
INSTALL_HINT = "install the video extra: pip install 'ptm[video]'"


def available() -> bool:
    """Whether PyAV is installed (without importing it)."""
    return find_spec("av") is not None


def require() -> None:
    """Raise MissingDependency, with the command that fixes it, when PyAV is not installed."""
    if not available():
        raise MissingDependency(f"reading and writing videos needs PyAV: {INSTALL_HINT}")
