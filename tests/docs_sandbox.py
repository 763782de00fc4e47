"""A folder where the documentation's examples run as written, on the suite's small seeded models.

The examples name real models (``resnet101``, ``horse2zebra``, ``fasterrcnn_resnet50_fpn_v2``) and
ordinary files (``dog.jpg``, ``photos/``, ``horse.mp4``). No weights can be downloaded where the suite
runs, so a catalog file of this module's gives each name a small network with seeded weights (a
ResNet-18 for the classifiers, SSDlite for the detectors, LRASPP for segmentation, an 8-filter
CycleGAN generator for translation), and the files are the sample photos under the names the
examples use. Every call still goes through the real catalog, weights cache and pins; only the
numbers the weights decide (labels, scores, boxes) differ from what real weights give, which is why
the pages mark them with ``...``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch
from clips import make_clip
from helpers import DATA, detector_state_dict, seeded_state_dict, segmenter_state_dict

# name, weights, default: the classifiers the examples name, each a seeded ResNet-18 of its own file.
CLASSIFIERS = [
    ("resnet101", "IMAGENET1K_V2", True),
    ("resnet101", "IMAGENET1K_V1", False),
    ("resnet50", "IMAGENET1K_V2", True),
    ("resnet18", "IMAGENET1K_V1", True),
    ("alexnet", "IMAGENET1K_V1", True),
    ("mobilenet_v3_small", "IMAGENET1K_V1", True),
]
GENERATORS = ["horse2zebra", "style_vangogh", "summer2winter_yosemite"]
DETECTORS = ["fasterrcnn_resnet50_fpn_v2", "ssdlite320_mobilenet_v3_large"]
SEGMENTERS = ["deeplabv3_resnet101", "lraspp_mobilenet_v3_large"]
# The catalog page's file of the user's own: a fine-tuned ResNet-18, already in the cache.
MINE = """[[model]]
name = "my-resnet"
weights = "FINETUNED"
architecture = "resnet18"
url = "https://models.example.org/my-resnet-v3.pth"
file_name = "standin-resnet18.pth"  # already in the cache: nothing is downloaded
resize = 256
crop = 224
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
default = true
"""
IMAGENET = "mean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n"


def catalog(categories: Path) -> str:
    """The stand-ins' catalog file: the examples' names, the small networks' architectures."""
    coco, voc = categories / "coco_categories.txt", categories / "voc_classes.txt"
    parts = []
    for name, weights, default in CLASSIFIERS:
        parts.append(
            f'[[model]]\nname = "{name}"\nweights = "{weights}"\narchitecture = "resnet18"\n'
            f'file_name = "standin-{name}.pth"\nresize = 256\ncrop = 224\n{IMAGENET}default = {str(default).lower()}\n'
        )
    for name in GENERATORS:
        parts.append(
            f'[[model]]\nname = "{name}"\nweights = "BOOK"\ntask = "translate"\narchitecture = "cyclegan_resnet9"\n'
            'builder_kwargs = { ngf = 8, n_blocks = 2 }\nfile_name = "standin-generator.pth"\nresize = 64\n'
            "default = true\n"
        )
    for name in DETECTORS:
        parts.append(
            f'[[model]]\nname = "{name}"\nweights = "COCO_V1"\ntask = "detect"\n'
            'architecture = "ssdlite320_mobilenet_v3_large"\nfile_name = "standin-detector.pth"\n'
            f'num_classes = 91\nlabels = "{coco}"\ndefault = true\n'
        )
    for name in SEGMENTERS:
        parts.append(
            f'[[model]]\nname = "{name}"\nweights = "COCO_WITH_VOC_LABELS_V1"\ntask = "segment"\n'
            'architecture = "lraspp_mobilenet_v3_large"\nfile_name = "standin-segmenter.pth"\n'
            f'num_classes = 21\nlabels = "{voc}"\nresize = 520\n{IMAGENET}default = true\n'
        )
    return "\n".join(parts)


