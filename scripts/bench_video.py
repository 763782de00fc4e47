"""Videos: ptm translate against the generator alone, memory against a clip's length, and --every's seeking.

Not a test: it builds its clips with PyAV in a temporary folder (a moving colour pattern, H.264,
a keyframe every second as phones write them) and measures, in one run:

a. ``ptm zebra clip.mp4 -o out.mp4 --size 256`` on a 720p clip (in this process, through the
   command line's own code) against the generator alone (:meth:`Translator.translate`) on the same
   frames, decoded beforehand: frames per second, and their ratio. Both run a seeded 64-filter
   generator; the two sides alternate, best of ``--rounds``.
b. the peak memory (``ru_maxrss``) of ``ptm zebra`` as a process of its own, on a short clip and on
   one ten times longer (small frames and ``--size 64``, so the run is quick).
c. the frames ``--every 1s`` takes of a long 1080p clip (``--minutes``, default 10: one minute encoded,
   then repeated by copying its packets): read by ptm
   (seeking to the keyframe before each wanted frame and decoding forward), against decoding
   every frame and converting every one (a plain loop over the file), and against decoding every
   frame but converting only those taken (ptm with seeking turned off).

    .venv/bin/python scripts/bench_video.py                 # about 15 minutes on 2 cores
    .venv/bin/python scripts/bench_video.py --minutes 1 --rounds 1   # a quick check

The load average is printed at the start and the end: another busy process makes every figure
slower, ratios less so.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def write_clip(path: Path, *, seconds: float, size: tuple[int, int], rate: int = 30, crf: int = 23) -> Path:
    """A clip of a moving, grainy colour pattern, H.264 yuv420p, a keyframe every second."""
    import av

    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) * 255 // (width + height))], -1)
    # A fixed grain over the gradient, moving with it: an encoder spends bits on it as on a camera's noise.
    grain = np.random.default_rng(0).integers(-12, 13, size=(height, width, 1))
    base = np.clip(base + grain, 0, 255).astype(np.uint8)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.gop_size = rate
        video.codec_context.options = {
            "preset": "ultrafast",
            "crf": str(crf),
            "keyint_min": str(rate),
            "sc_threshold": "0",
        }
        for i in range(int(seconds * rate)):
            picture = av.VideoFrame.from_ndarray(np.roll(base, i * 4, axis=1), format="rgb24")
            picture.pts, picture.time_base = i, Fraction(1, rate)
            for packet in video.encode(picture):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
    return path


def repeat_clip(source: Path, path: Path, times: int) -> Path:
    """``source`` played ``times`` times in one file, its packets copied (it starts on a keyframe)."""
    import av

    with av.open(str(source)) as first:
        length = first.streams.video[0].duration
    with av.open(str(path), "w") as out:
        stream = None
        for turn in range(times):
            with av.open(str(source)) as container:
                video = container.streams.video[0]
                if stream is None:
                    stream = out.add_stream_from_template(video)
                for packet in container.demux(video):
                    if packet.dts is None:
                        continue
                    packet.pts += turn * length
                    packet.dts += turn * length
                    packet.stream = stream
                    out.mux(packet)
    return path


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def translate_rows(folder: Path, rounds: int, frames: int) -> list[str]:
    from helpers import run_ptm, save_generator

    from ptm_cli.cache.catalog import Catalog
    from ptm_cli.tasks.translate import build_translator
    from ptm_cli.video.reader import open_clip

    weights = save_generator(folder / "generator.pth")
    clip = write_clip(folder / "horse720.mp4", seconds=frames / 30, size=(1280, 720))
    images = [f.image for f in open_clip(clip, "horse720.mp4").frames()]
    entry = Catalog.load(extra=[]).resolve("horse2zebra")
    translator = build_translator(entry, weights_file=weights)
    translator.translate(images[0], size=256)  # warm-up
    alone, ptm = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        for image in images:
            translator.translate(image, size=256)
        alone.append(len(images) / (time.perf_counter() - started))
        out = folder / "zebra720.mp4"
        started = time.perf_counter()
        result = run_ptm(["zebra", "-w", str(weights), "--size", "256", str(clip), "-o", str(out), "--force", "-q"])
        took = time.perf_counter() - started
        assert result.code == 0, result.stderr
        ptm.append(len(images) / took)
    best_alone, best_ptm = max(alone), max(ptm)
    return [
        f"translate, 720p clip of {len(images)} frames, --size 256 (best of {rounds}; the ptm row includes loading "
        "the generator):",
        "| run | frames/s | vs generator alone |",
        "|---|---:|---:|",
        f"| generator alone on decoded frames | {best_alone:.2f} | 1.00x |",
        f"| `ptm zebra clip.mp4 -o out.mp4` (decode, translate, encode, sound) | {best_ptm:.2f} | "
        f"{best_ptm / best_alone:.2f}x |",
    ]


def peak_mib(args: list[str]) -> float:
    code = (
        "import resource, sys\n"
        "from ptm_cli.cli import run\n"
        "status = run(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(status)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return int(done.stderr.strip().splitlines()[-1]) / 1024


def memory_rows(folder: Path) -> list[str]:
    from helpers import save_generator

    weights = save_generator(folder / "generator.pth")
    rows = [
        "peak memory of `ptm zebra --size 64` on 320x240 clips (a process each):",
        "| clip | peak MiB |",
        "|---|---:|",
    ]
    peaks = []
    for seconds in (10, 100):
        clip = write_clip(folder / f"long{seconds}.mp4", seconds=seconds, size=(320, 240))
        out = folder / f"out{seconds}.mp4"
        peak = peak_mib(["zebra", "-w", str(weights), "--size", "64", str(clip), "-o", str(out), "--force", "-q"])
        peaks.append(peak)
        rows.append(f"| {seconds} s ({seconds * 30} frames) | {peak:.0f} |")
    rows.append(f"ten times longer: {peaks[1] / peaks[0]:.3f}x the peak")
    return rows


def seeking_rows(folder: Path, minutes: float) -> list[str]:
    from ptm_cli.video import reader
    from ptm_cli.video.reader import open_clip
    from ptm_cli.video.sampling import Sampling

    minute = write_clip(folder / "minute1080.mp4", seconds=min(60.0, minutes * 60), size=(1920, 1080))
    clip_path = repeat_clip(minute, folder / "long1080.mp4", max(1, round(minutes)))
    clip = open_clip(clip_path, "long1080.mp4")
    every = Sampling(every_seconds=1.0)

    def timed(run: object) -> tuple[float, int]:
        started = time.perf_counter()
        count = run()  # type: ignore[operator]
        return time.perf_counter() - started, count

    seeking, taken = timed(lambda: sum(1 for _ in clip.frames(every)))
    original = reader._worth_seeking
    reader._worth_seeking = lambda *args: False  # type: ignore[assignment]
    try:
        forward, _ = timed(lambda: sum(1 for _ in clip.frames(every)))
    finally:
        reader._worth_seeking = original
    import av

    def plain() -> int:
        with av.open(str(clip_path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            return sum(1 for frame in container.decode(stream) if frame.to_image() is not None)

    everything, total = timed(plain)
    return [
        f"`--every 1s` on a {minutes:g}-minute 1080p clip ({total} frames at 30 a second, a keyframe every second):",
        "| reading | frames taken | seconds | vs ptm |",
        "|---|---:|---:|---:|",
        f"| ptm: seek to the keyframe, decode forward | {taken} | {seeking:.1f} | 1.00x |",
        f"| decode every frame, convert those taken | {taken} | {forward:.1f} | {forward / seeking:.1f}x |",
        f"| decode and convert every frame | {total} | {everything:.1f} | {everything / seeking:.1f}x |",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=60, help="frames of the 720p translate clip")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the 1080p clip for --every")
    args = parser.parse_args(argv)
    out = io.StringIO()
    print(f"load average at the start: {load_average()}", file=out)
    with tempfile.TemporaryDirectory(prefix="ptm-bench-video-") as name:
        folder = Path(name)
        sections = (
            lambda: translate_rows(folder, args.rounds, args.frames),
            lambda: memory_rows(folder),
            lambda: seeking_rows(folder, args.minutes),
        )
        for section in sections:  # each printed as soon as it is measured
            rows = section()
            print("\n".join(rows), file=out)
            print("\n".join(rows) + "\n", flush=True)
    print(f"load average at the end: {load_average()}", file=out)
    print(out.getvalue())


if __name__ == "__main__":
    main()
