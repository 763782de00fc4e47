"""`ptm segment` against the network alone, full-resolution tiles, and how well tiles agree with one pass.

    .venv/bin/python scripts/bench.py --segment-only     # or this file directly; about 25 minutes on 2 cores

Everything is generated here: 1280x720 and 4000x3000 JPEGs from the sample
photos, and each model with seeded weights calibrated on a sample photo
(``tests/helpers.py``: ``segmenter_state_dict``), so masks hold many classes
in patches as a trained model's do; the work per image does not depend on
the weights. Each measurement runs in its own process, after model load:

* the network alone: ptm's Segmenter on inputs decoded and preprocessed
  before the clock starts, one image per pass (``ptm segment``'s default),
  in the reused heap the pipeline runs in;
* ptm's pipeline: ``segment_images`` over the files (decoding,
  preprocessing, the forward passes, the logits upsampled to 1280x720 and
  their argmax, the class counts).

They run in rounds (network, ptm; again), each figure the median. Then
``ptm segment --size full`` on a 12-megapixel photo (whole process, peak
memory from the kernel) against one pass over one of its tiles, and the
agreement of tiled masks with one-pass masks at several overlaps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import PYTHON, ROOT, cpu_model, run_json

SEED_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[3])
from helpers import segmenter_state_dict
model, path = sys.argv[1:3]
torch.save(segmenter_state_dict(model, seed=1), path)
print("ok")
"""

COMMON = """
import json, sys, time, resource
from pathlib import Path
from ptm_cli import tune_process
tune_process()
import torch
from ptm_cli.cache.catalog import Catalog
from ptm_cli.tasks._segmenter import build_segmenter
from ptm_cli.images.decode import load_image
model, weights, precision, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
paths = sys.argv[5:]
entry = Catalog.load().resolve(model)
segmenter = build_segmenter(entry, weights_file=Path(weights), precision=precision, progress=False)
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

NETWORK_SCRIPT = (
    COMMON
    + """
from ptm_cli.runtime.tuning import reused_heap
inputs = [segmenter.input_tensor(load_image(p), None)[None] for p in paths]
times = []
with reused_heap():
    segmenter.logits(inputs[0])  # warm-up
    for _ in range(rounds):
        start = time.perf_counter()
        for x in inputs:
            segmenter.logits(x)
        times.append(len(inputs) / (time.perf_counter() - start))
print(json.dumps({"rates": times, "peak_mib": peak()}))
"""
)

PIPELINE_SCRIPT = (
    COMMON
    + """
from ptm_cli.images.inputs import ImageInput
from ptm_cli.tasks.segment import segment_images, semantic_record
items = [ImageInput(p, path=Path(p)) for p in paths]
list(segment_images(items[:1], segmenter))  # warm-up
times = []
for _ in range(rounds):
    start = time.perf_counter()
    records = [semantic_record(r, segmenter) for r in segment_images(items, segmenter)]
    times.append(len(items) / (time.perf_counter() - start))
    assert all("error" not in r for r in records)
print(json.dumps({"rates": times, "peak_mib": peak()}))
"""
)

TILE_SCRIPT = (
    COMMON
    + """
from ptm_cli.runtime.tuning import reused_heap
from ptm_cli.tasks._segmenter import DEFAULT_OVERLAP, DEFAULT_TILE, GRID, _fitted
from ptm_cli.tasks._tiles import round_up
image = load_image(paths[0])
x = segmenter.input_tensor(image, "full")
rows, cols = round_up(x.shape[1], GRID), round_up(x.shape[2], GRID)
tile_h, tile_w = _fitted(rows, DEFAULT_TILE, DEFAULT_OVERLAP), _fitted(cols, DEFAULT_TILE, DEFAULT_OVERLAP)
tile = x[:, :tile_h, :tile_w].contiguous()[None]
spent = []
with reused_heap():
    segmenter.logits(tile)  # warm-up
    for _ in range(rounds):
        start = time.perf_counter()
        segmenter.logits(tile)
        spent.append(time.perf_counter() - start)
