"""`ptm zebra --size full` against the generator alone, per megapixel, in one run.

    .venv/bin/python scripts/bench.py --translate-only [--quick]

The 64-filter, 9-block CycleGAN generator with seeded weights. Each figure
comes from its own subprocess, after the model is loaded and one small warm-up
pass has run:

* the generator alone: seconds per megapixel of forward passes on 1000x1000
  inputs, twice: as a plain loop would run it, and inside ``ptm_cli.runtime.tuning``'s
  reused heap as ptm runs it (the allocator is half the difference on Linux);
* ptm: ``Translator.translate(photo, size="full")`` on a ~1 MP (1280x960) and
  a 12 MP (4000x3000) photo, seconds per megapixel and peak resident memory
  of the process;
* the ratio of ptm to the generator alone with the same allocator: what tiling,
  whole-image statistics, blending and conversions add. The issue's figure.

fp32 always; bf16 too where the CPU has native bf16 (``ptm doctor`` says).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchkit import ROOT, run_json

GENERATOR_SCRIPT = """
import json, resource, sys, time
from ptm_cli import tune_process
tune_process()  # the reused heap below (when asked for) is ptm's
import torch
from ptm_cli.nets.cyclegan import build_generator
from ptm_cli.runtime.tuning import reused_heap
from ptm_cli.settings import tuning
weights, precision, heap, passes = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
tuning.reuse_heap = heap
model = build_generator()
model.load_state_dict(torch.load(weights, weights_only=True))
model.eval()
dtype = torch.bfloat16 if precision == "bf16" else torch.float32
x = torch.rand(1, 3, 1000, 1000, generator=torch.Generator().manual_seed(0))
with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=precision == "bf16"), reused_heap():
    model(x[:, :, :256, :256])
    start = time.perf_counter()
    for _ in range(passes):
        model(x)
    seconds = time.perf_counter() - start
print(json.dumps({"s_per_mp": seconds / passes, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

PTM_SCRIPT = """
import json, resource, sys, time
from ptm_cli import tune_process
tune_process()  # as the ptm command does
from PIL import Image
from ptm_cli.cache.catalog import Catalog
from ptm_cli.tasks.translate import build_translator
weights, precision, photo = sys.argv[1:4]
entry = Catalog.load().resolve("horse2zebra", task="translate")
translator = build_translator(entry, weights_file=weights, device="cpu", precision=precision, progress=False)
image = Image.open(photo)
image.load()
translator.translate(image.resize((256, 192)), size="full")  # warm-up: kernels and the allocator
start = time.perf_counter()
out = translator.translate(image, size="full")
seconds = time.perf_counter() - start
assert out.size == image.size
megapixels = image.width * image.height / 1e6
print(json.dumps({"s_per_mp": seconds / megapixels, "seconds": seconds, "megapixels": megapixels,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def translate_rows(folder: Path, generator_weights: str, quick: bool = False) -> dict[str, Any]:
    """Figures per precision: generator alone (plain and reused heap) and ptm on a ~1 MP and a 12 MP photo."""
    from PIL import Image

    from ptm_cli.nets.device import cpu_supports_bf16

    sizes = {"1 MP": (1280, 960), "12 MP": (2000, 1500) if quick else (4000, 3000)}
    photos = {}
    source = Image.open(ROOT / "data" / "chelsea.png").convert("RGB")
    for label, size in sizes.items():
        path = folder / f"translate-{size[0]}x{size[1]}.jpg"
        source.resize(size, Image.Resampling.BICUBIC).save(path, quality=92)
        photos[label] = str(path)
    precisions = ["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]
    passes = "1" if quick else "3"
    figures: dict[str, Any] = {"sizes": {k: f"{w}x{h}" for k, (w, h) in sizes.items()}}
    for precision in precisions:
        row: dict[str, Any] = {
            "generator plain": run_json(GENERATOR_SCRIPT, generator_weights, precision, "0", passes),
            "generator heap": run_json(GENERATOR_SCRIPT, generator_weights, precision, "1", passes),
        }
        for label, photo in photos.items():
            row[label] = run_json(PTM_SCRIPT, generator_weights, precision, photo)
        figures[precision] = row
    return figures


def print_translate_rows(figures: dict[str, Any]) -> None:
    sizes = figures["sizes"]
    print("\n| `--size full`, 64-filter generator | precision | s per MP | vs generator alone | peak MiB |")
    print("|---|---|---:|---:|---:|")
    for precision in ("fp32", "bf16"):
        row = figures.get(precision)
        if row is None:
            continue
        base = row["generator heap"]["s_per_mp"]
        plain = row["generator plain"]["s_per_mp"]
        print(
            f"| generator alone, plain loop, 1000x1000 | {precision} | {plain:.2f} | {plain / base:.2f}x | "
            f"{row['generator plain']['peak_mib']:.0f} |"
        )
        print(
            f"| generator alone, reused heap, 1000x1000 | {precision} | {base:.2f} | 1.00x | "
            f"{row['generator heap']['peak_mib']:.0f} |"
        )
        for label in ("1 MP", "12 MP"):
            r = row[label]
            print(
                f"| ptm, {sizes[label]} photo | {precision} | {r['s_per_mp']:.2f} | "
                f"{r['s_per_mp'] / base:.2f}x | {r['peak_mib']:.0f} |"
            )
    if "bf16" in figures:
        fp32, bf16 = figures["fp32"], figures["bf16"]
        for label in ("generator heap", "1 MP", "12 MP"):
            print(
                f"\nbf16 speed-up over fp32, {label}: {fp32[label]['s_per_mp'] / bf16[label]['s_per_mp']:.2f}x", end=""
            )
        print()