def build(root: Path) -> None:
    """The stand-in weights and catalog under root/cache, and the examples' files under root/work.

    A page's copy may hard-link these files: nothing in ptm writes into a file in place (a file is
    replaced by renaming a new one over it), so one page's examples cannot change another's files.
    """
    from PIL import Image

    from ptm_cli.cache.catalog import CATALOG_DIR
    from ptm_cli.nets.cyclegan import build_generator

    cache = root / "cache"
    cache.mkdir(parents=True)
    base = root / "resnet18.pth"
    torch.save(seeded_state_dict("resnet18"), base)
    for name in {name for name, _, _ in CLASSIFIERS}:  # a file each, so that `ptm weights rm` takes one
        os.link(base, cache / f"standin-{name}.pth")
    torch.manual_seed(3)
    torch.save(build_generator(ngf=8, n_blocks=2).state_dict(), cache / "standin-generator.pth")
    torch.save(detector_state_dict("ssdlite320_mobilenet_v3_large"), cache / "standin-detector.pth")
    segmenter = segmenter_state_dict("lraspp_mobilenet_v3_large", boost={15: 1.0})  # 15: person
    torch.save(segmenter, cache / "standin-segmenter.pth")
    (root / "catalog.toml").write_text(catalog(CATALOG_DIR), encoding="utf-8")

    work = root / "work"
    work.mkdir()
    cat = Image.open(DATA / "chelsea.png").convert("RGB")
    cup = Image.open(DATA / "coffee.png").convert("RGB")
    rocket = Image.open(DATA / "rocket.jpg").convert("RGB")

    def save(image: Image.Image, name: str, **kwargs: object) -> None:
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **kwargs)

    for name in ("dog.jpg", "cat.jpg", "photo.jpg", "img.jpg", "beach.jpg", "portrait.jpg"):
        save(cat, name, quality=90)
    for name in ("street.jpg", "park.jpg"):
        save(rocket, name, quality=90)
    save(rocket.resize((rocket.width * 2, rocket.height * 2)), "big.jpg", quality=90)
    save(cat, "photos/2019/IMG_0042.jpg", quality=90)
    save(cat, "photos/dog.jpg", quality=90)  # the Python examples: "dog.jpg is a copy of chelsea.jpg here"
    save(rocket.resize((120, 180)), "horse.jpg")
    save(cup, "lake.png")
    for folder in ("photos", "holiday", "queries", "people", "home/Pictures/2024"):
        save(cat, f"{folder}/chelsea.jpg", quality=90)
        save(cup, f"{folder}/coffee.jpg", quality=90)
    save(cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "holiday/chelsea-again.jpg", quality=85)
    save(rocket.resize((120, 180)), "horses/brown.jpg")
    save(rocket.resize((100, 150)), "horses/grey.jpg")
    shutil.copy(base, work / "my-finetune.pth")
    shutil.copy(cache / "standin-generator.pth", work / "my-generator.pth")
    shutil.copy(base, work / "model.pth")
    (work / "home/usb").mkdir(parents=True)
    shutil.copy(base, work / "home/usb/resnet101-cd907fc2.pth")
    (work / "classes.txt").write_text("".join(f"class {n}\n" for n in range(1000)), encoding="utf-8")
    # Short clips with sound (2 s at 10 frames a second): enough for --every, --start and --end.
    for name in ("clip.mp4", "horse.mp4", "street.mp4"):
        make_clip(work / name, frames=20, rate=10, size=(96, 64), audio=True)
    make_clip(work / "horse.mov", frames=20, rate=10, size=(96, 64), audio=True)
    (work / "home/models").mkdir()
    (work / "home/models/mine.toml").write_text(MINE, encoding="utf-8")
    (work / "stamp").touch()
    os.utime(work / "stamp", (0, 0))  # everything else is newer


def environment(root: Path, runtime: Path) -> dict[str, str]:
    """The environment the examples run in: the stand-in catalog, offline, and a home of their own.

    Model commands run in a warm server of the examples' own (``PTM_SERVER=auto``, in ``runtime``), as
    the warm server gives the same output as the process does (tests/test_serve.py): a second each
    instead of three. The caller stops it.
    """
    home = root / "work" / "home"
    return {
        # Nothing of the caller's that decides results: ptm's variables, torch's and the caches' folders.
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PTM_") and k not in ("TORCH_HOME", "XDG_CACHE_HOME")
        },
        "TORCH_HOME": str(root / "torch"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(runtime),
        "PTM_SERVER": "auto",
        "PTM_CATALOG": str(root / "catalog.toml"),
        "PTM_CACHE_DIR": str(root / "cache"),
        "PTM_OFFLINE": "1",
        "PTM_SERVE_IDLE_TIMEOUT": "60",
        "COLUMNS": "100",
    }
