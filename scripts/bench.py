"""Benchmark ptm against the book's loop, on this machine, in one sitting.

    make bench            # or: .venv/bin/python scripts/bench.py [--quick]

Everything is generated here (JPEGs made from the sample photos, a ResNet101
with seeded weights), so it needs no network. Each measurement runs in its own
subprocess; throughput excludes start-up and model loading, which the cold
single-image row measures on its own. Prints a Markdown table of images/s and
ratios against the book's loop measured in the same run.
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

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

BOOK_SCRIPT = """
import sys, time, torch
from PIL import Image
from torchvision import models, transforms
weights, images = sys.argv[1], sys.argv[2:]
preprocess = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
    transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
resnet = models.resnet101()
resnet.load_state_dict(torch.load(weights, weights_only=True))
resnet.eval()
start = time.perf_counter()
for path in images:
    img = Image.open(path)
    batch_t = torch.unsqueeze(preprocess(img), 0)
    out = resnet(batch_t)
    percentage = torch.nn.functional.softmax(out, dim=1)[0] * 100
    _, indices = torch.sort(out, descending=True)
    top5 = [(int(i), percentage[i].item()) for i in indices[0][:5]]
print(len(images) / (time.perf_counter() - start))
"""

PTM_SCRIPT = """
import sys, time
from pathlib import Path
from ptm_cli.catalog import Catalog
from ptm_cli.classify import Classifier, ImageInput, classify_images
weights, precision, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
images = [ImageInput(p, path=Path(p)) for p in sys.argv[4:]]
entry = Catalog.load().resolve("resnet101", "IMAGENET1K_V1")
classifier = Classifier.load(entry, weights_file=Path(weights), device="cpu", precision=precision,
                             resize=256, crop=224)
list(classify_images(images[:batch], classifier, batch_size=batch))  # warm-up: kernels, allocator
start = time.perf_counter()
results = list(classify_images(images, classifier, batch_size=batch))
assert all(r.ok for r in results)
print(len(images) / (time.perf_counter() - start))
"""


def run_python(code: str, *args: str) -> float:
    out = subprocess.run([PYTHON, "-c", code, *args], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def wall(argv: list[str], runs: int) -> float:
    """Median wall time of a whole process, after one warm-up run."""
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=False, cwd=ROOT)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_images(folder: Path, count: int, size: tuple[int, int]) -> list[str]:
    from PIL import Image, ImageEnhance

    sources = [Image.open(ROOT / "data" / n).convert("RGB") for n in ("chelsea.png", "coffee.png", "rocket.jpg")]
    paths = []
    for i in range(count):
        image = sources[i % len(sources)].resize(size, Image.Resampling.BICUBIC)
        image = ImageEnhance.Brightness(image).enhance(0.8 + 0.02 * i)
        path = folder / f"{size[0]}x{size[1]}_{i:03}.jpg"
        image.save(path, quality=90)
        paths.append(str(path))
    return paths


def make_weights(folder: Path) -> str:
    import torch
    import torchvision

    torch.manual_seed(0)
    path = folder / "resnet101-seeded.pth"
    torch.save(torchvision.models.resnet101().state_dict(), path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer images, for a smoke run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    hd_count, big_count = (8, 4) if args.quick else (32, 16)

    with tempfile.TemporaryDirectory(prefix="ptm-bench-") as tmp:
        folder = Path(tmp)
        weights = make_weights(folder)
        sets = {
            f"{hd_count} x 1280x720": make_images(folder, hd_count, (1280, 720)),
            f"{big_count} x 4000x3000": make_images(folder, big_count, (4000, 3000)),
        }
        rows, figures = [], {}
        for label, images in sets.items():
            book = run_python(BOOK_SCRIPT, weights, *images)
            figures[f"book {label}"] = book
            rows.append((label, "book loop (fp32, one at a time)", book, 1.0))
            for precision in ("fp32", "bf16"):
                ours = run_python(PTM_SCRIPT, weights, precision, str(args.batch_size), *images)
                figures[f"ptm {precision} {label}"] = ours
                rows.append((label, f"ptm {precision}, batch {args.batch_size}", ours, ours / book))

        one = sets[next(iter(sets))][0]
        book_cold = wall([PYTHON, "-c", BOOK_SCRIPT, weights, one], runs=3)
        ptm = str(Path(PYTHON).parent / "ptm")
        ptm_cold = wall([ptm, "classify", "-m", "resnet101", "-w", weights, "--resize", "256", "--crop", "224",
                         "-f", "jsonl", one], runs=3)  # fmt: skip
        help_wall = wall([ptm, "--help"], runs=5)
        figures.update({"book cold": book_cold, "ptm cold": ptm_cold, "ptm --help": help_wall})

    print(f"machine: {os.cpu_count()} CPUs; torch threads default; python {sys.version.split()[0]}")
    print("\n| images | pipeline | images/s | vs book |\n|---|---|---:|---:|")
    for label, pipeline, rate, ratio in rows:
        print(f"| {label} | {pipeline} | {rate:.2f} | {ratio:.2f}x |")
    print("\n| whole process | wall s | vs book |\n|---|---:|---:|")
    print(f"| book script, one 1280x720 JPEG | {book_cold:.2f} | 1.00x |")
    print(f"| `ptm classify one.jpg` | {ptm_cold:.2f} | {ptm_cold / book_cold:.2f}x |")
    print(f"| `ptm --help` | {help_wall:.3f} | |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
