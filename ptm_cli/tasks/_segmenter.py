"""Semantic segmentation: a class for every pixel of the image as the user sees it, at any photo size.

What the network sees is torchvision's documented preprocessing
(``weights.transforms()``: the short side resized to the weights' size, 520,
bilinear and antialiased, then normalised). Its class scores (logits) come
out at that resolution. ptm then brings the *logits* to the image's own
resolution, bilinearly, and takes the argmax there: the mask follows the
network's smooth scores instead of enlarging a blocky low-resolution mask.
Above :data:`WHOLE_VALUES` nothing full-size is held as float: logits are
upsampled a band of rows at a time (:class:`Upsampler`) into a
:class:`MaskSink`, which keeps the 8-bit class mask, the pixel counts, and
(for cut-outs) the 8-bit probability of the chosen classes.

``size="full"`` runs the network at the image's own resolution, in
overlapping tiles once it has more pixels than one tile. Tiles start on a
grid of :data:`GRID` pixels (the coarsest output stride, so every tile
samples the image as the whole-image pass does), their logits are blended
with the raised-cosine ramps of :mod:`._tiles`, and pixels within the margin
of a tile's inner edge never count. Layers that average the whole feature
map (DeepLabV3's image pooling, LRASPP's scale branch, MobileNetV3's
squeeze-and-excitation) take their values from one pass over the whole
image, at most :data:`POOL_MAX_SIDE` pixels long, as translate's norms do:
a tile averaging only itself would see a different scene.

Importing this module imports neither torch nor numpy.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, NonFiniteOutput, PtmError, UsageError
from . import _tiles as tiles

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

    from ..cache.catalog import Entry
    from ..nets.device import Precision

GRID = 16
"""Tiles start on multiples of this: the coarsest output stride of the semantic models (MobileNetV3's)."""
DEFAULT_TILE = 1024
DEFAULT_OVERLAP = 96
"""Overlap of neighbouring tiles (``--overlap``); docs/commands/segment.md gives the agreement it buys.

These networks see further than any affordable overlap (DeepLabV3's widest
dilated branch alone reaches 288 pixels at stride 8, 576 at stride 16), yet
measured with the pooling layers' exact values, seams alone change 0.06 % of
a DeepLabV3-ResNet101 mask at 96 pixels, as at 128; 96 on 1024-pixel tiles
costs about 22 % more work than the photo itself, 128 about 29 %.
"""
POOL_MAX_SIDE = 768
"""Long side of the image the whole-image pooling values come from: near the scale the models were trained at
(520 on the short side), and a pass that costs a thirtieth of a 12-megapixel photo's tiles."""
CHUNK_VALUES = 1 << 23
"""Full-resolution logits are made this many floats (32 MiB) at a time."""
WHOLE_VALUES = 1 << 25
"""Up to this many floats (128 MiB: 1.5 megapixels of 21 classes) logits are upsampled in one call to torch."""
Size = int | str  # a short side in pixels, or "full"


@dataclass
class SemanticResult:
    """One input's outcome: its size, mask, class counts and cut-out alpha, or the error that stopped it."""

    input: str
    width: int = 0
    height: int = 0
    mask: Any = None  # numpy uint8 [H, W]: the class index of every pixel
    counts: Any = None  # numpy int64 [C]: pixels per class
    alpha: Any = None  # numpy uint8 [H, W]: probability of the cut-out classes, 0..255 (None: none asked)
    error: PtmError | None = None
    image: Any = None  # the decoded image (RGB, or RGBA when it had transparency), when outputs need it
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


# --- full-resolution logits, a band of rows at a time ---------------------------------------------


class MaskSink:
    """Takes full-resolution logits [C, rows, W] from the top down; keeps the mask, counts and cut-out alpha."""

    def __init__(self, height: int, width: int, classes: int, keep: frozenset[int] | None = None):
        import numpy as np

        if classes > 256:
            raise ConfigError(f"a model with {classes} classes cannot have an 8-bit class mask")
        self.height, self.width, self.classes = height, width, classes
        self.mask = np.empty((height, width), dtype=np.uint8)
        self.counts = np.zeros(classes, dtype=np.int64)
        self.keep = None if keep is None else sorted(keep)
        self.alpha = np.empty((height, width), dtype=np.uint8) if keep else None
        self.row = 0

    def add(self, logits: torch.Tensor) -> None:
        """The next rows' logits [C, rows, W], taken a chunk at a time (bounded temporaries)."""
        step = max(1, CHUNK_VALUES // max(1, self.classes * self.width))
        for start in range(0, int(logits.shape[1]), step):
            self._add(logits[:, start : start + step])

    def _add(self, logits: torch.Tensor) -> None:
        import numpy as np
        import torch

        rows = int(logits.shape[1])
        labels = _argmax(logits)
        self.mask[self.row : self.row + rows] = labels.numpy()
        self.counts += np.bincount(labels.flatten().numpy(), minlength=self.classes)[: self.classes]
        if self.alpha is not None and self.keep is not None:
            chosen = torch.softmax(logits, 0)[self.keep].sum(0)
            self.alpha[self.row : self.row + rows] = chosen.mul_(255).round_().clamp_(0, 255).to(torch.uint8).numpy()
        self.row += rows

    def done(self) -> bool:
        return self.row == self.height


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    """The index of each pixel's largest score (the first, on a tie, as ``torch.argmax``), as uint8 [rows, W].

    One pass per class over contiguous planes: several times faster than a
    reduction across the class dimension of a [C, rows, W] tensor.
    """
    import torch

    best = logits[0].clone()
    labels = torch.zeros(best.shape, dtype=torch.uint8)
    for index in range(1, int(logits.shape[0])):
        better = logits[index] > best
        best = torch.where(better, logits[index], best)
        labels.masked_fill_(better, index)
    return labels


def finite(logits: torch.Tensor) -> bool:
    """Whether every score is a number (NaN would become an arbitrary class)."""
    import torch

    return bool(torch.isfinite(logits).all())


def non_finite() -> NonFiniteOutput:
    return NonFiniteOutput("the model's class scores hold NaN or infinity; check the weights (`ptm weights inspect`)")


def _axis(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows and weights of bilinear resampling (half-pixel centres, ``align_corners=False``) on one axis.

    The source position of output pixel ``d`` is ``(d + 0.5) * n_in / n_out - 0.5``
    (clamped at 0), rounded once to float32 as torch's kernel does.
    """
    import torch

    if n_in == n_out:
        index = torch.arange(n_out)
        return index, index, torch.ones(n_out), torch.zeros(n_out)
    scale = torch.tensor(n_in / n_out, dtype=torch.float32).double()
    position = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5).float().clamp_min(0)
    first = position.floor().long().clamp_max(n_in - 1)
    second = (first + 1).clamp_max(n_in - 1)
    far = (position - first.float()).clamp(0, 1)
    return first, second, 1 - far, far


class Upsampler:
    """Bilinear upsampling of logits that arrive a band of rows at a time, into a :class:`MaskSink`.

    Equal to ``F.interpolate(logits, size, mode="bilinear", align_corners=False)``
    within float rounding (``tests/test_segment.py`` bounds it), computed width
    first, then a chunk of output rows at a time, keeping only the source rows
    still needed.
    """

    def __init__(self, source: tuple[int, int], out: tuple[int, int], sink: MaskSink):
        self.rows_in, self.cols_in = source
        self.rows_out, self.cols_out = out
        self.sink = sink
        self.first, self.second, self.near, self.far = _axis(self.rows_in, self.rows_out)
        self.col_first, self.col_second, self.col_near, self.col_far = _axis(self.cols_in, self.cols_out)
        self.buffer: torch.Tensor | None = None  # widened source rows [C, k, W] from row self.top
        self.top = 0
        self.received = 0
        self.emitted = 0

    def push(self, rows: torch.Tensor) -> None:
        """The next source rows [C, n, source width]."""
        import torch

        wide = self._widen(rows.float())
        if wide is rows and self.rows_in != self.rows_out:
            wide = wide.clone()  # kept past this call: the caller may reuse its memory
        if self.buffer is None or self.buffer.shape[1] == 0:
            self.buffer = wide
        else:
            self.buffer = torch.cat([self.buffer, wide], dim=1)
        self.received += int(rows.shape[1])
        ready = int(torch.searchsorted(self.second, self.received - 1, right=True))  # rows whose sources are in
        step = max(1, CHUNK_VALUES // max(1, self.sink.classes * self.cols_out))
        while self.emitted < ready:
            end = min(ready, self.emitted + step)
            self.sink.add(self._rows(self.emitted, end))
            self.emitted = end
        if self.emitted < self.rows_out:  # source rows no later output row needs
            drop = int(self.first[self.emitted]) - self.top
            if drop > 0:
                self.buffer = self.buffer[:, drop:]
                self.top += drop

    def _widen(self, rows: torch.Tensor) -> torch.Tensor:
        if self.cols_in == self.cols_out:
            return rows
        return (
            rows.index_select(2, self.col_first) * self.col_near + rows.index_select(2, self.col_second) * self.col_far
        )

    def _rows(self, start: int, end: int) -> torch.Tensor:
        assert self.buffer is not None
        if self.rows_in == self.rows_out:
            return self.buffer[:, start - self.top : end - self.top]
        near = self.buffer.index_select(1, self.first[start:end] - self.top)
        far = self.buffer.index_select(1, self.second[start:end] - self.top)
        return near * self.near[start:end, None] + far * self.far[start:end, None]


# --- the model ----------------------------------------------------------------------------------------


class Segmenter:
    """A torchvision semantic segmentation model ready to label every pixel of images of any size."""

    def __init__(
        self,
        entry: Entry,
        model: nn.Module,
        *,
        weights_label: str,
        labels: list[str],
        device: torch.device,
        precision: Precision,
    ):
        from ..cache.catalog import is_class
        from ..nets.segmentation import global_pools

        self.entry = entry
        self.model = model
        self.weights_label = weights_label
        self.labels = labels
        self.class_names: list[str | None] = [label if is_class(label) else None for label in labels]
        self.device = device
        self.precision = precision
        self.openmp_spinning = False
        self.pools = global_pools(model)
        self._lock = threading.RLock()  # pooling hooks are per call: one run at a time

    @property
    def classes(self) -> int:
        return len(self.labels)

    # -- inputs

    def run_size(self, width: int, height: int, size: Size | None) -> tuple[int, int]:
        """The (width, height) the network runs at for an image of this size."""
        from ..images.transforms import _resized_size

        if size == "full":
            return width, height
        short = int(size) if size is not None else self.entry.resize or 520
        return _resized_size(width, height, short)

    def input_tensor(self, image: Image.Image, size: Size | None) -> torch.Tensor:
        """The normalised [3, h, w] input for ``image`` (RGB) at the run size, as ``weights.transforms()`` makes it."""
        from ..images.transforms import Preprocess, preprocess

        resize = None if size == "full" else (int(size) if size is not None else self.entry.resize or 520)
        p = Preprocess(resize=resize, interpolation=self.entry.interpolation, mean=self.entry.mean, std=self.entry.std)
        # The same values as torch computes them, by numpy: a decoding thread starts no OpenMP team of its own.
        return preprocess(image, p, without_torch=True)

    # -- running

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """The network's class scores [N, C, h, w] (float32, on the CPU) for normalised inputs [N, 3, h, w]."""
        import torch

        with self._lock, torch.inference_mode():
            x = batch.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.precision.dtype, enabled=self.precision.autocast):
                out = self.model(x)["out"]
            logits: torch.Tensor = out.float().cpu()
            return logits

    def upsampled(
        self, logits: torch.Tensor, out_size: tuple[int, int], *, keep: frozenset[int] | None = None
    ) -> MaskSink:
        """The full-resolution mask (``out_size``: height, width) from one image's logits [C, h, w].

        Up to :data:`WHOLE_VALUES` the scores are upsampled in one call to
        ``F.interpolate``; beyond, a band of rows at a time (:class:`Upsampler`).
        """
        import torch.nn.functional as F

        if not finite(logits):
            raise non_finite()
        sink = MaskSink(out_size[0], out_size[1], self.classes, keep)
        if self.classes * out_size[0] * out_size[1] <= WHOLE_VALUES:
            sink.add(F.interpolate(logits[None], size=out_size, mode="bilinear", align_corners=False)[0])
        else:
            Upsampler((int(logits.shape[1]), int(logits.shape[2])), out_size, sink).push(logits)
        return sink

    def segment(
        self,
        tensor: torch.Tensor,
        out_size: tuple[int, int],
        *,
        keep: frozenset[int] | None = None,
        tile: int | None = None,
        overlap: int | None = None,
        pools_from: torch.Tensor | None = None,
        on_tile: Callable[[int, int], None] | None = None,
    ) -> MaskSink:
        """The full-resolution mask of one image from its network input [3, h, w] (see the module's docstring).

        ``out_size`` is (height, width) of the image. The input runs in one
        pass when it has at most ``tile * tile`` pixels, else in tiles, with
        the whole-image pooling values from ``pools_from`` (a smaller input of
        the same image; None: ``tensor`` itself, shrunk).
        """
        rows, cols = int(tensor.shape[1]), int(tensor.shape[2])
        chosen, overlap = check_tiling(tile or DEFAULT_TILE, overlap)
        if rows * cols <= chosen * chosen:
            sink = self.upsampled(self.logits(tensor.unsqueeze(0))[0], out_size, keep=keep)
            if on_tile is not None:
                on_tile(1, 1)
            return sink
        sink = MaskSink(out_size[0], out_size[1], self.classes, keep)
        upsampler = Upsampler((rows, cols), out_size, sink)
        with self._lock:  # the pooling layers hold this image's values until its last tile
            values = self.pooled(pools_from if pools_from is not None else _shrunk(tensor, POOL_MAX_SIDE))
            self._tiled(tensor, chosen, overlap, values, upsampler.push, on_tile, fit=tile is None)
        return sink

    def pooled(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every whole-image pooling layer's values for the image ``tensor`` [3, h, w] (one pass over it)."""
        from ..nets.segmentation import pools_recorded

        if not self.pools:
            return []
        with pools_recorded(self.pools) as values:
            self.logits(tensor.unsqueeze(0))
        return values

    def _tiled(
        self,
        tensor: torch.Tensor,
        tile: int,
        overlap: int,
        values: list[torch.Tensor] | None,
        emit: Callable[[torch.Tensor], None],
        on_tile: Callable[[int, int], None] | None,
        *,
        fit: bool,
    ) -> None:
        """Overlapping tiles of ``tensor``, their logits blended, emitted a finished band of rows at a time.

        ``values=None`` lets each tile average itself in the pooling layers
        (only to show why whole-image values are needed).
        """
        from ..nets.segmentation import pools_frozen

        height, width = int(tensor.shape[1]), int(tensor.shape[2])
        padded_h, padded_w = tiles.round_up(height, GRID), tiles.round_up(width, GRID)
        if fit:
            tile_h, tile_w = _fitted(padded_h, tile, overlap), _fitted(padded_w, tile, overlap)
        else:
            tile_h, tile_w = min(tile, padded_h), min(tile, padded_w)
        ys = tiles.tile_starts(padded_h, tile_h, overlap, multiple=GRID)
        xs = tiles.tile_starts(padded_w, tile_w, overlap, multiple=GRID)
        weights_y, weights_x = tiles.blend_weights(padded_h, tile_h, ys), tiles.blend_weights(padded_w, tile_w, xs)
        band = LogitBand(self.classes, tile_h, padded_w, height, width, emit)
        total, done = len(ys) * len(xs), 0
        with pools_frozen(self.pools, values):
            for row, top in enumerate(ys):
                band.move_to(top)
                for col, left in enumerate(xs):
                    part = _padded(tensor[:, top : top + tile_h, left : left + tile_w], tile_h, tile_w)
                    out = self.logits(part.unsqueeze(0))[0]
                    if not finite(out):
                        raise non_finite()
                    weight = weights_y[row][:, None] * weights_x[col][None, :]
                    band.add(out * weight, left)
                    done += 1
                    if on_tile is not None:
                        on_tile(done, total)
        band.finish()


class LogitBand:
    """The float32 logits of one row of tiles; rows no later tile reaches are emitted (cropped to the image)."""

    def __init__(
        self, classes: int, rows: int, padded_width: int, height: int, width: int, emit: Callable[[Any], None]
    ):
        import torch

        self.acc = torch.zeros((classes, rows, padded_width), dtype=torch.float32)
        self.top, self.rows, self.height, self.width, self.emit = 0, rows, height, width, emit

    def add(self, weighted: torch.Tensor, left: int) -> None:
        self.acc[:, :, left : left + weighted.shape[-1]] += weighted

    def move_to(self, top: int) -> None:
        if top == self.top:
            return
        shift = top - self.top
        self._emit(self.top, shift)
        kept = self.rows - shift
        if kept > 0:  # overlapping copy within one tensor: moved row block by row block, top first
            for start in range(0, kept, shift):
                end = min(kept, start + shift)
                self.acc[:, start:end] = self.acc[:, shift + start : shift + end]
        self.acc[:, max(0, kept) :].zero_()
        self.top = top

    def finish(self) -> None:
        self._emit(self.top, self.rows)

    def _emit(self, top: int, rows: int) -> None:
        rows = min(rows, self.height - top)  # rows past the image are reflection padding
        if rows > 0:
            self.emit(self.acc[:, :rows, : self.width])  # a view: the receiver copies what it keeps


def _padded(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``tensor`` [3, h, w] padded at the bottom and right to (height, width): reflected, or repeated when too thin.

    A tile at the image's bottom or right edge is padded on its own: what
    reflection adds past the edge is the image's own rows and columns by it,
    as if the whole image had been padded (which would copy all of it).
    """
    import torch.nn.functional as F

    bottom, right = height - int(tensor.shape[1]), width - int(tensor.shape[2])
    if bottom == 0 and right == 0:
        return tensor
    thin = bottom >= tensor.shape[1] or right >= tensor.shape[2]
    return F.pad(tensor.unsqueeze(0), (0, right, 0, bottom), mode="replicate" if thin else "reflect")[0]


def _fitted(length: int, tile: int, overlap: int) -> int:
    """The shortest tile side (a multiple of :data:`GRID`, at most ``tile``) covering ``length`` with as few tiles."""
    if length <= tile:
        return length
    count = 1 + math.ceil((length - tile) / (tile - overlap))
    return min(tile, tiles.round_up(math.ceil((length + (count - 1) * overlap) / count), GRID))


def _shrunk(tensor: torch.Tensor, long_side: int) -> torch.Tensor:
    """``tensor`` [3, h, w] bilinearly shrunk (antialiased) so its long side is at most ``long_side``."""
    import torch.nn.functional as F

    rows, cols = int(tensor.shape[1]), int(tensor.shape[2])
    scale = long_side / max(rows, cols)
    if scale >= 1:
        return tensor
    size = (max(GRID, round(rows * scale)), max(GRID, round(cols * scale)))
    return F.interpolate(tensor.unsqueeze(0), size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def check_tiling(tile: int, overlap: int | None) -> tuple[int, int]:
    """Validate ``tile``/``overlap``; the tile is rounded down to a multiple of :data:`GRID`."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 8 * GRID:
        raise UsageError(f"--tile must be a whole number of pixels, at least {8 * GRID}, not {tile!r}")
    tile -= tile % GRID
    chosen = min(DEFAULT_OVERLAP, tile // 4) if overlap is None else overlap
    if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 <= chosen < tile // 2:
        raise UsageError(f"overlap must be a whole number of pixels from 0 to {tile // 2 - 1}, not {overlap!r}")
    return tile, chosen


def build_segmenter(
    entry: Entry,
    *,
    weights_file: Path | str | None = None,
    weights_label: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    progress: bool = True,
) -> Segmenter:
    """A ready semantic segmenter for a catalog entry (or one made in code), with its weights or ``weights_file``."""
    from ..cache.catalog import load_labels
    from ..nets import architectures
    from ..nets.device import check_device_spec, choose_device, choose_precision
    from ..nets.segmentation import drop_auxiliary

    check_device_spec(device)
    labels = load_labels(entry)
    architectures.factory(entry)  # a catalog mistake fails before any download
    if not labels or (entry.num_classes and len(labels) != entry.num_classes):
        raise ConfigError(
            f"{entry.ref}: the model has {entry.num_classes} classes but its labels list "
            f"{len(labels or [])}; fix `labels` or `num_classes` in the catalog entry"
        )
    state_dict = architectures.load_weights(entry, weights_file, progress=progress)
    torch_device = choose_device(device)
    chosen = choose_precision(precision, torch_device)
    model = drop_auxiliary(architectures.build(entry, state_dict)).to(torch_device)
    label = weights_label or (str(weights_file) if weights_file is not None else entry.weights)
    return Segmenter(entry, model, weights_label=label, labels=labels, device=torch_device, precision=chosen)


def class_indices(names: Iterable[str], labels: list[str], ref: str, option: str = "--cutout") -> frozenset[int]:
    """The indices of class ``names`` (any case); UsageError listing the model's classes for an unknown one."""
    from ..cache.catalog import is_class
    from ._detector import class_ids

    known = {label.lower(): i for i, label in enumerate(labels) if is_class(label)}
    return class_ids(names, known, ref, option)
