"""Benchmark ptm against the book's loop, on this machine, in one sitting.

    make bench            # or: .venv/bin/python scripts/bench.py [--quick]

Everything is generated here (JPEGs made from the sample photos, a ResNet101
and a CycleGAN generator with seeded weights), so it needs no network. Each
measurement runs in its own subprocess; throughput excludes start-up and model
loading, which the cold single-image row measures on its own. Prints Markdown
tables: images/s and ratios against the book's loop measured in the same run
(fp32, bf16, and fp32 with --compile, whose compile time it reports with an
empty and a warm inductor cache), how far bf16's predictions move from fp32's,
cold start-up, and `ptm zebra` at --size 256 and --size full on a
12-megapixel photo with peak memory, the warm server (`ptm serve`): 20
one-file calls in a row with and without it, and 8 one-file clients at once
against 8 cold processes and one process given the 8 files, and `ptm batch`
on each engine against `ptm classify` on the same JPEGs, and the classify
pipeline against the network alone and a timm-style loop (bench_classify.py).
The full run takes about 20 minutes on 2 AVX-512 cores; --quick and --no-compile
shorten it, --serve-only runs only the server rows (about 3 minutes),
--only-batch only the `ptm batch` rows and --classify-only only the pipeline
rows (about 10 minutes), and --detect-only only `ptm detect` against the
network alone and torchvision's loop, with tiles and every detector's cost
(bench_detect.py, about 15 minutes), and --segment-only only `ptm segment`
against the network alone, at full resolution in tiles, and the agreement of
tiles with one pass (bench_segment.py, about 25 minutes), --embed-only only
`ptm embed -o` against the network alone (bench_embed.py, about 5 minutes),
--vectors-only only `ptm similar` and `ptm dupes` against faiss on
generated vectors (bench_vectors.py, about 10 minutes), and --video-only
only videos: `ptm zebra clip.mp4` against the generator alone, memory against
a clip's length, and `--every 1s`'s seeking (bench_video.py, about 15 minutes).
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
from typing import Any

import bench_classify
import bench_detect
import bench_embed
import bench_segment
import bench_translate
import bench_vectors
import bench_video
from benchkit import PYTHON, ROOT, cpu_model, run_python

BOOK_SCRIPT = """
import sys, time, torch
from PIL import Image
from torchvision import models, transforms
weights, device, images = sys.argv[1], sys.argv[2], sys.argv[3:]
preprocess = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
    transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
resnet = models.resnet101()
resnet.load_state_dict(torch.load(weights, weights_only=True))
resnet.eval().to(device)
start = time.perf_counter()
for path in images:
    img = Image.open(path)
    batch_t = torch.unsqueeze(preprocess(img), 0).to(device)
    out = resnet(batch_t)
    percentage = torch.nn.functional.softmax(out, dim=1)[0] * 100
    _, indices = torch.sort(out, descending=True)
    top5 = [(int(i), percentage[i].item()) for i in indices[0][:5]]
print(len(images) / (time.perf_counter() - start))
"""

PTM_SCRIPT = """
import json, sys, time
from pathlib import Path
from ptm_cli import tune_process
tune_process()  # as the ptm command does
from ptm_cli.cache.catalog import Catalog
from ptm_cli.tasks.classify import classify_images
from ptm_cli.images.inputs import ImageInput
from ptm_cli.tasks.classify import build_classifier
weights, device, precision, batch, compile_model, predictions = sys.argv[1:7]
images = [ImageInput(p, path=Path(p)) for p in sys.argv[7:]]
batch = int(batch)
entry = Catalog.load().resolve("resnet101", "IMAGENET1K_V1")
classifier = build_classifier(entry, weights_file=Path(weights), device=device, precision=precision,
                             resize=256, crop=224)
if compile_model == "1":
    classifier.compile()
