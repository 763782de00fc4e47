"""Image-to-image translation: :class:`Translator` runs a CycleGAN generator on images of any size.

The network itself is in :mod:`ptm_cli.nets.cyclegan`; a ready Translator comes
from :func:`ptm_cli.tasks.loading.load_translator`. A translated image always has
exactly its input's size. Importing this module imports neither torch nor
torchvision.

How an image is run
-------------------

``size=N`` (the default, N = the catalog's ``resize``, 256) is the book's
recipe: the short side is resized to N exactly as torchvision's ``Resize(N)``
does (bilinear, antialiased; small images are enlarged, as in the book),
pixels become [0, 1] floats without normalisation (the first instance norm
makes ``x`` and ``2x - 1`` equivalent), and the output ``(y + 1) / 2`` is
rounded to 8 bits. Two things differ from the book, on purpose:

* the generator's output side is ``4 * ceil(n / 4)``; ptm reflect-pads the
  input to a multiple of 4 and crops the output back, so nothing is stretched;
* the result is resized (bicubic) back to the input's size, which is what
  users expect of an image-to-image tool.

Images whose short side would be under :data:`MIN_RUN_SIDE` pixels are
enlarged to it first: the generator's reflection padding needs at least 8
pixels per side, and a 1x1 input still gets a 1x1 output.

``size="full"`` runs at the image's own resolution.

Bounded memory: tiles with whole-image statistics
-------------------------------------------------

Any run whose image has more pixels than one tile (``tile * tile``) is done in
overlapping square tiles, several per forward pass, so the activations never
exceed those of a few tiles. Tiles start on multiples of 4 pixels, so every
tile sees the same sampling grid through the two stride-2 layers as the whole
image would. Overlapping tiles are blended with raised-cosine (sin^2/cos^2)
ramps that span each overlap; the 1-D weights of each axis are normalised to
sum to 1, so the 2-D weights (their products) do too. Output rows are final
once the next row of tiles has begun, so only one band of rows is kept in
float32; finished rows go straight to the 8-bit result.

The generator's 23 InstanceNorm layers are the catch: each normalises by the
mean and variance of whatever it sees, so a tile normalised by its own
statistics comes out with its own colour and contrast (a sky tile and a grass
tile disagree where they meet). ptm therefore runs the generator once on the
whole image first, downscaled so that its long side is at most
:data:`STATS_MAX_SIDE` pixels (or at full resolution when it already is),
records every InstanceNorm's per-channel mean and variance, and then runs
every tile with the norms frozen to those whole-image statistics. When the
statistics pass runs at full resolution the tiled result equals the one-pass
result up to the overlap blending (see ``tests/test_translate.py`` for the
measured bounds); for larger images the statistics come from the downscaled
image, which is an approximation, but one shared by every tile, so no seams
or tile-to-tile colour shifts appear.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from ..errors import NonFiniteOutput, UsageError
from ..nets.cyclegan import generator_kwargs, norm_layers

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image
    from torch import nn

    from ..cache.catalog import Entry
    from ..nets.device import Precision

DEFAULT_SIZE = 256
"""Short side the generator runs at when neither caller nor catalog says otherwise (the book's)."""
DEFAULT_TILE = 512
MAX_AUTO_TILE = 1024
"""Largest tile side chosen without --tile: one 1024-pixel tile per pass keeps a 12 MP run under 2 GiB."""
ACTIVATION_BYTES_PER_PIXEL = 944
"""Peak memory of one fp32 forward pass of the 64-filter generator, per input pixel (measured: 0.88 GiB/MP)."""
DEFAULT_OVERLAP = 64
"""Minimum overlap between neighbouring tiles; chosen from measured seam errors (see the tests).

With :data:`RAMP_FRACTION` 0.25 a tile's pixels count only from 24 pixels
inside its edge, as with the former 96-pixel overlap and 0.5 ramp, for a third
less overlap: measured against the one-pass output with seeded generators
(64 filters, 600x400, 256-pixel tiles), max 1 level of 255 for both, where a
48-pixel overlap (18-pixel margin) let 18 levels through.
"""
STATS_MAX_SIDE = 1024
"""Long side of the image the whole-image InstanceNorm statistics are taken from."""
MAX_ENLARGE = 4
"""Enlarging a small image stops once its long side reaches this many times the run size."""
MIN_RUN_SIDE = 16
"""Smaller images are enlarged to this short side; the generator needs at least 8."""
MIN_TILE = 32
TILE_BATCH_PIXELS = 1024 * 1024
"""Tiles per forward pass are bounded so that their pixels add up to at most this."""
RAMP_FRACTION = 0.25
"""Share of each overlap over which two tiles' weights cross-fade (the rest is margin)."""
_MULTIPLE = 4  # two stride-2 layers: the generator maps n to 4 * ceil(n / 4)

Size = int | Literal["full"]
TileCallback = Callable[[int, int], None]


# --- geometry ----------------------------------------------------------------------


def _round_up(n: int, multiple: int = _MULTIPLE) -> int:
    return -(-n // multiple) * multiple


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``length`` (both multiples of 4).

    Tiles are spread evenly, each start is a multiple of 4 (so every tile is
    on the whole image's stride-4 grid) and the last tile ends at ``length``.
    Neighbours overlap by at least ``overlap`` minus the rounding (< 4 px).
    """
    if length <= tile:
        return [0]
    count = 1 + math.ceil((length - tile) / (tile - overlap))
    span = length - tile
    return [_MULTIPLE * round(i * span / (count - 1) / _MULTIPLE) for i in range(count)]


def _fitted_tile(length: int, tile: int, overlap: int) -> int:
    """The shortest tile side (a multiple of 4, at most ``tile``) that covers ``length`` with as few tiles.

    Spreading ``n`` tiles of the largest side over a length they only just
    exceed makes neighbours overlap far more than needed (3000 rows in 1024-pixel
    tiles: 4 tiles overlapping by 365 rows, 37 % more work than the image);
    tiles of the fitted side overlap by about ``overlap`` and do the same job.
    """
    if length <= tile:
        return length
    count = 1 + math.ceil((length - tile) / (tile - overlap))
    fitted = _round_up(math.ceil((length + (count - 1) * overlap) / count))
    return min(tile, fitted)


def _blend_weights(length: int, tile: int, starts: list[int]) -> list[torch.Tensor]:
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
            window[: starts[i - 1] + tile - start] = _ramp(starts[i - 1] + tile - start)
        if i + 1 < len(starts):
            overlap = start + tile - starts[i + 1]
            window[tile - overlap :] = torch.minimum(window[tile - overlap :], _ramp(overlap).flip(0))
        windows.append(window)
    total = torch.zeros(length, dtype=torch.float64)
    for start, window in zip(starts, windows, strict=True):
        total[start : start + tile] += window
    return [(window / total[start : start + tile]).float() for start, window in zip(starts, windows, strict=True)]


def _ramp(overlap: int) -> torch.Tensor:
    """Weight 0 -> 1 across an overlap of ``overlap`` pixels, rising over its middle part."""
    import torch

    width = max(1.0, overlap * RAMP_FRACTION)
    t = ((torch.arange(overlap, dtype=torch.float64) + 0.5 - (overlap - width) / 2) / width).clamp(0, 1)
    return torch.sin(t * (math.pi / 2)) ** 2


# --- pixels <-> tensors ---------------------------------------------------------------


def _unit_tensor(pixels: np.ndarray) -> torch.Tensor:
    """[3, H, W] float32 of ``pixels / 255`` from an [H, W, 3] uint8 array (as ToTensor computes it)."""
    import torch

    source = torch.from_numpy(pixels)
    out = torch.empty((3, pixels.shape[0], pixels.shape[1]), dtype=torch.float32)
    out.copy_(source.permute(2, 0, 1))
    return out.div_(255)


def _reflect_pad(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad a [N, 3, h, w] batch at the bottom and right to (height, width) by reflection."""
    import torch.nn.functional as F

    bottom, right = height - x.shape[-2], width - x.shape[-1]
    if bottom == 0 and right == 0:
        return x
    return F.pad(x, (0, right, 0, bottom), mode="reflect")


def _to_pixels(y: torch.Tensor) -> np.ndarray:
    """[3, H, W] generator output in [-1, 1] to [H, W, 3] uint8.

    Rounded, where the book's ``ToPILImage`` truncates (which darkens by half
    a level on average): the two differ by at most 1.
    """
    import torch

    scaled = (y.float() + 1.0) / 2.0
    scaled = scaled.clamp_(0.0, 1.0).mul_(255.0).round_()
    return scaled.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def _resize_short_side(image: Image.Image, short_side: int) -> Image.Image:
    """torchvision ``Resize(short_side)`` on a PIL image (bilinear, antialiased), bit for bit."""
    from ..images.transforms import Preprocess, resize_and_crop

    return resize_and_crop(image, Preprocess(resize=short_side, interpolation="bilinear"))


def _resize_long_side_at_most(image: Image.Image, long_side: int) -> Image.Image:
    from PIL import Image

    scale = long_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


# --- the engine ------------------------------------------------------------------------


class Translator:
    """A CycleGAN generator ready to translate images of any size."""

    def __init__(
        self,
        entry: Entry,
        model: nn.Module,
        *,
        weights_label: str,
        device: torch.device,
        precision: Precision,
    ):
        self.entry = entry
        self.model = model
        self.weights_label = weights_label
        self.device = device
        self.precision = precision
        # The norm layers carry per-call state (recorded or frozen statistics):
        # one translation at a time per Translator.
        self._lock = threading.Lock()

    # -- public ------------------------------------------------------------------

    def translate(
        self,
        image: Image.Image,
        *,
        size: Size | None = None,
        tile: int | None = None,
        overlap: int | None = None,
        on_tile: TileCallback | None = None,
    ) -> Image.Image:
        """The translated image, always exactly ``image``'s size.

        ``size``: short side to run at (default: the catalog's ``resize``, else
        256), or ``"full"`` for the image's own resolution. ``tile``/``overlap``:
        tiling used when the run has more pixels than ``tile * tile``; with
        ``tile=None`` the image runs in one pass when its activations fit
        ``settings.tuning.translate_memory`` (exact, and the fastest), else in
        :data:`DEFAULT_TILE` tiles. ``on_tile(done, total)`` is called as tiles finish.
        """
        from PIL import Image

        result = self.run_at(image, size, tile=tile, overlap=overlap, on_tile=on_tile)
        if result.size != image.size:
            result = result.resize(image.size, Image.Resampling.BICUBIC)
        return result

    def run_at(
        self,
        image: Image.Image,
        size: Size | None = None,
        *,
        tile: int | None = None,
        overlap: int | None = None,
        on_tile: TileCallback | None = None,
    ) -> Image.Image:
        """The translation at the resolution it is computed at (before :meth:`translate` resizes back)."""
        from ..images.colour import to_srgb

        chosen, overlap = _check_tiling(self._auto_tile() if tile is None else tile, overlap)
        rgb = to_srgb(image)  # a no-op for images from load_image, which are sRGB already
        run_image = self._run_image(rgb, self._capped_short_side(rgb, self._resolve_size(size)))
        if tile is None and self._fits_one_pass(run_image.width * run_image.height):
            chosen = max(chosen, _round_up(max(run_image.size)))  # one tile: the whole image
        with self._lock:
            return self._run(run_image, chosen, overlap, on_tile, fit=tile is None)

    def one_pass_pixels(self) -> int:
        """The most pixels one pass may take within ``settings.tuning.translate_memory``."""
        from ..settings import tuning

        ngf = generator_kwargs(self.entry).get("ngf", 64)
        return int(tuning.translate_memory / (ACTIVATION_BYTES_PER_PIXEL * max(1, ngf) / 64))

    def _fits_one_pass(self, pixels: int) -> bool:
        return pixels <= self.one_pass_pixels()

    def _auto_tile(self) -> int:
        """Tiles as large as the memory budget allows (fewer overlaps), between DEFAULT_TILE and MAX_AUTO_TILE."""
        side = math.isqrt(self.one_pass_pixels())
        return max(DEFAULT_TILE, min(MAX_AUTO_TILE, side - side % _MULTIPLE))

    # -- steps -------------------------------------------------------------------

    def _resolve_size(self, size: Size | None) -> int | None:
        """The short side to run at, or None for the image's own resolution."""
        if size is None:
            return self.entry.resize or DEFAULT_SIZE
        if size == "full":
            return None
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UsageError(f"size must be a positive number of pixels or 'full', not {size!r}")
        from ..settings import check_side_pixels

        check_side_pixels("size", size)
        return size

    @staticmethod
    def _run_image(image: Image.Image, short_side: int | None) -> Image.Image:
        """The image resized as the generator will see it (tiny ones enlarged to MIN_RUN_SIDE).

        Enlarging never makes the long side exceed both the input's and
        ``MAX_ENLARGE * short_side``: the book's rule would run a 1x1000 strip
        at 256x256000, hours of work for a one-pixel-high result.
        """
        if short_side is not None:
            image = _resize_short_side(image, short_side)
        if min(image.size) < MIN_RUN_SIDE:
            image = _resize_short_side(image, MIN_RUN_SIDE)
        return image

    @staticmethod
    def _capped_short_side(image: Image.Image, short_side: int | None) -> int | None:
        if short_side is None or min(image.size) >= short_side:
            return short_side
        scale = short_side / min(image.size)
        limit = max(max(image.size), MAX_ENLARGE * short_side)
        if max(image.size) * scale <= limit:
            return short_side
        return max(1, int(min(image.size) * limit / max(image.size)))

    def _run(
        self, image: Image.Image, tile: int, overlap: int, on_tile: TileCallback | None, *, fit: bool = False
    ) -> Image.Image:
        import numpy as np
        from PIL import Image

        from ..runtime.tuning import reused_heap

        pixels = np.array(image)  # writable: torch refuses to wrap Pillow's read-only buffer quietly
        with reused_heap():  # every layer and tile reuses pages instead of faulting in fresh ones
            if image.width * image.height <= tile * tile:
                out = self._run_whole(pixels)
                if on_tile is not None:
                    on_tile(1, 1)
            else:
                stats = self._whole_image_statistics(image)
                out = self._run_tiled(pixels, stats, tile, overlap, on_tile, fit=fit)
        return Image.fromarray(out)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Generator output [N, 3, H, W] (float32, on the CPU) for a batch of [0, 1] images."""
        import torch

        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.precision.dtype, enabled=self.precision.autocast):
                y = self.model(x)
            if not bool(torch.isfinite(y).all()):
                # NaN would become arbitrary pixel values in the written image.
                raise NonFiniteOutput(
                    f"the generator's output holds NaN or infinity ({self.entry.ref}), so no image was written; "
                    "check the weights (`ptm weights inspect`)"
                )
            return y.float().cpu()

    def _run_whole(self, pixels: np.ndarray) -> np.ndarray:
        """One forward pass over the whole (padded) image; uint8 [H, W, 3] out."""
        height, width = pixels.shape[:2]
        x = _reflect_pad(_unit_tensor(pixels).unsqueeze(0), _round_up(height), _round_up(width))
        y = self._forward(x)[0, :, :height, :width]
        return _to_pixels(y)

    def _whole_image_statistics(self, image: Image.Image) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every InstanceNorm's per-channel (mean, var) over the whole image, at most STATS_MAX_SIDE long."""
        import numpy as np

        small = _resize_long_side_at_most(image, STATS_MAX_SIDE)
        if min(small.size) < MIN_RUN_SIDE:
            small = _resize_short_side(small, MIN_RUN_SIDE)
        norms = norm_layers(self.model)
        with _recording(norms):
            self._run_whole(np.array(small))
            stats = [norm.recorded for norm in norms]
        return stats

    def _run_tiled(
        self,
        pixels: np.ndarray,
        stats: list[tuple[torch.Tensor, torch.Tensor]] | None,
        tile: int,
        overlap: int,
        on_tile: TileCallback | None,
        *,
        fit: bool = False,
    ) -> np.ndarray:
        """Overlapping tiles, normalised by ``stats``, blended into a uint8 [H, W, 3] image.

        ``stats=None`` lets every tile normalise by its own statistics (only
        for showing why whole-image statistics are needed). ``fit`` shrinks
        the tiles to the shortest side that covers the image with as few of
        them (see :func:`_fitted_tile`); an explicit ``--tile`` keeps its size.
        """
        import numpy as np

        height, width = pixels.shape[:2]
        padded_h, padded_w = _round_up(height), _round_up(width)
        if fit:
            tile_h, tile_w = _fitted_tile(padded_h, tile, overlap), _fitted_tile(padded_w, tile, overlap)
        else:
            tile_h, tile_w = min(tile, padded_h), min(tile, padded_w)
        ys, xs = _tile_starts(padded_h, tile_h, overlap), _tile_starts(padded_w, tile_w, overlap)
        weights_y, weights_x = _blend_weights(padded_h, tile_h, ys), _blend_weights(padded_w, tile_w, xs)
        grid = [(row, col) for row in range(len(ys)) for col in range(len(xs))]
        per_batch = max(1, TILE_BATCH_PIXELS // (tile_h * tile_w))
        out = np.empty((height, width, 3), dtype=np.uint8)
        band = _Band(out, padded_w, tile_h)
        done = 0
        with _frozen(norm_layers(self.model), stats):
            for batch in _chunks(grid, per_batch):
                inputs = [self._tile_input(pixels, ys[r], xs[c], tile_h, tile_w) for r, c in batch]
                outputs = self._forward(_stack(inputs))
                for (row, col), y in zip(batch, outputs, strict=True):
                    band.move_to(ys[row])
                    weight = weights_y[row][:, None] * weights_x[col][None, :]
                    band.add(y * weight, xs[col])
                done += len(batch)
                if on_tile is not None:
                    on_tile(done, len(grid))
        band.finish()
        return out

    @staticmethod
    def _tile_input(pixels: np.ndarray, top: int, left: int, tile_h: int, tile_w: int) -> torch.Tensor:
        """The [3, tile_h, tile_w] input of one tile, reflect-padded where it passes the image's edge."""
        crop = pixels[top : top + tile_h, left : left + tile_w]
        x = _unit_tensor(crop).unsqueeze(0)
        # Past the bottom/right edge the padded image is the image's reflection, as in the one-pass run.
        return _reflect_pad(x, tile_h, tile_w)[0]


class _Band:
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
            self.out[top : top + rows] = _to_pixels(self.acc[:, :rows, :width])


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    import torch

    return torch.stack(tensors)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextmanager
def _recording(norms: list[Any]) -> Iterator[None]:
    for norm in norms:
        norm.record, norm.recorded = True, None
    try:
        yield
    finally:
        for norm in norms:
            norm.record, norm.recorded = False, None


@contextmanager
def _frozen(norms: list[Any], stats: list[tuple[torch.Tensor, torch.Tensor]] | None) -> Iterator[None]:
    if stats is None:
        yield
        return
    for norm, (mean, var) in zip(norms, stats, strict=True):
        norm.frozen = (mean, var)
    try:
        yield
    finally:
        for norm in norms:
            norm.frozen = None


def _check_tiling(tile: int, overlap: int | None) -> tuple[int, int]:
    """Validate ``tile``/``overlap``; the tile is rounded down to a multiple of 4."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < MIN_TILE:
        raise UsageError(f"tile must be a whole number of pixels, at least {MIN_TILE}, not {tile!r}")
    tile -= tile % _MULTIPLE
    if overlap is None:
        return tile, min(DEFAULT_OVERLAP, tile // 2)
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tile:
        raise UsageError(f"overlap must be a whole number of pixels from 0 to {tile - 1}, not {overlap!r}")
    return tile, overlap