print(json.dumps({"seconds": sorted(spent)[len(spent) // 2], "height": tile_h, "width": tile_w}))
"""
)

AGREEMENT_SCRIPT = (
    COMMON
    + """
from ptm_cli.nets.segmentation import pools_recorded
from ptm_cli.tasks._segmenter import DEFAULT_TILE, MaskSink, Upsampler
image = load_image(paths[0])
x = segmenter.input_tensor(image, "full")
size = (image.height, image.width)
with pools_recorded(segmenter.pools) as exact:  # the pooling layers' values at full resolution, from this pass
    whole = segmenter.upsampled(segmenter.logits(x[None])[0], size).mask
out = {}
for overlap in (int(v) for v in sys.argv[6:]):
    start = time.perf_counter()
    tiled = segmenter.segment(x, size, overlap=overlap).mask  # ptm's default: fitted tiles, pools from 1024
    seconds = time.perf_counter() - start
    sink = MaskSink(*size, segmenter.classes)
    segmenter._tiled(x, DEFAULT_TILE, overlap, exact, Upsampler(size, size, sink).push, None, fit=True)
    out[overlap] = [float((m == whole).mean()) for m in (tiled, sink.mask)] + [seconds]
print(json.dumps(out))
"""
)

FULL_SCRIPT = (
    COMMON
    + """
from ptm_cli.images.inputs import ImageInput
from ptm_cli.output.masks import class_mask_image
from ptm_cli.tasks.segment import segment_images
item = ImageInput(paths[0], path=Path(paths[0]))
start = time.perf_counter()
result = next(segment_images([item], segmenter, size="full"))
class_mask_image(result.mask, segmenter.class_names).save(Path(paths[0]).with_suffix(".mask.png"))
print(json.dumps({"seconds": time.perf_counter() - start, "peak_mib": peak()}))
"""
)


def make_photos(folder: Path) -> tuple[list[str], str, str]:
    """Four 1280x720 JPEGs, one 2048x1536 and one 4000x3000 JPEG from the sample photos."""
    from PIL import Image

    names = ("chelsea.png", "coffee.png", "rocket.jpg")
    small = []
    for i in range(4):
        with Image.open(ROOT / "data" / names[i % 3]) as source:
            image = source.convert("RGB").resize((1280, 720)).rotate(9 * i)
        path = folder / f"hd{i}.jpg"
        image.save(path, quality=90)
        small.append(str(path))
    with Image.open(ROOT / "data" / "rocket.jpg") as source:
        rocket = source.convert("RGB")
    middle, big = folder / "3mp.jpg", folder / "12mp.jpg"
    rocket.resize((2048, 1536)).save(middle, quality=90)
    rocket.resize((4000, 3000)).save(big, quality=90)
    return small, str(middle), str(big)


def seeded(model: str, folder: Path) -> str:
    path = folder / f"{model}.pth"
    if not path.exists():
        out = subprocess.run(
            [PYTHON, "-c", SEED_SCRIPT, model, str(path), str(ROOT / "tests")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
    return str(path)


def pipeline_rows(model: str, weights: str, photos: list[str], precisions: list[str], rounds: int) -> list[str]:
    rows = [
        "| precision | network alone (img/s) | ptm pipeline (img/s) | ptm / network |",
        "|---|---|---|---|",
    ]
    for precision in precisions:
        rates: dict[str, list[float]] = {"network": [], "ptm": []}
        for _ in range(rounds):  # alternate, so drift in the machine's speed reaches both
            for name, script in (("network", NETWORK_SCRIPT), ("ptm", PIPELINE_SCRIPT)):
                rates[name] += run_json(script, model, weights, precision, "1", *photos)["rates"]
        net, ptm = (statistics.median(rates[k]) for k in ("network", "ptm"))
        rows.append(f"| {precision} | {net:.3f} | {ptm:.3f} | {ptm / net:.2f} |")
    return rows


def full_size_rows(model: str, weights: str, big: str, folder: Path) -> list[str]:
    """``ptm segment --size full`` on the 12-megapixel photo, against one pass over one of its tiles."""
    started = time.perf_counter()
    argv = [PYTHON, "-m", "ptm_cli", "segment", "-m", model, "-w", weights, "--size", "full", "--mask-dir", "masks"]
    argv += ["-q", "-f", "jsonl", big]
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, cwd=folder)
        assert process.stdout is not None
        stdout = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)  # this process's own peak
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            raise RuntimeError(errors.read().decode(errors="replace")[-2000:])
    record = json.loads(stdout.splitlines()[-1])
    inside = run_json(FULL_SCRIPT, model, weights, "fp32", "1", big)
    tile = run_json(TILE_SCRIPT, model, weights, "fp32", "3", big)
    tile_mp = tile["height"] * tile["width"] / 1e6
    photo_mp = record["width"] * record["height"] / 1e6
    per_mp, tile_per_mp = inside["seconds"] / photo_mp, tile["seconds"] / tile_mp
    return [
        f"| `ptm segment --size full`, {record['width']}x{record['height']} photo, {model} | value |",
        "|---|---|",
        f"| whole process (start, load, decoding, pooling pass, tiles, mask PNG) | {seconds:.1f} s |",
        f"| peak memory (whole process) | {usage.ru_maxrss / 1024:.0f} MiB |",
        f"| after the model loaded: decoding, pooling pass, tiles, mask PNG | {inside['seconds']:.1f} s |",
        f"| one pass over one tile ({tile['width']}x{tile['height']}) | {tile['seconds']:.2f} s |",
        f"| seconds per megapixel: ptm after load / network, one tile | {per_mp:.2f} / {tile_per_mp:.2f} |",
        f"| ratio | {per_mp / tile_per_mp:.2f} |",
    ]


def agreement_rows(models: list[str], folder: Path, photo: str, overlaps: list[int]) -> list[str]:
    rows = [
        "| model | overlap | ptm's tiles (pooling from 768 px) | seams alone (pooling at full size) | seconds tiled |",
        "|---|---|---|---|---|",
    ]
    for model in models:
        weights = seeded(model, folder)
        result = run_json(AGREEMENT_SCRIPT, model, weights, "fp32", "1", photo, *map(str, overlaps))
        for o in overlaps:
            default, seams, seconds = result[str(o)]
            rows.append(f"| {model} | {o} | {100 * default:.2f} % | {100 * seams:.2f} % | {seconds:.0f} |")
    return rows


def run(quick: bool = False) -> list[str]:
    """The segment section of `make bench`, as Markdown lines."""
    from ptm_cli.nets.device import cpu_supports_bf16

    lines = [f"CPU: {cpu_model()}; load average before: {os.getloadavg()[0]:.2f}", ""]
    with tempfile.TemporaryDirectory(prefix="ptm-bench-segment-") as tmp:
        folder = Path(tmp)
        photos, middle, big = make_photos(folder)
        default = "deeplabv3_resnet101"
        weights = seeded(default, folder)
        precisions = ["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]
        lines += [f"DeepLabV3-ResNet101 on {len(photos)} 1280x720 JPEGs (run at 924x520), one per pass:", ""]
        lines += pipeline_rows(default, weights, photos[:2] if quick else photos, precisions, 1 if quick else 2)
        lines += ["", *full_size_rows(default, weights, big, folder), ""]
        lines += ["Tiled masks against one-pass masks (share of pixels with the same class; seconds tiled):", ""]
        models = ["lraspp_mobilenet_v3_large"] if quick else ["lraspp_mobilenet_v3_large", "fcn_resnet50", default]
        lines += agreement_rows(models, folder, middle, [64, 96, 128, 256])
    lines.append(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images, rounds and models")
    args = parser.parse_args()
    print("\n".join(run(quick=args.quick)))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
