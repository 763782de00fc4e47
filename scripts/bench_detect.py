"""`ptm detect` against the network alone and torchvision's documented loop, tiles, and what each detector costs.

    .venv/bin/python scripts/bench.py --detect-only      # or this file directly; about 15 minutes on 2 cores

Everything is generated here: 1280x720 and 4000x3000 JPEGs from the sample
photos, and each detector with seeded weights whose classification biases
favour a few classes, so the detectors report boxes (trained weights find
other boxes; the work per image is the same up to the number of boxes). Each
measurement runs in its own process, after model load:

* the network alone: ptm's Detector on images decoded before the clock starts,
  in batches of ptm's default size (one size per batch), in the reused heap
  the pipeline runs in (``ptm_cli.runtime.tuning``);
* ptm's pipeline: ``detect_images`` over the files (decoding, batching, the
  forward passes, records);
* torchvision's documented loop: ``weights.transforms()`` and
  ``model([image])``, one image at a time, torchvision's own model, as a
  script of the documentation's runs it (glibc's heap as it comes).

They run in rounds (network, ptm, loop; again) and each figure is the median.
Then ``ptm detect --tile 1024`` on a 12-megapixel photo (whole process, peak
memory from the kernel), one whole-image pass and one tile pass timed alone,
and every catalog detector's images/s and peak memory on 1280x720 photos.
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
from ptm_cli.cache.catalog import Catalog
from ptm_cli.nets import architectures
model, path = sys.argv[1:3]
entry = Catalog.load().resolve(model)
torch.manual_seed(0)
state = architectures.factory(entry)().state_dict()
classes = entry.num_classes or 91
for key, value in state.items():
    if key.endswith(("cls_score.weight", "cls_logits.weight")):
        value.mul_(5)
    final = key.endswith(("cls_score.bias", "cls_logits.bias")) or (
        "classification_head.module_list" in key and key.endswith(".bias") and classes == 91)
    if final and value.numel() % classes == 0:
        rows = value.view(-1, classes)
        rows[:, 1] += 3.0
        if classes > 18:
            rows[:, 18] += 2.0
torch.save(state, path)
print("ok")
"""

COMMON = """
import json, sys, time, resource
from pathlib import Path
from ptm_cli import tune_process
tune_process()
import torch
from ptm_cli.cache.catalog import Catalog
from ptm_cli.tasks._detector import Limits, build_detector
from ptm_cli.images.decode import load_image
from ptm_cli.images.transforms import pixels_chw
model, weights, precision, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
paths = sys.argv[5:]
entry = Catalog.load().resolve(model)
detector = build_detector(entry, weights_file=Path(weights), precision=precision, progress=False)
limits = Limits(min_score=0.5, max_detections=100)
"""

