"""Image-to-image translation: the CycleGAN generator and the engine that runs it.

This module owns

* the ResNet-9-block CycleGAN generator (:func:`build_generator`), laid out so
  that its 48 state_dict keys are those of the book's ``horse2zebra_0.4.0.pth``
  and of the official CycleGAN ``resnet_9blocks`` checkpoints;
* loading such checkpoints (:func:`load_generator`), including old ones
  (torch < 0.4) that still carry InstanceNorm running-stat buffers;
* :class:`Translator`, which turns a PIL image into a translated PIL image of
  exactly the same size;

Importing it imports neither torch nor torchvision; the network classes are
defined the first time a generator is built.

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

import functools
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigError, UsageError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image
    from torch import nn

    from .catalog import Entry
    from .device import Precision

ARCHITECTURE = "cyclegan_resnet9"
DEFAULT_SIZE = 256
"""Short side the generator runs at when neither caller nor catalog says otherwise (the book's)."""
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 96
"""Minimum overlap between neighbouring tiles; chosen from measured seam errors (see the tests)."""
STATS_MAX_SIDE = 1024
"""Long side of the image the whole-image InstanceNorm statistics are taken from."""
MAX_ENLARGE = 4
"""Enlarging a small image stops once its long side reaches this many times the run size."""
MIN_RUN_SIDE = 16
"""Smaller images are enlarged to this short side; the generator needs at least 8."""
MIN_TILE = 32
TILE_BATCH_PIXELS = 1024 * 1024
"""Tiles per forward pass are bounded so that their pixels add up to at most this."""
RAMP_FRACTION = 0.5
"""Share of each overlap over which two tiles' weights cross-fade (the rest is margin)."""
_MULTIPLE = 4  # two stride-2 layers: the generator maps n to 4 * ceil(n / 4)
_GENERATOR_KWARGS = ("ngf", "n_blocks")
_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")

Size = int | Literal["full"]
TileCallback = Callable[[int, int], None]


# --- the network ----------------------------------------------------------------


@functools.cache
def _network_classes() -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    """Define the generator's module classes (once, and only when torch is wanted)."""
    import torch
    from torch import nn

    class FreezableInstanceNorm2d(nn.InstanceNorm2d):
        """InstanceNorm2d (affine=False, no running stats) that can record or reuse statistics.

        ``record``: also keep the per-channel mean and variance it normalised by.
        ``frozen``: normalise by these (mean, var) instead of the input's own,
        which is what makes tiles agree with each other.
        """

        def __init__(self, channels: int):
            super().__init__(channels, affine=False, track_running_stats=False)
            self.record = False
            self.recorded: tuple[torch.Tensor, torch.Tensor] | None = None
            self.frozen: tuple[torch.Tensor, torch.Tensor] | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.frozen is not None:
                mean, var = self.frozen
                # float32 statistics even under bf16 autocast; the result goes back to x's dtype.
                return ((x.float() - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)
            if self.record:
                var, mean = torch.var_mean(x.float(), dim=(2, 3), keepdim=True, correction=0)
                self.recorded = (mean, var)
            return super().forward(x)

    class ResnetBlock(nn.Module):
        """Two 3x3 convolutions with reflection padding and a skip connection."""

        def __init__(self, channels: int):
            super().__init__()
            self.conv_block = nn.Sequential(
                nn.ReflectionPad2d(1),
                nn.Conv2d(channels, channels, kernel_size=3, bias=True),
                FreezableInstanceNorm2d(channels),
                nn.ReLU(True),
                nn.ReflectionPad2d(1),
                nn.Conv2d(channels, channels, kernel_size=3, bias=True),
                FreezableInstanceNorm2d(channels),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv_block(x)

    class ResnetGenerator(nn.Module):
        """CycleGAN's resnet_9blocks generator; every layer sits in ``self.model``."""

        def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9):
            super().__init__()
            layers: list[nn.Module] = [
                nn.ReflectionPad2d(3),
                nn.Conv2d(input_nc, ngf, kernel_size=7, bias=True),
                FreezableInstanceNorm2d(ngf),
                nn.ReLU(True),
            ]
            for factor in (1, 2):  # downsampling: ngf -> 2 ngf -> 4 ngf
                channels = ngf * factor
                layers += [
                    nn.Conv2d(channels, channels * 2, kernel_size=3, stride=2, padding=1, bias=True),
                    FreezableInstanceNorm2d(channels * 2),
                    nn.ReLU(True),
                ]
            layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
            for factor in (4, 2):  # upsampling: 4 ngf -> 2 ngf -> ngf
                channels = ngf * factor
                layers += [
                    nn.ConvTranspose2d(
                        channels, channels // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=True
                    ),
                    FreezableInstanceNorm2d(channels // 2),
                    nn.ReLU(True),
                ]
            layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, bias=True), nn.Tanh()]
            self.model = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

    return FreezableInstanceNorm2d, ResnetBlock, ResnetGenerator


def build_generator(*, ngf: int = 64, n_blocks: int = 9, input_nc: int = 3, output_nc: int = 3) -> nn.Module:
    """A CycleGAN ResNet generator with freshly initialised weights (the catalog uses the defaults)."""
    generator_class = _network_classes()[2]
    return generator_class(input_nc=input_nc, output_nc=output_nc, ngf=ngf, n_blocks=n_blocks)


def _norm_layers(model: nn.Module) -> list[Any]:
    norm_class = _network_classes()[0]
    return [m for m in model.modules() if isinstance(m, norm_class)]


@functools.cache
def _norm_paths(ngf: int, n_blocks: int) -> frozenset[str]:
    """Module paths of the generator's InstanceNorm layers (``model.2``, ``model.10.conv_block.2``...)."""
    import torch

    norm_class = _network_classes()[0]
    with torch.device("meta"):  # no memory, no initialisation: only the names are wanted
        model = build_generator(ngf=ngf, n_blocks=n_blocks)
    return frozenset(name for name, module in model.named_modules() if isinstance(module, norm_class))


def _strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    # weights.load_state_dict already does this for files; callers may pass dicts of their own.
    prefix = "module."
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _drop_norm_buffers(state_dict: dict[str, Any], norm_paths: frozenset[str]) -> dict[str, Any]:
    """Remove the InstanceNorm running stats torch < 0.4 saved; they are never used.

    Only buffers at InstanceNorm positions go: a checkpoint of another
    architecture (batch norm, say) still fails the strict load on its other keys.
    """

    def is_norm_buffer(key: str) -> bool:
        path, _, leaf = key.rpartition(".")
        return leaf in _NORM_BUFFERS and path in norm_paths

    return {k: v for k, v in state_dict.items() if not is_norm_buffer(k)}


def load_generator(
    state_dict: Mapping[str, torch.Tensor], *, ngf: int = 64, n_blocks: int = 9, what: str = "the CycleGAN generator"
) -> nn.Module:
    """The generator with ``state_dict`` loaded strictly, in eval mode, on the CPU.

    Raises ``IncompatibleWeights`` naming missing, unexpected or mis-shaped keys.
    """
    from .modeling import build_with_weights

    cleaned = _drop_norm_buffers(_strip_module_prefix(state_dict), _norm_paths(ngf, n_blocks))
    model = build_with_weights(lambda: build_generator(ngf=ngf, n_blocks=n_blocks), cleaned, what=what)
    return model.float()  # a half-precision checkpoint still runs (and autocasts) like the others


def _generator_kwargs(entry: Entry) -> dict[str, int]:
    unknown = sorted(set(entry.builder_kwargs) - set(_GENERATOR_KWARGS))
    if unknown:
        raise ConfigError(
            f"{entry.ref}: builder_kwargs {', '.join(unknown)} are not understood by {ARCHITECTURE}; "
            f"it takes {', '.join(_GENERATOR_KWARGS)}"
        )
    kwargs = {k: entry.builder_kwargs[k] for k in _GENERATOR_KWARGS if k in entry.builder_kwargs}
    for key, value in kwargs.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{entry.ref}: builder_kwargs.{key} must be a positive whole number")
    return kwargs


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
    from .images import Preprocess, resize_and_crop

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

    @classmethod
    def load(
        cls,
        entry: Entry,
        *,
        weights_file: Path | None = None,
        device: str = "auto",
        precision: str = "fp32",
        progress: bool = True,
    ) -> Translator:
        """Resolve the entry's weights (or load ``weights_file``), build the generator, pick device and precision."""
        from . import weights
        from .device import choose_device, choose_precision

        if entry.architecture != ARCHITECTURE:
            raise ConfigError(
                f"{entry.ref}: architecture {entry.architecture!r} cannot translate images; "
                f"translation models use {ARCHITECTURE!r}"
            )
        kwargs = _generator_kwargs(entry)
        # Weights first: a missing file should fail before torch is even imported.
        state_dict, label = weights.resolve_state_dict(entry, weights_file, progress=progress)
        torch_device = choose_device(device)
        chosen_precision = choose_precision(precision, torch_device)
        model = load_generator(state_dict, what=f"{ARCHITECTURE} ({entry.ref})", **kwargs)
        return cls(entry, model.to(torch_device), weights_label=label, device=torch_device, precision=chosen_precision)

    # -- public ------------------------------------------------------------------

    def translate(
        self,
        image: Image.Image,
        *,
        size: Size | None = None,
        tile: int = DEFAULT_TILE,
        overlap: int | None = None,
        on_tile: TileCallback | None = None,
    ) -> Image.Image:
        """The translated image, always exactly ``image``'s size.

        ``size``: short side to run at (default: the catalog's ``resize``, else
        256), or ``"full"`` for the image's own resolution. ``tile``/``overlap``:
        tiling used when the run has more pixels than ``tile * tile``.
        ``on_tile(done, total)`` is called as tiles finish.
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
        tile: int = DEFAULT_TILE,
        overlap: int | None = None,
        on_tile: TileCallback | None = None,
    ) -> Image.Image:
        """The translation at the resolution it is computed at (before :meth:`translate` resizes back)."""
        from .images import to_rgb

        tile, overlap = _check_tiling(tile, overlap)
        rgb = to_rgb(image)
        run_image = self._run_image(rgb, self._capped_short_side(rgb, self._resolve_size(size)))
        with self._lock:
            return self._run(run_image, tile, overlap, on_tile)

    # -- steps -------------------------------------------------------------------

    def _resolve_size(self, size: Size | None) -> int | None:
        """The short side to run at, or None for the image's own resolution."""
        if size is None:
            return self.entry.resize or DEFAULT_SIZE
        if size == "full":
            return None
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise UsageError(f"size must be a positive number of pixels or 'full', not {size!r}")
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

    def _run(self, image: Image.Image, tile: int, overlap: int, on_tile: TileCallback | None) -> Image.Image:
        import numpy as np
        from PIL import Image

        pixels = np.array(image)  # writable: torch refuses to wrap Pillow's read-only buffer quietly
        if image.width * image.height <= tile * tile:
            out = self._run_whole(pixels)
            if on_tile is not None:
                on_tile(1, 1)
        else:
            stats = self._whole_image_statistics(image)
            out = self._run_tiled(pixels, stats, tile, overlap, on_tile)
        return Image.fromarray(out)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Generator output [N, 3, H, W] (float32, on the CPU) for a batch of [0, 1] images."""
        import torch

        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.precision.dtype, enabled=self.precision.autocast):
                y = self.model(x)
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
        norms = _norm_layers(self.model)
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
    ) -> np.ndarray:
        """Overlapping tiles, normalised by ``stats``, blended into a uint8 [H, W, 3] image.

        ``stats=None`` lets every tile normalise by its own statistics (only
        for showing why whole-image statistics are needed).
        """
        import numpy as np

        height, width = pixels.shape[:2]
        padded_h, padded_w = _round_up(height), _round_up(width)
        tile_h, tile_w = min(tile, padded_h), min(tile, padded_w)
        ys, xs = _tile_starts(padded_h, tile_h, overlap), _tile_starts(padded_w, tile_w, overlap)
        weights_y, weights_x = _blend_weights(padded_h, tile_h, ys), _blend_weights(padded_w, tile_w, xs)
        grid = [(row, col) for row in range(len(ys)) for col in range(len(xs))]
        per_batch = max(1, TILE_BATCH_PIXELS // (tile_h * tile_w))
        out = np.empty((height, width, 3), dtype=np.uint8)
        band = _Band(out, padded_w, tile_h)
        done = 0
        with _frozen(_norm_layers(self.model), stats):
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