start = time.perf_counter()
list(classify_images(images[:batch], classifier, batch_size=batch))  # warm-up: kernels, allocator, compiling
warm_up = time.perf_counter() - start
start = time.perf_counter()
results = list(classify_images(images, classifier, batch_size=batch))
rate = len(images) / (time.perf_counter() - start)
assert all(r.ok for r in results)
if predictions != "-":  # every class's probability, outside the timed run
    results = classify_images(images, classifier, batch_size=batch, top_k=1000)
    table = [sorted((p.index, p.probability) for p in r.predictions) for r in results]
    Path(predictions).write_text(json.dumps([[p for _, p in row] for row in table]))
print(json.dumps({"rate": rate, "warm_up": warm_up}))
"""


def wall(argv: list[str], runs: int) -> float:
    """Median wall time of a whole process, after one warm-up run."""
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=False, cwd=ROOT)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def wall_and_peak(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MiB) of one process, which must succeed."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    assert process.stderr is not None
    errors = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{argv} exited {process.returncode}: {errors.decode(errors='replace')[-2000:]}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


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
    """Seeded ResNet101 weights, batch-norm statistics measured on the sample photos, trained-like logit spread."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import calibrated_state_dict

    path = folder / "resnet101-seeded.pth"
    torch.save(calibrated_state_dict("resnet101", logit_std=6.0), path)
    return str(path)


def make_generator_weights(folder: Path) -> str:
    import torch

    from ptm_cli.nets.cyclegan import build_generator

    torch.manual_seed(0)
    path = folder / "generator-seeded.pth"
    torch.save(build_generator().state_dict(), path)
    return str(path)


def drift(fp32_file: Path, half_file: Path) -> list[dict[str, float]]:
    """Per image: whether fp16/bf16 keep fp32's top-1 and top-5, and how far the probabilities move."""
    rows = []
    for a, b in zip(json.loads(fp32_file.read_text()), json.loads(half_file.read_text()), strict=True):
        top5 = sorted(range(len(a)), key=lambda i: -a[i])[:5]
        rows.append(
            {
                "top1_prob": a[top5[0]],
                "top1_same": float(top5[0] == max(range(len(b)), key=lambda i: b[i])),
                "top5_same": float(top5 == sorted(range(len(b)), key=lambda i: -b[i])[:5]),
                "max_prob_drift": max(abs(p - q) for p, q in zip(a, b, strict=True)),
                "total_variation": sum(abs(p - q) for p, q in zip(a, b, strict=True)) / 2,
            }
        )
    return rows


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    return {
        "images": len(rows),
        "top1_agree": int(sum(d["top1_same"] for d in rows)),
        "top5_order_agree": int(sum(d["top5_same"] for d in rows)),
        "max_abs_prob_drift": max(d["max_prob_drift"] for d in rows),
        "mean_total_variation": statistics.fmean(d["total_variation"] for d in rows),
        "max_total_variation": max(d["total_variation"] for d in rows),
        "top1_prob_min": min(d["top1_prob"] for d in rows),
        "top1_prob_max": max(d["top1_prob"] for d in rows),
    }


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, bytes]:
    start = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, check=True, cwd=ROOT, env=env)
    return time.perf_counter() - start, out.stdout


def timed_together(commands: list[list[str]], env: dict[str, str]) -> tuple[float, list[bytes]]:
    """Wall time from starting all of ``commands`` at once until the last one exits."""
    start = time.perf_counter()
    processes = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env) for c in commands
    ]
    outputs = [p.communicate()[0] for p in processes]
    seconds = time.perf_counter() - start
    failed = [p.returncode for p in processes if p.returncode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(commands)} processes failed")
    return seconds, outputs


def classify_command(weights: str, device: str) -> list[str]:
    """The installed ``ptm classify`` with the bench's ResNet101 settings, records as JSON Lines."""
    ptm = str(Path(PYTHON).parent / "ptm")
    settings = ["-m", "resnet101", "-w", weights, "--resize", "256", "--crop", "224", "--device", device]
    return [ptm, "classify", *settings, "-f", "jsonl"]


