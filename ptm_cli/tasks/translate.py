"""Image-to-image translation: :class:`Translator` runs a CycleGAN generator on images of any size.

The network itself is in :mod:`ptm_cli.nets.cyclegan`; a ready Translator comes
from :func:`load_translator`. A translated image always has exactly its
input's size. :data:`TASK` is ``ptm translate`` (and ``ptm zebra``).
Importing this module imports neither torch nor torchvision.

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
exceed those of a few tiles (where they go and how they blend: :mod:`._tiles`).

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
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import NonFiniteOutput, UsageError
from ..nets.cyclegan import generator_kwargs, norm_layers
from . import _tiles as tiles
from .base import (
    IMAGE_OUTPUT_OPTIONS,
    VIDEO_OUTPUT_OPTIONS,
    Alias,
    ModelOptions,
    Option,
    Outcome,
    Plan,
    RunContext,
    Task,
)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image
    from torch import nn

    from ..cache.catalog import Catalog, Entry
    from ..images.inputs import ImageInput
    from ..nets.device import Precision
    from ..output.records import RecordWriter

DEFAULT_SIZE = 256
"""Short side the generator runs at when neither caller nor catalog says otherwise (the book's)."""
DEFAULT_TILE = 512
MAX_AUTO_TILE = 1024
"""Largest tile side chosen without --tile: one 1024-pixel tile per pass keeps a 12 MP run under 2 GiB."""
ACTIVATION_BYTES_PER_PIXEL = 944
"""Peak memory of one fp32 forward pass of the 64-filter generator, per input pixel (measured: 0.88 GiB/MP)."""
STATS_MAX_SIDE = 1024
"""Long side of the image the whole-image InstanceNorm statistics are taken from."""
MAX_ENLARGE = 4
"""Enlarging a small image stops once its long side reaches this many times the run size."""
MIN_RUN_SIDE = 16
"""Smaller images are enlarged to this short side; the generator needs at least 8."""
Size = int | Literal["full"]
TileCallback = Callable[[int, int], None]


# --- resizing -----------------------------------------------------------------------------------


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

        chosen, overlap = tiles.check_tiling(self._auto_tile() if tile is None else tile, overlap)
        rgb = to_srgb(image)  # a no-op for images from load_image, which are sRGB already
        run_image = self._run_image(rgb, self._capped_short_side(rgb, self._resolve_size(size)))
        if tile is None and self._fits_one_pass(run_image.width * run_image.height):
            chosen = max(chosen, tiles.round_up(max(run_image.size)))  # one tile: the whole image
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
        return max(DEFAULT_TILE, min(MAX_AUTO_TILE, side - side % tiles.MULTIPLE))

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
            out: torch.Tensor = y.float().cpu()
            return out

    def _run_whole(self, pixels: np.ndarray) -> np.ndarray:
        """One forward pass over the whole (padded) image; uint8 [H, W, 3] out."""
        height, width = pixels.shape[:2]
        x = tiles.reflect_pad(tiles.unit_tensor(pixels).unsqueeze(0), tiles.round_up(height), tiles.round_up(width))
        y = self._forward(x)[0, :, :height, :width]
        return tiles.to_pixels(y)

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
        them (see :func:`._tiles.fitted_tile`); an explicit ``--tile`` keeps its size.
        """
        import numpy as np

        height, width = pixels.shape[:2]
        padded_h, padded_w = tiles.round_up(height), tiles.round_up(width)
        if fit:
            tile_h, tile_w = tiles.fitted_tile(padded_h, tile, overlap), tiles.fitted_tile(padded_w, tile, overlap)
        else:
            tile_h, tile_w = min(tile, padded_h), min(tile, padded_w)
        ys, xs = tiles.tile_starts(padded_h, tile_h, overlap), tiles.tile_starts(padded_w, tile_w, overlap)
        weights_y, weights_x = tiles.blend_weights(padded_h, tile_h, ys), tiles.blend_weights(padded_w, tile_w, xs)
        grid = [(row, col) for row in range(len(ys)) for col in range(len(xs))]
        per_batch = max(1, tiles.TILE_BATCH_PIXELS // (tile_h * tile_w))
        out = np.empty((height, width, 3), dtype=np.uint8)
        band = tiles.Band(out, padded_w, tile_h)
        done = 0
        with _frozen(norm_layers(self.model), stats):
            for batch in tiles.chunks(grid, per_batch):
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
        x = tiles.unit_tensor(crop).unsqueeze(0)
        # Past the bottom/right edge the padded image is the image's reflection, as in the one-pass run.
        return tiles.reflect_pad(x, tile_h, tile_w)[0]


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    import torch

    return torch.stack(tensors)


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


# --- building translators ------------------------------------------------------------------------


def build_translator(
    entry: Entry,
    *,
    weights_file: Path | str | None = None,
    weights_label: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    progress: bool = True,
) -> Translator:
    """A ready translator for a catalog entry (or one made in code), with its weights or ``weights_file``."""
    from ..nets import architectures
    from ..nets.device import check_device_spec

    check_device_spec(device)
    _check_architecture(entry)
    model, torch_device, chosen = architectures.ready(
        entry, weights_file, device=device, precision=precision, progress=progress
    )
    label = weights_label or (str(weights_file) if weights_file is not None else entry.weights)
    return Translator(entry, model, weights_label=label, device=torch_device, precision=chosen)


def _check_architecture(entry: Entry) -> None:
    """A catalog mistake, said before anything loads: translation models are CycleGAN generators."""
    from ..errors import ConfigError
    from ..nets.cyclegan import ARCHITECTURE

    if entry.architecture != ARCHITECTURE:
        raise ConfigError(
            f"{entry.ref}: architecture {entry.architecture!r} cannot translate images; "
            f"translation models use {ARCHITECTURE!r}"
        )


def load_translator(options: ModelOptions, *, progress: bool = True) -> Translator:
    """A ready :class:`Translator` for ``options``, exactly as ``ptm translate`` builds it."""
    translator: Translator = TASK.plan(options).load(progress=progress)
    return translator


# --- the task ------------------------------------------------------------------------------------------


def _rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "error" in record:
        return [{"input": record["input"], "error": f"{record['error']['type']}: {record['error']['message']}"}]
    size = record.get("size")
    return [{**record, "size": f"{size[0]}x{size[1]}" if size else "skipped"}]


class TranslateTask(Task["Translator"]):
    name = "translate"
    title = "Translation"
    summary = "Turn IMAGES into new images with a CycleGAN generator, at the input's size."
    help = """Turn IMAGES into new images with a CycleGAN generator, at the input's size.

    \b
    Examples:
      ptm translate -m style_monet photo.jpg -o monet.png
      ptm translate -m summer2winter_yosemite --output-dir winter/ --suffix _winter summer/*.jpg
      ptm translate -m apple2orange --size full --tile 384 apples.jpg -o oranges.png
    """
    batch_help = """Translate IMAGES into DIR/images/ (names keep the input's stem; nothing is overwritten).

    \b
    Examples:
      ptm batch translate -m horse2zebra -r horses/ --output zebras --suffix _zebra
    """
    model_help = "A translation model (see `ptm models --task translate`)."
    weights_help = "Weights variant, or the path of a local .pth/.safetensors/.h5 generator file."
    options = (
        *IMAGE_OUTPUT_OPTIONS,
        *VIDEO_OUTPUT_OPTIONS,
        Option(
            "size",
            ("--size",),
            kind="size",
            default="256",
            show_default=True,
            help="Short side the generator runs at (the result is scaled back), or 'full' for the image's own "
            "resolution in tiles.",
        ),
        Option(
            "tile",
            ("--tile",),
            kind="int",
            minimum=64,
            help="Tile side for --size full (bounds memory); default: one pass when the image fits the memory "
            "budget, else 512-pixel tiles.",
        ),
    )
    aliases = (
        Alias(
            "zebra",
            model="horse2zebra",
            tag="zebra",
            summary="Horses into zebras: the book's CycleGAN generator (ptm translate -m horse2zebra).",
            help="""Horses into zebras: the book's CycleGAN generator (ptm translate -m horse2zebra).

    \b
    Examples:
      ptm zebra horse.jpg -o zebra.png
      cat horse.jpg | ptm zebra - -o - > zebra.png
      ptm zebra --size full big-horse.jpg -o big-zebra.png
      ptm zebra --output-dir zebras/ --skip-existing horses/
    """,
        ),
    )
    image_outputs = True
    frame_records = False  # a video in, one video and one record out
    record_formats = False
    columns = ("input", "output", "size", "seconds", "error")

    def check(self, params: Mapping[str, Any]) -> None:
        from ..settings import check_side_pixels

        if params.get("tile") is not None:
            check_side_pixels("--tile", params["tile"])  # before the model loads
        size = params.get("size")
        if isinstance(size, int) and not isinstance(size, bool):
            check_side_pixels("--size", size)

    def plan(self, options: ModelOptions, *, catalog: Catalog | None = None) -> Plan[Translator]:
        planned = super().plan(options, catalog=catalog)
        assert planned.entry is not None
        _check_architecture(planned.entry)
        return planned

    def build(self, plan: Plan[Translator], *, progress: bool) -> Translator:
        assert plan.entry is not None
        options = plan.options
        return build_translator(
            plan.entry,
            weights_file=plan.weights_file,
            weights_label=plan.weights_label,
            device=options.device,
            precision=options.precision,
            progress=progress,
        )

    def run(
        self, model: Translator, inputs: Iterable[ImageInput], params: Mapping[str, Any], context: RunContext
    ) -> Iterator[Outcome]:
        from ._imagejobs import run_image_jobs

        size, tile = params.get("size"), params.get("tile")

        def transform(image: Any) -> Any:
            return model.translate(image, size=size, tile=tile, on_tile=context.on_tile)

        def describe() -> dict[str, Any]:
            return {"model": model.entry.model, "weights": model.weights_label}

        assert context.destination is not None
        jobs = run_image_jobs(
            inputs,
            transform,
            context.destination,
            force=context.force,
            skip_existing=context.skip_existing,
            describe=describe,
            emit_bytes=context.emit_bytes,
            on_note=context.on_note,
            on_image=context.on_image,
            videos=context.videos,
        )
        for record, result in jobs:
            yield Outcome(record, result if context.keep_images else None)

    def writer(self, stream: Any, fmt: str | None) -> RecordWriter:
        from ..output.records import RecordWriter, default_format

        return RecordWriter(stream, fmt or default_format(stream), columns=list(self.columns), flatten=_rows)

    def parquet_fields(self) -> list[tuple[str, Any]]:
        import pyarrow as pa

        return [
            ("input", pa.string()),
            ("output", pa.string()),
            ("size", pa.list_(pa.int32())),
            ("skipped", pa.bool_()),
            ("model", pa.string()),
            ("weights", pa.string()),
            ("seconds", pa.float64()),
        ]

    def report_header(self, model: Translator, params: Mapping[str, Any]) -> dict[str, Any]:
        size = params.get("size")
        return {
            "model": model.entry.model,
            "weights": model.weights_label,
            "size": str(size),
            "tile": params.get("tile") if size == "full" else None,
            "device": str(model.device),
            "precision": model.precision.name,
        }

    def report_view(self, record: Mapping[str, Any]) -> dict[str, Any]:
        if record.get("skipped"):
            return {"lines": [f"skipped: {record.get('output')} exists"], "output": False}
        size = record.get("size")
        parts = [f"-> {record.get('output')}"]
        if size:
            parts.append(f"{size[0]}x{size[1]}")
        if record.get("seconds") is not None:
            parts.append(f"{record['seconds']} s")
        return {"lines": ["  ".join(parts)], "output": True}


TASK = TranslateTask()
