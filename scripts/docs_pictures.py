"""Make the documentation site's pictures, in docs/img/, by running ptm on the sample photos in data/.

    .venv/bin/python scripts/docs_pictures.py        # or: make pictures

Every model here has SEEDED STAND-IN WEIGHTS, not trained ones: no trained weights can be downloaded
where this runs, so the weights come from tests/helpers.py (seeded, then calibrated or boosted so that
they report something). What the pictures show of ptm is real: each one is written by the real `ptm`
command (page layout, boxes and labels drawn, overlay and legend, side-by-side input and output). What
they show of a model is not: the labels, scores, boxes, masks and the zebra's stripes are not what
trained weights give.

- report.png: the results page of `ptm classify --report`, screenshotted in headless Chromium
  (a calibrated ResNet-18). Needs Chromium (the Debian package `chromium`); without it the other
  pictures are still made, and stderr says report.png was skipped.
- zebra.png: a photo and `ptm zebra`'s output side by side (a small seeded CycleGAN generator that
  a catalog of this script's own names horse2zebra).
- detect.png: `ptm detect --draw` (a seeded SSDlite, its person class boosted).
- overlay.png: `ptm segment --overlay` (a seeded LRASPP, its background and person classes boosted).

The seeds are fixed, so the same machine makes the same pictures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
OUT = ROOT / "docs" / "img"
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")
MAX_WIDTH = 900
MAX_BYTES = 250_000
sys.path.insert(0, str(ROOT / "tests"))  # the seeded weights are the test suite's

# ptm zebra runs the catalog's horse2zebra: this entry points that name at a small seeded generator in
# PTM_CACHE_DIR (as tests/test_readme.py does), so the command is the one the documentation shows.
ZEBRA_CATALOG = """
[[model]]
name = "horse2zebra"
weights = "BOOK"
default = true
task = "translate"
architecture = "cyclegan_resnet9"
builder_kwargs = { ngf = 8, n_blocks = 2 }
file_name = "stand-in-generator.pth"
resize = 256
"""
# Of the first eight seeds, this generator's output keeps most of the cat's outline and colours.
GENERATOR_SEED = 1
# COCO person: a seeded detector reports nothing without a head start. Its boxes are anchors (the seeded
# features barely move them), so they barely depend on the photo; of the amounts tried, this one spreads
# them out most.
DETECT_BOOST = {1: 6.0}
# VOC background and person: without a large head start every one of the 21 classes covers patches of the
# photo, and the overlay hides it.
SEGMENT_BOOST = {0: 12.0, 15: 10.0}


class Workspace:
    """A temporary folder with the stand-in weights, the sample photos, and the environment ptm runs in."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cache = folder / "cache"
        self.cache.mkdir()
        (folder / "catalog.toml").write_text(ZEBRA_CATALOG)
        self.photos = folder / "photos"
        self.photos.mkdir()
        for name in PHOTOS:
            shutil.copy(DATA / name, self.photos / name)
        # The user's own PTM_* settings (a server, a catalog, a mirror) would change what the pictures show.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("PTM_")}
        self.env = {
            **inherited,
            "PYTHONPATH": str(ROOT),
            "PTM_OFFLINE": "1",
            "PTM_SERVER": "never",
            "PTM_CATALOG": str(folder / "catalog.toml"),
            "PTM_CACHE_DIR": str(self.cache),
        }

    def ptm(self, args: Sequence[str], *, allowed: tuple[int, ...] = (0,)) -> None:
        """Run the real `ptm` command in the folder, on the CPU (so a GPU machine makes the same pictures)."""
        command = [sys.executable, "-m", "ptm_cli", *args, "--device", "cpu", "--quiet"]
        done = subprocess.run(command, cwd=self.folder, env=self.env, capture_output=True, text=True, check=False)
        if done.returncode not in allowed:
            raise SystemExit(f"ptm {' '.join(args)} exited {done.returncode}:\n{done.stderr}")