def serve_rows(folder: Path, weights: str, images: list[str], device: str) -> dict[str, Any]:
    """One-file calls with a warm server and without, one after another and eight at once."""
    env = {**os.environ, "XDG_RUNTIME_DIR": str(folder / "run")}
    env.pop("PTM_SERVER", None)
    (folder / "run").mkdir(mode=0o700)
    classify = classify_command(weights, device)
    ptm = classify[0]
    one, eight = images[0], images[:8]
    figures: dict[str, Any] = {}
    cold = [timed([*classify, one], env) for _ in range(20)]
    subprocess.run([ptm, "serve", "start"], check=True, cwd=ROOT, env=env, capture_output=True)
    try:
        timed([*classify, "--server", "auto", one], env)  # loads the model into the server
        warm = [timed([*classify, "--server", "auto", one], env) for _ in range(20)]
        if {out for _, out in warm} != {cold[0][1]}:
            raise RuntimeError("the server's records differ from the process's own")
        figures["sequential cold median s"] = statistics.median(s for s, _ in cold)
        figures["sequential warm median s"] = statistics.median(s for s, _ in warm)
        figures["sequential speed-up"] = figures["sequential cold median s"] / figures["sequential warm median s"]
        status = json.loads(
            subprocess.run([ptm, "serve", "status", "-f", "jsonl"], check=True, env=env, capture_output=True).stdout
        )
        passes = status["forward_passes"]
        clients = [[*classify, "--server", "auto", f] for f in eight]
        figures["8 clients, warm server s"], _ = timed_together(clients, env)
        status = json.loads(
            subprocess.run([ptm, "serve", "status", "-f", "jsonl"], check=True, env=env, capture_output=True).stdout
        )
        figures["8 clients, forward passes"] = status["forward_passes"] - passes
    finally:
        subprocess.run([ptm, "serve", "stop"], cwd=ROOT, env=env, capture_output=True)
    figures["8 cold processes at once s"], _ = timed_together([[*classify, f] for f in eight], env)
    figures["one process, 8 files s"], _ = timed([*classify, *eight], env)
    return figures


def print_serve_rows(figures: dict[str, Any]) -> None:
    print("\n| 20 calls of `ptm classify one.jpg`, one after another | median wall s per call |\n|---|---:|")
    print(f"| cold process each time | {figures['sequential cold median s']:.2f} |")
    print(f"| `--server auto`, warm server | {figures['sequential warm median s']:.3f} |")
    print(f"| speed-up | {figures['sequential speed-up']:.0f}x |")
    print("\n| 8 one-file classifications at once | total wall s |\n|---|---:|")
    print(
        f"| 8 clients, `--server auto`, warm server ({figures['8 clients, forward passes']} forward passes) | "
        f"{figures['8 clients, warm server s']:.2f} |"
    )
    print(f"| 8 cold processes | {figures['8 cold processes at once s']:.2f} |")
    print(f"| one cold `ptm classify` of the 8 files | {figures['one process, 8 files s']:.2f} |")


def batch_rows(folder: Path, weights: str, count: int, device: str) -> list[tuple[str, float, float, float]]:
    """`ptm classify` and `ptm batch --engine local|ray|spark` as whole processes on the same JPEGs.

    Each pipeline runs twice as a whole process: on two shards' worth of
    images (so that both workers of a 2-CPU engine start) and on all of them.
    Throughput after start-up is what the extra images add,
    (count - small) / (wall(count) - wall(small)); start-up (process,
    imports, cluster, workers, model) is what is left of the small run's
    wall time once its images are paid for at that rate.
    """
    ptm = str(Path(PYTHON).parent / "ptm")
    shard = max(1, count // 8)
    small = 2 * shard
    images = make_images(folder, count, (640, 480))
    model = ["-m", "resnet101", "-w", weights, "--resize", "256", "--crop", "224", "--device", device]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}

    def command(pipeline: str, paths: list[str], out: Path) -> list[str]:
        if pipeline == "ptm classify":
            return [ptm, "classify", *model, "-f", "jsonl", *paths]
        engine = pipeline.rsplit(" ", 1)[-1]
        return [
            ptm,
            "batch",
            "classify",
            *model,
            "--engine",
            engine,
            "--shard-size",
            str(shard),
            "--output",
            str(out),
            *paths,
        ]

    rows = []
    for n, pipeline in enumerate(
        ("ptm classify", "ptm batch --engine local", "ptm batch --engine ray", "ptm batch --engine spark")
    ):
        walls = []
        for paths in (images[:small], images):
            out = folder / f"batch-{n}-{len(paths)}"
            started = time.perf_counter()
            done = subprocess.run(command(pipeline, paths, out), capture_output=True, cwd=ROOT, env=env, check=False)
            walls.append(time.perf_counter() - started)
            if done.returncode != 0:
                detail = done.stderr.decode(errors="replace")[-2000:]
                raise RuntimeError(f"{pipeline} exited {done.returncode}: {detail}")
        rate = (count - small) / (walls[1] - walls[0])
        startup = walls[0] - small / rate
        rows.append((pipeline, startup, rate, rate / rows[0][2] if rows else 1.0))
    return rows


