"""The classify pipeline against the network alone and against a timm-style loop, in one sitting.

Imported by ``scripts/bench.py`` (``--classify-only`` runs just this section).
For each image set and precision (fp32 everywhere; bf16 where the CPU has it
natively, fp16 and bf16 on CUDA) four things are timed, each in its own
subprocess, after model load:

* the network alone: ptm's model placed as ptm places it (channels_last), the
  same batch size and autocast, on tensors preprocessed before the clock
  starts, so only the forward passes are timed (inside ``ptm_cli.runtime.tuning``'s
  reused heap, as the pipeline runs);
* the network alone again, with two idle threads that hold OpenMP teams of
  their own. With more OpenMP threads than cores, libgomp sleeps at its
  barriers instead of spinning, as ptm makes it do while its process does
  not get its cores; where other processes compete for them, that alone
  changes the network's pace several times over, so this row tells the
  pipeline's own cost apart from it;
* ptm's pipeline, timed by the caller's script (decoding, preprocessing,
  batching, the forward passes, top-k);
* a timm-style reference loop, as timm's inference script runs it: timm's own
  ResNet101 with the same weights, timm's eval transforms for that model
  (the resolved data config through ``create_transform``), a torch DataLoader
  with worker processes (2, its default), channels_last and autocast.

The four run in rounds (network, network with teams, ptm, timm; again...)
so that drift in the machine's speed reaches them alike; each figure is the
median over the rounds, with the spread beside it, and each ratio the
median of the rounds' own ratios. timm comes from
the ``bench`` extra; without it the timm rows are left out, with a note.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
from typing import Any

from benchkit import cpu_model, run_json

NETWORK_SCRIPT = """
import json, sys, time
from pathlib import Path
from ptm_cli import tune_process
tune_process()  # the reused heap below is the one the pipeline runs in
import torch
from ptm_cli.cache.catalog import Catalog
from ptm_cli.tasks.classify import build_classifier
from ptm_cli.images.transforms import preprocess
from ptm_cli.images.decode import load_image
weights, device, precision, batch, teams = sys.argv[1:6]
paths, batch = sys.argv[6:], int(batch)
if teams == "1":  # two idle threads that hold OpenMP teams, as ptm's decoding threads do
    from concurrent.futures import ThreadPoolExecutor
    helpers = ThreadPoolExecutor(2)
    list(helpers.map(lambda _: torch.ones(1 << 18).div_(3), range(2)))
entry = Catalog.load().resolve("resnet101", "IMAGENET1K_V1")
classifier = build_classifier(entry, weights_file=Path(weights), device=device, precision=precision,
                              resize=256, crop=224)
tensors = [preprocess(load_image(p, min_short_side=512), classifier.preprocess) for p in paths]
batches = [torch.stack(tensors[i:i + batch]).to(classifier.device).contiguous(memory_format=torch.channels_last)
           for i in range(0, len(tensors), batch)]
model, kind, dtype = classifier.model, classifier.device.type, classifier.precision.dtype
amp = classifier.precision.autocast

def forward(x):
    with torch.inference_mode(), torch.autocast(kind, dtype=dtype, enabled=amp):
        return model(x).float()

from ptm_cli.runtime.tuning import reused_heap
with reused_heap():  # the allocator setting the pipeline runs under
    forward(batches[0])  # warm-up, as the pipeline's own first batch
    if kind == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for x in batches:
        forward(x)
    if kind == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
print(json.dumps({"rate": len(paths) / seconds}))
"""

TIMM_SCRIPT = """
import json, sys, time
import timm, torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
weights, device, precision, batch = sys.argv[1:5]
paths, batch, device = sys.argv[5:], int(batch), torch.device(sys.argv[2])
dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
model = timm.create_model("resnet101", pretrained=False)
model.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
model = model.eval().to(device).to(memory_format=torch.channels_last)
config = resolve_data_config({}, model=model)
transform = create_transform(**config)

class Files(torch.utils.data.Dataset):
    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with open(self.files[i], "rb") as f:
            return transform(Image.open(f).convert("RGB")), 0