NETWORK_SCRIPT = (
    COMMON
    + """
from ptm_cli.runtime.tuning import reused_heap
images = [pixels_chw(load_image(p)) for p in paths]
times = []
with reused_heap():  # the heap the pipeline runs in: only the forward passes differ
    detector.detect_each(torch.stack(images[:2]), limits)  # warm-up
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(0, len(images), 2):
            detector.detect_each(torch.stack(images[i:i + 2]), limits)
        times.append(len(images) / (time.perf_counter() - start))
print(json.dumps({"rates": times, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
)

PIPELINE_SCRIPT = (
    COMMON
    + """
from ptm_cli.images.inputs import ImageInput
from ptm_cli.tasks.detect import detect_images
items = [ImageInput(p, path=Path(p)) for p in paths]
list(detect_images(items[:2], detector, limits=limits))  # warm-up
times = []
for _ in range(rounds):
    start = time.perf_counter()
    found = list(detect_images(items, detector, limits=limits, batch_size=2))
    times.append(len(items) / (time.perf_counter() - start))
    assert all(r.ok for r in found)
print(json.dumps({"rates": times, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
)

LOOP_SCRIPT = """
import json, sys, time, resource
import torch
import torchvision.models as tvm
from PIL import Image
model, weights, precision, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
paths = sys.argv[5:]
variant = tvm.get_model_weights(model).DEFAULT
state = torch.load(weights, weights_only=True)
type(variant).get_state_dict = lambda self, *args, **kwargs: state  # the one download, answered here
net = tvm.get_model(model, weights=variant).eval()
preprocess = variant.transforms()
dtype = torch.bfloat16 if precision == "bf16" else None
def run(path):
    img = Image.open(path).convert("RGB")
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        return net([preprocess(img)])
run(paths[0])
times = []
for _ in range(rounds):
    start = time.perf_counter()
    for path in paths:
        run(path)
    times.append(len(paths) / (time.perf_counter() - start))
print(json.dumps({"rates": times, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

TILE_SCRIPT = (
    COMMON
    + """
image = pixels_chw(load_image(paths[0]))
whole = image
tile = image[:, :1024, :1024]
detector._raw([tile], limits)  # warm-up
result = {}
for name, view in (("whole", whole), ("tile", tile)):
    spent = []
    for _ in range(rounds):
        start = time.perf_counter()
        detector._raw([view], limits)
        spent.append(time.perf_counter() - start)
    result[name] = sorted(spent)[len(spent) // 2]
print(json.dumps(result))
"""
)


def make_photos(folder: Path) -> tuple[list[str], str]:
    """Eight 1280x720 JPEGs and one 4000x3000 JPEG from the sample photos."""
    from PIL import Image

    names = ("chelsea.png", "coffee.png", "rocket.jpg")
    small = []
    for i in range(8):
        with Image.open(ROOT / "data" / names[i % 3]) as source:
            image = source.convert("RGB").resize((1280, 720)).rotate(9 * i)
        path = folder / f"hd{i}.jpg"
        image.save(path, quality=90)
        small.append(str(path))
    with Image.open(ROOT / "data" / "rocket.jpg") as source:
        big = source.convert("RGB").resize((4000, 3000))
    big_path = folder / "12mp.jpg"
    big.save(big_path, quality=90)
    return small, str(big_path)


def seeded(model: str, folder: Path) -> str:
    path = folder / f"{model}.pth"
    if not path.exists():
        run_json_line(SEED_SCRIPT, model, str(path))
    return str(path)


def run_json_line(code: str, *args: str) -> str:
    out = subprocess.run([PYTHON, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return out.stdout.strip().splitlines()[-1]


def pipeline_rows(model: str, weights: str, photos: list[str], precisions: list[str], rounds: int) -> list[str]:
    rows = [
        "| precision | network alone (img/s) | ptm pipeline (img/s) | torchvision loop (img/s) "
        "| ptm / network | ptm / loop |",
        "|---|---|---|---|---|---|",
    ]
    for precision in precisions:
        rates: dict[str, list[float]] = {"network": [], "ptm": [], "loop": []}
        for _ in range(rounds):  # alternate, so drift in the machine's speed reaches all three
            for name, script in (("network", NETWORK_SCRIPT), ("ptm", PIPELINE_SCRIPT), ("loop", LOOP_SCRIPT)):
                rates[name] += run_json(script, model, weights, precision, "1", *photos)["rates"]
        net, ptm, loop = (statistics.median(rates[k]) for k in ("network", "ptm", "loop"))
        rows.append(f"| {precision} | {net:.3f} | {ptm:.3f} | {loop:.3f} | {ptm / net:.2f} | {ptm / loop:.2f} |")
    return rows


def tile_rows(model: str, weights: str, big: str, folder: Path) -> list[str]:
    started = time.perf_counter()
    argv = [PYTHON, "-m", "ptm_cli", "detect", "-m", model, "-w", weights, "--tile", "1024", "-q", "-f", "jsonl", big]
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, cwd=folder)
        assert process.stdout is not None
        stdout = process.stdout.read()
        # This process's own peak (wait4), not the largest of every child so far (RUSAGE_CHILDREN's).
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            errors.seek(0)
            raise RuntimeError(errors.read().decode(errors="replace")[-2000:])
    process.returncode = os.waitstatus_to_exitcode(status)
    peak = usage.ru_maxrss / 1024
    found = len(json.loads(stdout.splitlines()[-1])["detections"])
    passes = run_json(TILE_SCRIPT, model, weights, "fp32", "3", big)
    # Per megapixel of what the model computes on: the whole photo is resized to 1067x800, a tile to 800x800.
    whole_mp, tile_mp = 1067 * 800 / 1e6, 800 * 800 / 1e6
    ratio = (passes["tile"] / tile_mp) / (passes["whole"] / whole_mp)
    return [
        "| `ptm detect --tile 1024`, 4000x3000 photo | value |",
        "|---|---|",
        f"| whole process (21 passes: the photo and 20 tiles) | {seconds:.1f} s |",
        f"| peak memory (whole process) | {peak:.0f} MiB |",
        f"| detections kept | {found} |",
        f"| one whole-image pass (at 1067x800) | {passes['whole']:.2f} s |",
        f"| one tile pass (1024x1024, at 800x800) | {passes['tile']:.2f} s |",
        f"| tile / whole, per megapixel the model sees | {ratio:.2f} |",
    ]


def cost_rows(models: list[str], folder: Path, photos: list[str]) -> list[str]:
    rows = ["| detector | img/s (1280x720, fp32) | peak memory |", "|---|---|---|"]
    for model in models:
        weights = seeded(model, folder)
        result = run_json(NETWORK_SCRIPT, model, weights, "fp32", "1", *photos[:4])
        rows.append(f"| {model} | {result['rates'][0]:.2f} | {result['peak_mib']:.0f} MiB |")
    return rows


def run(quick: bool = False) -> list[str]:
    """The detect section of `make bench`, as Markdown lines."""
    from ptm_cli.cache.catalog import Catalog
    from ptm_cli.nets.device import cpu_supports_bf16

    lines = [f"CPU: {cpu_model()}; load average before: {os.getloadavg()[0]:.2f}", ""]
    with tempfile.TemporaryDirectory(prefix="ptm-bench-detect-") as tmp:
        folder = Path(tmp)
        photos, big = make_photos(folder)
        default = "fasterrcnn_resnet50_fpn_v2"
        weights = seeded(default, folder)
        precisions = ["fp32", "bf16"] if cpu_supports_bf16() else ["fp32"]
        lines += [f"Faster R-CNN v2 on {len(photos)} 1280x720 JPEGs, batches of 2:", ""]
        lines += pipeline_rows(default, weights, photos if not quick else photos[:4], precisions, 1 if quick else 2)
        lines += ["", *tile_rows(default, weights, big, folder), ""]
        models = sorted({e.model for e in Catalog.load().entries("detect")})
        lines += cost_rows(models, folder, photos)
    lines.append(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds")
    args = parser.parse_args()
    print("\n".join(run(quick=args.quick)))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