def print_batch_rows(rows: list[tuple[str, float, float, float]], count: int) -> None:
    print(
        f"\n| {count} 640x480 JPEGs, ResNet101 fp32 | start-up s | images/s after start-up | vs ptm classify |"
        "\n|---|---:|---:|---:|"
    )
    for pipeline, startup, rate, ratio in rows:
        print(f"| `{pipeline}` | {startup:.1f} | {rate:.2f} | {ratio:.2f}x |")


def on_terminal(argv: list[str]) -> float:
    """Wall seconds of a process whose stderr is a pseudo-terminal (so the progress display is drawn)."""
    import pty

    master, slave = pty.openpty()
    start = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=slave, cwd=ROOT)
    os.close(slave)
    try:
        while True:  # drain the terminal, or the display would block on a full buffer
            try:
                if not os.read(master, 65536):
                    break
            except OSError:
                break
        process.wait(timeout=600)
    finally:
        os.close(master)
    return time.perf_counter() - start


def progress_rows(weights: str, images: list[str], device: str, pairs: int = 3) -> dict[str, float]:
    """`ptm classify` over the same images with the progress display drawn (stderr a terminal) and without."""
    argv = [*classify_command(weights, device), *images]
    shown, plain = [], []
    for _ in range(pairs):  # alternating, so drift in the machine's speed hits both alike
        shown.append(on_terminal(argv))
        plain.append(timed(argv, dict(os.environ))[0])
    return {
        "with display s": statistics.median(shown),
        "without s": statistics.median(plain),
        "ratio": statistics.median(shown) / statistics.median(plain),
    }


def print_progress_rows(figures: dict[str, float], count: int) -> None:
    print(f"\n| `ptm classify` of {count} images, whole process | median wall s |\n|---|---:|")
    print(f"| progress display drawn (stderr a terminal) | {figures['with display s']:.2f} |")
    print(f"| no display (stderr a pipe) | {figures['without s']:.2f} |")
    print(f"| ratio | {figures['ratio']:.3f} |")


def cpu_name() -> str:
    """The CPU's model name and whether it has native bf16, as `ptm doctor` reports them."""
    from ptm_cli.nets.device import cpu_supports_bf16

    return f"{cpu_model()}, {'native' if cpu_supports_bf16() else 'no native'} bf16"


def describe(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"device {device}: {torch.cuda.get_device_name(torch.device(device))}"
    return f"device {device}"


def use_this_checkout() -> None:
    """Make every process this script starts (the `ptm` script included) run this checkout's ptm.

    The `ptm` next to the Python is what users run; PYTHONPATH picks which
    ptm_cli it imports, so a second working tree measures its own code, not
    the installed one. The package is compiled first, as installing it
    does: with PYTHONDONTWRITEBYTECODE set, every call would otherwise
    compile ptm's modules again (about 17 ms here), which no installed copy
    pays. And every process runs under the OpenMP spin count that the ptm
    command sets for itself (``runtime.tuning.prepare_openmp``): the network
    alone and the timm-style loop as much as ptm. The scripts that call
    ptm's library tune their process first, as the ptm command does
    (``ptm_cli.tune_process``).
    """
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    # Every process, ptm's and the ones it is compared with, waits at OpenMP barriers as the ptm command does.
    from ptm_cli.runtime.tuning import prepare_openmp

    prepare_openmp()
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(ROOT / "ptm_cli")], check=True, capture_output=True)


