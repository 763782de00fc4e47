"""Time and peak memory of ``Translator.translate(size="full")`` on a large generated image.

Not a test: it builds the real 64-filter ResNet-9-block generator with random
weights (nothing is downloaded), makes a synthetic photo-sized image and
translates it at full resolution, tile by tile. One JSON line per run goes to
stdout; progress goes to stderr.

    .venv/bin/python scripts/bench_translate_memory.py                 # 4000x3000, 512 px tiles
    .venv/bin/python scripts/bench_translate_memory.py --tiles 256,512 --width 2000 --height 1500

With several tile sizes each runs in its own process, so that each peak
resident set size (``ru_maxrss``) belongs to one run only.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--tiles", default="512", help="tile sizes to compare, comma-separated (default 512)")
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap (default: ptm's)")
    parser.add_argument("--ngf", type=int, default=64, help="generator width (64 is the real architecture)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes; this script is for Linux).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_photo(width: int, height: int, seed: int) -> Any:
    """Smooth gradients plus texture, built without any full-size temporary arrays."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = (np.arange(width, dtype=np.uint32) * 255 // max(1, width - 1)).astype(np.uint8)[None, :]
    pixels[..., 1] = (np.arange(height, dtype=np.uint32) * 255 // max(1, height - 1)).astype(np.uint8)[:, None]
    texture = rng.integers(0, 256, size=(97, 89), dtype=np.uint8)
    reps = (height // 97 + 1, width // 89 + 1)
    pixels[..., 2] = np.tile(texture, reps)[:height, :width]
    return Image.fromarray(pixels)


def run_one(args: argparse.Namespace, tile: int) -> dict[str, Any]:
    from ptm_cli import tune_process

    tune_process()  # as `ptm translate` runs: in the reused heap
    import torch

    from ptm_cli.cache.catalog import Entry
    from ptm_cli.nets.cyclegan import build_generator
    from ptm_cli.nets.device import choose_precision
    from ptm_cli.tasks.translate import Translator

    torch.manual_seed(args.seed)
    model = build_generator(ngf=args.ngf).eval()
    entry = Entry(model="bench", weights="RANDOM", task="translate", architecture="cyclegan_resnet9", labels=None)
    device = torch.device("cpu")
    translator = Translator(
        entry, model, weights_label="random", device=device, precision=choose_precision(args.precision, device)
    )
    image = synthetic_photo(args.width, args.height, args.seed)
    before = peak_rss_mib()

    def progress(done: int, total: int) -> None:
        print(f"\rtile {done}/{total}  {time.perf_counter() - start:7.1f} s", end="", file=sys.stderr, flush=True)

    start = time.perf_counter()
    out = translator.translate(image, size="full", tile=tile, overlap=args.overlap, on_tile=progress)
    seconds = time.perf_counter() - start
    print(file=sys.stderr)
    assert out.size == image.size
    return {
        "width": args.width,
        "height": args.height,
        "megapixels": round(args.width * args.height / 1e6, 2),
        "tile": tile,
        "overlap": args.overlap,
        "ngf": args.ngf,
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 1),
        "peak_rss_mib_before_run": round(before, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tiles = [int(t) for t in args.tiles.split(",") if t]
    if len(tiles) == 1:
        print(json.dumps(run_one(args, tiles[0])), flush=True)
        return 0
    for tile in tiles:  # one process per tile size: ru_maxrss is a high-water mark
        cmd = [
            sys.executable,
            __file__,
            "--tiles",
            str(tile),
            "--width",
            str(args.width),
            "--height",
            str(args.height),
            "--ngf",
            str(args.ngf),
            "--precision",
            args.precision,
            "--seed",
            str(args.seed),
        ]
        if args.overlap is not None:
            cmd += ["--overlap", str(args.overlap)]
        subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
