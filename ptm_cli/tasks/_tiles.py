"""Tiles for images too large for one forward pass: where they go, how they blend, how they are kept.

Tiles start on multiples of 4 pixels (:data:`MULTIPLE`), so every tile sees
the same sampling grid through the generator's two stride-2 layers as the
whole image would. Overlapping tiles are blended with raised-cosine
(sin^2/cos^2) ramps that span each overlap; the 1-D weights of each axis are
normalised to sum to 1, so the 2-D weights (their products) do too. Output
rows are final once the next row of tiles has begun, so only one band of
rows is kept in float32 (:class:`Band`); finished rows go straight to the
8-bit result. Importing this module imports neither torch nor numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    import torch

DEFAULT_OVERLAP = 64
"""Minimum overlap between neighbouring tiles; chosen from measured seam errors (see the tests).

With :data:`RAMP_FRACTION` 0.25 a tile's pixels count only from 24 pixels
inside its edge, as with the former 96-pixel overlap and 0.5 ramp, for a third
less overlap: measured against the one-pass output with seeded generators
(64 filters, 600x400, 256-pixel tiles), max 1 level of 255 for both, where a
48-pixel overlap (18-pixel margin) let 18 levels through.
"""
MIN_TILE = 32
TILE_BATCH_PIXELS = 1024 * 1024
"""Tiles per forward pass are bounded so that their pixels add up to at most this."""
RAMP_FRACTION = 0.25
"""Share of each overlap over which two tiles' weights cross-fade (the rest is margin)."""
MULTIPLE = 4  # two stride-2 layers: the generator maps n to 4 * ceil(n / 4)


# --- geometry -----------------------------------------------------------------------------------------