def image_sets(folder: Path, quick: bool) -> dict[str, list[str]]:
    hd_count, big_count = (8, 4) if quick else (32, 16)
    big_size = (2000, 1500) if quick else (4000, 3000)
    return {
        f"{hd_count} x 1280x720": make_images(folder, hd_count, (1280, 720)),
        f"{big_count} x {big_size[0]}x{big_size[1]}": make_images(folder, big_count, big_size),
    }


def classify_section(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="ptm-bench-") as tmp:
        folder = Path(tmp)
        weights, sets = make_weights(folder), image_sets(folder, args.quick)
        rows = bench_classify.measure(PTM_SCRIPT, weights, sets, args.device, args.batch_size, args.rounds)
    print(f"machine: python {sys.version.split()[0]}; {describe(args.device)}; load average {os.getloadavg()[0]:.1f}")
    bench_classify.print_rows(rows, args.batch_size)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


VIDEO_QUICK = ["--minutes", "1", "--rounds", "1", "--frames", "20"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer and smaller images, for a smoke run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: where both sides run")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--serve-only", action="store_true", help="only the warm-server rows")
    parser.add_argument("--progress-only", action="store_true", help="only the progress-display rows")
    parser.add_argument(
        "--batch-images",
        type=int,
        default=240,
        help="JPEGs for the `ptm batch` rows (default 240: about 4 minutes on 2 cores)",
    )
    parser.add_argument("--only-batch", action="store_true", help="run only the `ptm batch` rows")
    parser.add_argument(
        "--translate-only",
        action="store_true",
        help="only `--size full` against the generator alone (about 10 minutes)",
    )
    parser.add_argument(
        "--classify-only", action="store_true", help="only the pipeline against the network alone and a timm-style loop"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of those four rows (default 3)")
    parser.add_argument(
        "--detect-only", action="store_true", help="only `ptm detect` (bench_detect.py; about 15 minutes)"
    )
    parser.add_argument(
        "--segment-only", action="store_true", help="only `ptm segment` (bench_segment.py; about 25 minutes)"
    )
    parser.add_argument("--embed-only", action="store_true", help="only `ptm embed` (bench_embed.py; about 5 minutes)")
    parser.add_argument(
        "--vectors-only", action="store_true", help="only `ptm similar` and `ptm dupes` (bench_vectors.py; 10 minutes)"
    )
    parser.add_argument(
        "--video-only", action="store_true", help="only videos: translate, memory, --every (bench_video.py; 15 minutes)"
    )
    args = parser.parse_args()
    use_this_checkout()
    if args.embed_only:
        print("\n".join(bench_embed.run(rounds=1 if args.quick else 3)))
        return
    if args.vectors_only:
        bench_vectors.main(["--rows", "100000", "--dupes-rows", "10000"] if args.quick else [])
        return
    if args.video_only:
        bench_video.main(VIDEO_QUICK if args.quick else [])
        return
    if args.detect_only:
        print("\n".join(bench_detect.run(quick=args.quick)))
        return
    if args.segment_only:
        print("\n".join(bench_segment.run(quick=args.quick)))
        return
    if args.translate_only:
        with tempfile.TemporaryDirectory(prefix="ptm-bench-") as tmp:
            figures = bench_translate.translate_rows(Path(tmp), make_generator_weights(Path(tmp)), quick=args.quick)
        print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}; {describe('cpu')}; {cpu_name()}")
        bench_translate.print_translate_rows(figures)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1))
        return
    if args.progress_only:
        with tempfile.TemporaryDirectory(prefix="ptm-bench-") as tmp:
            folder = Path(tmp)
            images = make_images(folder, 24, (1280, 720))
            figures = progress_rows(make_weights(folder), images, args.device)
        print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}; {describe(args.device)}")
        print_progress_rows(figures, len(images))
        return
    if args.serve_only:
        with tempfile.TemporaryDirectory(prefix="ptm-bench-") as tmp:
            folder = Path(tmp)
            figures = serve_rows(folder, make_weights(folder), make_images(folder, 8, (1280, 720)), args.device)
        load = os.getloadavg()[0]
        print(
            f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at the end; python {sys.version.split()[0]}; "
            f"{describe(args.device)}; ResNet101 at 224x224"
        )
        print_serve_rows(figures)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1))
        return
    if args.only_batch:
        with tempfile.TemporaryDirectory(prefix="ptm-bench-") as tmp:
            rows = batch_rows(Path(tmp), make_weights(Path(tmp)), args.batch_images, args.device)
        print(f"machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}; {describe(args.device)}")
        print_batch_rows(rows, args.batch_images)
        return
    device = args.device
    if args.classify_only:
        classify_section(args)
        return
    halves = ("bf16",) if device == "cpu" else ("fp16", "bf16")
    hd_count, big_count = (8, 4) if args.quick else (32, 16)
    big_size = (2000, 1500) if args.quick else (4000, 3000)
    ptm = str(Path(PYTHON).parent / "ptm")
    batch = str(args.batch_size)

    with tempfile.TemporaryDirectory(prefix="ptm-bench-") as tmp:
        folder = Path(tmp)
        weights = make_weights(folder)
        sets = {
            f"{hd_count} x 1280x720": make_images(folder, hd_count, (1280, 720)),
            f"{big_count} x {big_size[0]}x{big_size[1]}": make_images(folder, big_count, big_size),
        }
        rows: list[tuple[str, str, float, float]] = []
        figures: dict[str, Any] = {}
        drifts: dict[str, list[dict[str, float]]] = {}
        for n, (label, images) in enumerate(sets.items()):
            book = float(run_python(BOOK_SCRIPT, weights, device, *images))
            figures[f"book {label}"] = book
            rows.append((label, "book loop (fp32, one at a time)", book, 1.0))
            for precision in ("fp32", *halves):
                predictions = folder / f"{n}-{precision}.json"
                ours = json.loads(
                    run_python(PTM_SCRIPT, weights, device, precision, batch, "0", str(predictions), *images)
                )
                figures[f"ptm {precision} {label}"] = ours["rate"]
                rows.append((label, f"ptm {precision}, batch {batch}", ours["rate"], ours["rate"] / book))
            for half in halves:
                drifts.setdefault(half, []).extend(drift(folder / f"{n}-fp32.json", folder / f"{n}-{half}.json"))
        summaries = {half: summarise(rows_) for half, rows_ in drifts.items()}
        figures["drift from fp32"] = summaries

        compile_rows = []
        if not args.no_compile:
            label, images = next(iter(sets.items()))
            cache = {"TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor")}
            for cache_state in ("empty", "warm"):
                compiled = json.loads(
                    run_python(PTM_SCRIPT, weights, device, "fp32", batch, "1", "-", *images, env=cache)
                )
                eager = figures[f"ptm fp32 {label}"]
                gain = 1 / eager - 1 / compiled["rate"]  # seconds saved per image
                break_even = compiled["warm_up"] / gain if gain > 0 else float("inf")
                compile_rows.append((label, cache_state, compiled["warm_up"], compiled["rate"], eager, break_even))
                figures[f"ptm fp32 compiled, {cache_state} cache, {label}"] = compiled

        one = sets[next(iter(sets))][0]
        book_cold = wall([PYTHON, "-c", BOOK_SCRIPT, weights, device, one], runs=3)
        ptm_cold = wall(
            [
                ptm,
                "classify",
                "-m",
                "resnet101",
                "-w",
                weights,
                "--resize",
                "256",
                "--crop",
                "224",
                "--device",
                device,
                "-f",
                "jsonl",
                one,
            ],
            runs=3,
        )
        help_wall = wall([ptm, "--help"], runs=5)
        figures.update({"book cold": book_cold, "ptm cold": ptm_cold, "ptm --help": help_wall})

        generator = make_generator_weights(folder)
        photo = make_images(folder, 1, big_size)[0]
        translate_rows = []
        for size in ("256", "full"):
            out = folder / f"translated-{size}.png"
            seconds, peak = wall_and_peak(
                [ptm, "zebra", "-w", generator, "--size", size, "--device", device, "--force", "-o", str(out), photo]
            )
            translate_rows.append((size, seconds, peak))
            figures[f"translate --size {size}"] = {"seconds": seconds, "peak_mib": peak}
        figures["translate per megapixel"] = bench_translate.translate_rows(folder, generator, quick=args.quick)
        figures["serve"] = serve_rows(folder, weights, sets[next(iter(sets))], device)
        first_set = sets[next(iter(sets))]
        figures["progress"] = progress_rows(weights, first_set, device)

        pipeline = bench_classify.measure(PTM_SCRIPT, weights, sets, device, args.batch_size, args.rounds)
        figures["pipeline"] = pipeline

        batch_count = 24 if args.quick else args.batch_images
        scaling = batch_rows(folder, weights, batch_count, device)
        figures["batch"] = {p: {"startup_s": s, "images_per_s": r} for p, s, r, _ in scaling}
    detect_lines = bench_detect.run(quick=args.quick) if device == "cpu" else []
    segment_lines = bench_segment.run(quick=args.quick) if device == "cpu" else []

    print(f"machine: {os.cpu_count()} CPUs; torch threads default; python {sys.version.split()[0]}; {describe(device)}")
    print("\n| images | pipeline | images/s | vs book |\n|---|---|---:|---:|")
    for label, name, rate, ratio in rows:  # not `pipeline`: that holds the classify-pipeline rows printed below
        print(f"| {label} | {name} | {rate:.2f} | {ratio:.2f}x |")
    for half, d in summaries.items():
        print(
            f"\n{half} vs fp32 on {d['images']} images (fp32 top-1 probability {d['top1_prob_min']:.2f} to "
            f"{d['top1_prob_max']:.2f}): top-1 agrees on {d['top1_agree']}, top-5 order on {d['top5_order_agree']}; "
            f"largest change of one probability {d['max_abs_prob_drift']:.3f}; total variation distance mean "
            f"{d['mean_total_variation']:.3f}, max {d['max_total_variation']:.3f}"
        )
    if compile_rows:
        print("\n| images | --compile, inductor cache | compile s | images/s | eager images/s | pays off after |")
        print("|---|---|---:|---:|---:|---:|")
        for label, state, seconds, rate, eager, break_even in compile_rows:
            after = f"{break_even:.0f} images" if break_even != float("inf") else "never"
            print(f"| {label} | {state} | {seconds:.1f} | {rate:.2f} | {eager:.2f} | {after} |")
    print("\n| whole process | wall s | vs book |\n|---|---:|---:|")
    print(f"| book script, one 1280x720 JPEG | {book_cold:.2f} | 1.00x |")
    print(f"| `ptm classify one.jpg` | {ptm_cold:.2f} | {ptm_cold / book_cold:.2f}x |")
    print(f"| `ptm --help` | {help_wall:.3f} | |")
    print(f"\n| `ptm zebra` on one {big_size[0]}x{big_size[1]} JPEG | wall s | peak memory MiB |\n|---|---:|---:|")
    for size, seconds, peak in translate_rows:
        print(f"| --size {size} | {seconds:.1f} | {peak:.0f} |")
    bench_translate.print_translate_rows(figures["translate per megapixel"])
    bench_classify.print_rows(pipeline, args.batch_size)
    print_serve_rows(figures["serve"])
    print_progress_rows(figures["progress"], len(first_set))
    print_batch_rows(scaling, batch_count)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    if detect_lines:
        print("\n## ptm detect\n")
        print("\n".join(detect_lines))
    if segment_lines:
        print("\n## ptm segment\n")
        print("\n".join(segment_lines))
    if device == "cpu":
        print("\n## ptm embed\n")
        print("\n".join(bench_embed.run(rounds=1 if args.quick else 3)))
        print("\n## ptm similar and ptm dupes\n")
        sys.stdout.flush()
        bench_vectors.main(["--rows", "100000", "--dupes-rows", "10000"] if args.quick else [])
        print("\n## videos\n")
        sys.stdout.flush()
        bench_video.main(VIDEO_QUICK if args.quick else [])


if __name__ == "__main__":
    main()