def fit(image: Image.Image, path: Path) -> None:
    """Save ``image`` as a PNG at most MAX_WIDTH wide; a photo too large as full colour gets a 256-colour palette."""
    image = image.convert("RGB")
    if image.width > MAX_WIDTH:
        image = image.resize((MAX_WIDTH, round(image.height * MAX_WIDTH / image.width)), Image.Resampling.LANCZOS)
    image.save(path, optimize=True)
    if path.stat().st_size > MAX_BYTES:
        image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
            path, optimize=True
        )
    print(f"wrote {path.relative_to(ROOT)} ({image.width}x{image.height}, {path.stat().st_size // 1000} kB)")


def report(work: Workspace) -> None:
    import torch
    from browser import chromium  # the suite's headless Chromium: offline, fresh profile, bounded in time
    from helpers import calibrated_state_dict

    torch.save(calibrated_state_dict("resnet18", logit_std=6.0), work.folder / "r18.pth")
    # A broken file shows what a failed input looks like on the page (and makes ptm exit 1).
    (work.photos / "not-a-photo.jpg").write_bytes(b"this is text, not a JPEG")
    try:
        # Relative names, as a user in that folder would type them: the page shows what was typed.
        work.ptm(
            ["classify", "-m", "resnet18", "-w", "./r18.pth", "-k", "3", "photos", "--report", "report.html"],
            allowed=(0, 1),
        )
    finally:
        (work.photos / "not-a-photo.jpg").unlink()
    shot = work.folder / "report.png"
    done = chromium(
        "--hide-scrollbars",
        f"--window-size={MAX_WIDTH},970",  # the header and all four entries
        f"--screenshot={shot}",
        (work.folder / "report.html").as_uri(),
        profile=work.folder / "profile",
    )
    if done.returncode != 0:
        raise SystemExit(f"docs_pictures: Chromium failed: {done.stderr.strip()[-500:]}")
    with Image.open(shot) as image:
        fit(image, OUT / "report.png")


def zebra(work: Workspace) -> None:
    import torch

    from ptm_cli.nets.cyclegan import build_generator

    torch.manual_seed(GENERATOR_SEED)
    torch.save(build_generator(ngf=8, n_blocks=2).state_dict(), work.cache / "stand-in-generator.pth")
    work.ptm(["zebra", "photos/chelsea.png", "-o", "zebra.png"])
    # Composing two finished images is layout only: the right half is the file ptm wrote, untouched.
    with Image.open(work.photos / "chelsea.png") as before, Image.open(work.folder / "zebra.png") as after:
        gap = 12
        pair = Image.new("RGB", (before.width + gap + after.width, max(before.height, after.height)), "white")
        pair.paste(before.convert("RGB"), (0, 0))
        pair.paste(after.convert("RGB"), (before.width + gap, 0))
    fit(pair, OUT / "zebra.png")


def detect(work: Workspace) -> None:
    import torch
    from helpers import detector_state_dict

    model = "ssdlite320_mobilenet_v3_large"
    torch.save(detector_state_dict(model, boost=DETECT_BOOST), work.folder / "ssdlite.pth")
    # A few boxes, so that the labels stay readable.
    draw = ["--max-detections", "6", "--draw", "-o", "detect.png"]
    work.ptm(["detect", "-m", model, "-w", "./ssdlite.pth", *draw, "photos/rocket.jpg"])
    with Image.open(work.folder / "detect.png") as image:
        fit(image, OUT / "detect.png")


def overlay(work: Workspace) -> None:
    import torch
    from helpers import segmenter_state_dict

    model = "lraspp_mobilenet_v3_large"
    torch.save(segmenter_state_dict(model, boost=SEGMENT_BOOST), work.folder / "lraspp.pth")
    work.ptm(["segment", "-m", model, "-w", "./lraspp.pth", "--overlay", "-o", "overlay.png", "photos/rocket.jpg"])
    with Image.open(work.folder / "overlay.png") as image:
        fit(image, OUT / "overlay.png")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    from browser import CHROMIUM

    with tempfile.TemporaryDirectory(prefix="ptm-pictures-") as folder:
        work = Workspace(Path(folder))
        zebra(work)
        detect(work)
        overlay(work)
        if CHROMIUM is None:
            print("docs_pictures: no Chromium here (apt-get install chromium): skipped report.png", file=sys.stderr)
        else:
            report(work)


if __name__ == "__main__":
    main()