def run(files):
    loader = torch.utils.data.DataLoader(Files(files), batch_size=batch, num_workers=2)
    top = []
    with torch.no_grad():
        for x, _ in loader:
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=precision != "fp32"):
                logits = model(x)
            top.append(logits.float().softmax(dim=1).topk(5).indices.cpu())
    return top

run(paths[:batch])  # warm-up: workers, kernels, allocator
start = time.perf_counter()
run(paths)
rate = len(paths) / (time.perf_counter() - start)
print(json.dumps({"rate": rate, "transform": str(config)}))
"""


def timm_available() -> bool:
    return importlib.util.find_spec("timm") is not None


def precisions(device: str) -> tuple[str, ...]:
    """fp32, plus the half precisions this device runs natively (ptm's device module decides for the CPU)."""
    if device.startswith("cuda"):
        return ("fp32", "fp16", "bf16")
    from ptm_cli.nets.device import cpu_supports_bf16

    return ("fp32", "bf16") if cpu_supports_bf16() else ("fp32",)


def measure(
    ptm_script: str, weights: str, sets: dict[str, list[str]], device: str, batch: int, rounds: int
) -> list[dict[str, Any]]:
    """One row per image set and precision: network-only, ptm and timm-style images/s over ``rounds`` rounds."""
    with_timm = timm_available()
    rows = []
    for label, images in sets.items():
        for precision in precisions(device):
            rates: dict[str, list[float]] = {"network": [], "network, teams": [], "ptm": [], "timm": []}
            for _ in range(rounds):
                common = (weights, device, precision, str(batch))
                rates["network"].append(run_json(NETWORK_SCRIPT, *common, "0", *images)["rate"])
                rates["network, teams"].append(run_json(NETWORK_SCRIPT, *common, "1", *images)["rate"])
                ptm = run_json(ptm_script, weights, device, precision, str(batch), "0", "-", *images)
                rates["ptm"].append(ptm["rate"])
                if with_timm:
                    rates["timm"].append(run_json(TIMM_SCRIPT, *common, *images)["rate"])
            row: dict[str, Any] = {"images": label, "precision": precision, "rounds": rounds}
            for name, values in rates.items():
                if values:
                    row[name] = statistics.median(values)
                    row[f"{name} spread"] = (min(values), max(values))
            # Per-round ratios, so drift between rounds does not enter them.
            for name in ("network", "network, teams"):
                row[f"ptm / {name}"] = statistics.median(p / n for p, n in zip(rates["ptm"], rates[name], strict=True))
            if with_timm:
                row["ptm / timm"] = statistics.median(p / t for p, t in zip(rates["ptm"], rates["timm"], strict=True))
            rows.append(row)
    return rows


def _cell(row: dict[str, Any], name: str) -> str:
    if name not in row:
        return "-"
    low, high = row[f"{name} spread"]
    return f"{row[name]:.2f} ({low:.2f}-{high:.2f})"


def print_rows(rows: list[dict[str, Any]], batch: int) -> None:
    from ptm_cli.nets.device import cpu_supports_bf16

    bf16 = "native bf16" if cpu_supports_bf16() else "no native bf16"
    rounds = rows[0]["rounds"] if rows else 0
    print(
        f"\nResNet101, batch {batch}, {os.cpu_count()} CPUs ({cpu_model()}, {bf16}); images/s after model load, "
        f"median of {rounds} rounds (min-max); ratios are medians of per-round ratios"
    )
    print(
        "\n| images | precision | network alone | network, OpenMP asleep | ptm pipeline | ptm / network "
        "| ptm / network asleep | timm-style loop | ptm / timm |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for row in rows:
        timm_ratio = f"{row['ptm / timm']:.2f}x" if "ptm / timm" in row else "-"
        print(
            f"| {row['images']} | {row['precision']} | {_cell(row, 'network')} | {_cell(row, 'network, teams')} | "
            f"{_cell(row, 'ptm')} | {row['ptm / network']:.2f} | {row['ptm / network, teams']:.2f} | "
            f"{_cell(row, 'timm')} | {timm_ratio} |"
        )
    if not timm_available():
        print("\n(timm is not installed, so the timm-style rows are left out: pip install -e '.[bench]')")