def round_up(n: int, multiple: int = MULTIPLE) -> int:
    return -(-n // multiple) * multiple


def tile_starts(length: int, tile: int, overlap: int, multiple: int = MULTIPLE) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``length`` (both multiples of ``multiple``).

    Tiles are spread evenly, each start is a multiple of ``multiple`` (4: every
    tile is on the whole image's stride-4 grid) and the last tile ends at
    ``length``. Neighbours overlap by at least ``overlap`` minus the rounding
    (under ``multiple`` pixels).
    """
    if length <= tile:
        return [0]
    count = 1 + math.ceil((length - tile) / (tile - overlap))
    span = length - tile
    return [multiple * round(i * span / (count - 1) / multiple) for i in range(count)]


def fitted_tile(length: int, tile: int, overlap: int) -> int:
    """The shortest tile side (a multiple of 4, at most ``tile``) that covers ``length`` with as few tiles.

    Spreading ``n`` tiles of the largest side over a length they only just
    exceed makes neighbours overlap far more than needed (3000 rows in 1024-pixel
    tiles: 4 tiles overlapping by 365 rows, 37 % more work than the image);
    tiles of the fitted side overlap by about ``overlap`` and do the same job.
    """
    if length <= tile:
        return length
    count = 1 + math.ceil((length - tile) / (tile - overlap))
    fitted = round_up(math.ceil((length + (count - 1) * overlap) / count))
    return min(tile, fitted)


def blend_weights(length: int, tile: int, starts: list[int]) -> list[torch.Tensor]:
    """1-D blending weights per tile (float32, length ``tile``) that sum to 1 at every position.

    In the overlap of two neighbours, the weight passes from one to the other
    with complementary sin^2/cos^2 ramps across the middle ``RAMP_FRACTION``
    of the overlap. Outside the ramp a tile either counts fully or not at all:
    pixels near a tile's inner edge, whose receptive field reaches past the
    tile into reflected padding, never count. Normalising the sum also covers
    places where three tiles overlap.
    """
    import torch

    windows = []
    for i, start in enumerate(starts):
        window = torch.ones(tile, dtype=torch.float64)
        if i > 0:
            window[: starts[i - 1] + tile - start] = ramp(starts[i - 1] + tile - start)
        if i + 1 < len(starts):
            overlap = start + tile - starts[i + 1]
            window[tile - overlap :] = torch.minimum(window[tile - overlap :], ramp(overlap).flip(0))
        windows.append(window)
    total = torch.zeros(length, dtype=torch.float64)
    for start, window in zip(starts, windows, strict=True):
        total[start : start + tile] += window
    return [(window / total[start : start + tile]).float() for start, window in zip(starts, windows, strict=True)]


def ramp(overlap: int) -> torch.Tensor:
    """Weight 0 -> 1 across an overlap of ``overlap`` pixels, rising over its middle part."""
    import torch

    width = max(1.0, overlap * RAMP_FRACTION)
    t = ((torch.arange(overlap, dtype=torch.float64) + 0.5 - (overlap - width) / 2) / width).clamp(0, 1)
    return torch.sin(t * (math.pi / 2)) ** 2


# --- pixels <-> tensors ---------------------------------------------------------------


def unit_tensor(pixels: np.ndarray) -> torch.Tensor:
    """[3, H, W] float32 of ``pixels / 255`` from an [H, W, 3] uint8 array (as ToTensor computes it)."""
    import torch

    source = torch.from_numpy(pixels)
    out = torch.empty((3, pixels.shape[0], pixels.shape[1]), dtype=torch.float32)
    out.copy_(source.permute(2, 0, 1))
    return out.div_(255)


def reflect_pad(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad a [N, 3, h, w] batch at the bottom and right to (height, width) by reflection."""
    import torch.nn.functional as F

    bottom, right = height - x.shape[-2], width - x.shape[-1]
    if bottom == 0 and right == 0:
        return x
    return F.pad(x, (0, right, 0, bottom), mode="reflect")


def to_pixels(y: torch.Tensor) -> np.ndarray:
    """[3, H, W] generator output in [-1, 1] to [H, W, 3] uint8.

    Rounded, where the book's ``ToPILImage`` truncates (which darkens by half
    a level on average): the two differ by at most 1.
    """
    import torch

    scaled = (y.float() + 1.0) / 2.0
    scaled = scaled.clamp_(0.0, 1.0).mul_(255.0).round_()
    return scaled.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


# --- the band of rows being blended -------------------------------------------------------------


class Band:
    """The float32 accumulator for one row of tiles; finished rows go to the uint8 output.

    Holds rows [top, top + height) of the padded image. Moving to a later tile
    row finalises every row above the new top (no later tile reaches them)
    and keeps the overlap.
    """

    def __init__(self, out: np.ndarray, padded_width: int, height: int):
        import torch

        self.out = out
        self.top = 0
        self.height = height
        self.acc = torch.zeros((3, height, padded_width), dtype=torch.float32)

    def add(self, weighted: torch.Tensor, left: int) -> None:
        self.acc[:, :, left : left + weighted.shape[-1]] += weighted

    def move_to(self, top: int) -> None:
        if top == self.top:
            return
        shift = top - self.top
        self._emit(self.top, shift)
        kept = self.acc[:, shift:].clone()
        self.acc.zero_()
        self.acc[:, : kept.shape[1]] = kept
        self.top = top

    def finish(self) -> None:
        self._emit(self.top, self.height)

    def _emit(self, top: int, rows: int) -> None:
        rows = min(rows, self.out.shape[0] - top)  # rows past the image are reflection padding
        if rows > 0:
            width = self.out.shape[1]
            self.out[top : top + rows] = to_pixels(self.acc[:, :rows, :width])


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def check_tiling(tile: int, overlap: int | None) -> tuple[int, int]:
    """Validate ``tile``/``overlap``; the tile is rounded down to a multiple of 4."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < MIN_TILE:
        raise UsageError(f"tile must be a whole number of pixels, at least {MIN_TILE}, not {tile!r}")
    tile -= tile % MULTIPLE
    if overlap is None:
        return tile, min(DEFAULT_OVERLAP, tile // 2)
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tile:
        raise UsageError(f"overlap must be a whole number of pixels from 0 to {tile - 1}, not {overlap!r}")
    return tile, overlap
