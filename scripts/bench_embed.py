"""`ptm embed` against the network alone, and a worked estimate for a 10-million-photo library.

    .venv/bin/python scripts/bench_embed.py [--rounds 3] [--images 24]   # or scripts/bench.py --embed-only

ResNet-50 (the default model) with seeded weights, on 1280x720 JPEGs made
from the sample photos, batch 8, each measurement in its own process after
model load:

* the network alone: ptm's Embedder (the network without its head, placed
  as ptm places it, channels_last and autocast) on tensors decoded and
  preprocessed before the clock starts, in the reused heap the pipeline runs in;
* ptm's pipeline as ``ptm embed -o INDEX`` runs it: each file read once,
  hashed (sha256), decoded, preprocessed, the forward passes, the vectors
  normalised and written into a ``.npy`` index that is published at the end.

They alternate (network, ptm; again) and each ratio is the median of the
rounds' own ratios. fp32 everywhere; bf16 where the CPU has it natively.
The search and duplicate figures are ``scripts/bench_vectors.py``'s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchkit import ROOT, cpu_model, run_json

COMMON = """
import json, sys, time
from pathlib import Path
from ptm_cli import tune_process
tune_process()
import torch
from ptm_cli.tasks.base import ModelOptions
from ptm_cli.tasks.embed import load_embedder
model_name, weights, precision, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
paths = sys.argv[5:]
embedder = load_embedder(ModelOptions(model_name, weights, precision=precision), progress=False)
"""

NETWORK_SCRIPT = (
    COMMON
    + """
from ptm_cli.images.decode import load_image
from ptm_cli.images.transforms import preprocess
from ptm_cli.runtime.tuning import reused_heap
tensors = [preprocess(load_image(p, min_short_side=512), embedder.preprocess) for p in paths]
batches = [torch.stack(tensors[i:i + batch]).contiguous(memory_format=torch.channels_last)
           for i in range(0, len(tensors), batch)]
model, precision_ = embedder.model, embedder.precision

def forward(x):
    with torch.inference_mode(), torch.autocast("cpu", dtype=precision_.dtype, enabled=precision_.autocast):
        return model(x)

with reused_heap():
    forward(batches[0])  # warm-up
    start = time.perf_counter()
    for b in batches:
        forward(b)
    rate = len(tensors) / (time.perf_counter() - start)
print(json.dumps({"rate": rate}))
"""
)

PTM_SCRIPT = (
    COMMON
    + """
import tempfile
from ptm_cli.images.inputs import ImageInput
from ptm_cli.tasks._embed_index import write_index
from ptm_cli.tasks._embedder import embed_images
items = [ImageInput(p, path=Path(p)) for p in paths]
run = lambda chosen: embed_images(chosen, embedder, batch_size=batch, workers=2)
with tempfile.TemporaryDirectory() as folder:
    for _ in write_index(Path(folder) / "w.npy", embedder, items[:batch], update=False, dtype=None, replace=True,
                         run=run):
        pass  # warm-up, as the network's
    index = Path(folder) / "photos.npy"
    start = time.perf_counter()
    for _ in write_index(index, embedder, items, update=False, dtype=None, replace=True, run=run):
        pass
    rate = len(items) / (time.perf_counter() - start)
    size = index.stat().st_size
print(json.dumps({"rate": rate, "index_bytes": size}))
"""
)


CLASSIFY_SCRIPT = (
    COMMON
    + """
from ptm_cli.images.inputs import ImageInput
from ptm_cli.tasks.classify import classify_images, load_classifier
classifier = load_classifier(ModelOptions(model_name, weights, precision=precision), progress=False)
items = [ImageInput(p, path=Path(p)) for p in paths]
list(classify_images(items[:batch], classifier, batch_size=batch))  # warm-up
start = time.perf_counter()
list(classify_images(items, classifier, batch_size=batch))
print(json.dumps({"rate": len(items) / (time.perf_counter() - start)}))
"""
)


def make_inputs(folder: Path, count: int, model: str) -> tuple[str, list[str]]:
    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from bench import make_images
    from helpers import calibrated_state_dict

    weights = folder / f"{model}-seeded.pth"
    torch.save(calibrated_state_dict(model, logit_std=6.0), weights)
    return str(weights), make_images(folder, count, (1280, 720))


def run(*, rounds: int = 3, images: int = 24, batch: int = 8, model: str = "resnet50") -> list[str]:
    from ptm_cli.nets.device import cpu_supports_bf16

    lines = []
    load = os.getloadavg()[0]
    precisions = ("fp32", "bf16") if cpu_supports_bf16() else ("fp32",)
    with tempfile.TemporaryDirectory(prefix="ptm-bench-embed-") as tmp:
        weights, paths = make_inputs(Path(tmp), images, model)
        rows = []
        for precision in precisions:
            network, ptm, ratios, classify, classify_ratios = [], [], [], [], []
            index_bytes = 0
            for _ in range(rounds):
                common = (model, weights, precision, str(batch), *paths)
                n = run_json(NETWORK_SCRIPT, *common)["rate"]
                p = run_json(PTM_SCRIPT, *common)
                c = run_json(CLASSIFY_SCRIPT, *common)["rate"]
                network.append(n)
                ptm.append(p["rate"])
                classify.append(c)
                ratios.append(p["rate"] / n)
                classify_ratios.append(c / n)
                index_bytes = p["index_bytes"]
            rows.append(
                (
                    precision,
                    statistics.median(network),
                    statistics.median(ptm),
                    statistics.median(ratios),
                    statistics.median(classify),
                    statistics.median(classify_ratios),
                )
            )
    bf16 = "native bf16" if cpu_supports_bf16() else "no native bf16"
    lines.append(
        f"{model}, {images} x 1280x720 JPEG, batch {batch}, {os.cpu_count()} CPUs ({cpu_model()}, {bf16}); "
        f"images/s after model load, median of {rounds} rounds; load average {load:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at the end"
    )
    lines.append("")
    lines.append(
        "| precision | network alone | ptm embed -o INDEX.npy | embed / network | ptm classify, same model "
        "| classify / network |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|")
    for precision, n, p, r, c, cr in rows:
        lines.append(f"| {precision} | {n:.2f} | {p:.2f} | {r:.2f} | {c:.2f} | {cr:.2f} |")
    fastest = max(row[2] for row in rows)
    per_image = index_bytes / images
    hours = 10_000_000 / fastest / 3600
    lines.append("")
    lines.append(
        f"Estimate, not a measurement: 10,000,000 photos at {fastest:.1f} images/s per node like this one take "
        f"{hours:,.0f} node-hours (about {hours / 100:,.1f} hours on 100 such Ray workers); the {model} index "
        f"is {per_image * 10_000_000 / 2**30:,.1f} GiB of float32 vectors ({per_image / 2:,.0f} bytes a photo "
        "with --dtype float16)."
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--model", default="resnet50", help="resnet50 (embed's default) or resnet101 (classify's)")
    args = parser.parse_args()
    print("\n".join(run(rounds=args.rounds, images=args.images, model=args.model)))


if __name__ == "__main__":
    main()
