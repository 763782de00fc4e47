"""`ptm detect`: torchvision parity, batches, tiles, COCO files, drawn images and crops, hostile inputs.

Detectors here hold seeded weights whose classification biases favour a
few classes (helpers.detector_state_dict), so they report boxes to compare.
Families are tested with their smallest member (SSDlite, Faster R-CNN
MobileNetV3 320); the default Faster R-CNN v2 and the keypoint model run once.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import DATA, SeededWeights, assert_refused, run_ptm, torchvision_detector
from PIL import Image, ImageDraw
from torch import nn

from ptm_cli.cache.catalog import Catalog, Entry
from ptm_cli.tasks._detector import Detector, Limits, tile_starts
from ptm_cli.tasks.detect import detect_images, to_record

SSDLITE = "ssdlite320_mobilenet_v3_large"
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")


@pytest.fixture(scope="module")
def ssdlite(seeded_weights: SeededWeights) -> Path:
    return seeded_weights.detector(SSDLITE, boost={1: 7.0, 18: 5.0})  # person, dog


def size_of(path: Any) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def rgb(path: Path | str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def plain_copies(folder: Path) -> list[Path]:
    """The sample photos without colour profiles: ptm and torchvision then decode the same pixels."""
    copies = []
    for name in PHOTOS:
        copy = folder / f"{Path(name).stem}.png"
        image = rgb(DATA / name)
        image.info.clear()  # Pillow would write the source's colour profile into the copy
        image.save(copy)
        copies.append(copy)
    return copies


def detect(weights: Path, *args: str, model: str = SSDLITE) -> Any:
    return run_ptm(["detect", "-m", model, "-w", str(weights), "-f", "jsonl", *args])


def torchvision_records(model: str, weights: Path, images: list[Path]) -> list[dict[str, Any]]:
    """What torchvision's documented usage gives: ``weights.transforms()`` and ``model([image])``, one at a time."""
    built, preprocess = torchvision_detector(model, torch.load(weights, weights_only=True))
    out = []
    with torch.inference_mode():
        for path in images:
            image = rgb(path)
            out.append(built([preprocess(image)])[0])
    return out


def assert_parity(records: list[dict[str, Any]], reference: list[dict[str, Any]], min_score: float) -> None:
    for record, ref in zip(records, reference, strict=True):
        keep = ref["scores"] >= min_score
        boxes, scores, labels = ref["boxes"][keep].tolist(), ref["scores"][keep].tolist(), ref["labels"][keep].tolist()
        found = record["detections"]
        assert len(found) == len(boxes) > 0
        for d, box, score, label in zip(found, boxes, scores, labels, strict=True):
            assert d["category_id"] == label
            assert d["score"] == pytest.approx(score, rel=1e-4, abs=1e-6)
            mine = [d["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")]
            assert mine == pytest.approx(box, rel=1e-4, abs=1e-4)
        if "keypoints" in ref:
            for d, points in zip(found, ref["keypoints"][keep].tolist(), strict=True):
                mine = [v for k in d["keypoints"] for v in (k["x"], k["y"])]
                assert mine == pytest.approx([v for p in points for v in p[:2]], rel=1e-4, abs=1e-4)


@pytest.mark.parametrize(
    ("model", "min_score", "keep"),
    [
        (SSDLITE, 0.001, 300),  # the model's own threshold and number of boxes
        ("fasterrcnn_mobilenet_v3_large_320_fpn", 0.05, 100),
        pytest.param("fasterrcnn_resnet50_fpn_v2", 0.05, 100, marks=pytest.mark.slow),  # the default, once
        pytest.param("keypointrcnn_resnet50_fpn", 0.05, 100, marks=pytest.mark.slow),
    ],
)
def test_boxes_labels_and_scores_equal_torchvisions(
    model: str, min_score: float, keep: int, seeded_weights: SeededWeights, tmp_path: Path
) -> None:
    weights = seeded_weights.detector(model, boost={1: 3.0, 18: 2.0})  # scores spread out: no ties to order
    images = plain_copies(tmp_path)
    result = detect(
        weights, "--min-score", str(min_score), "--max-detections", str(keep), *map(str, images), model=model
    )
    assert result.code == 0, result.stderr
    records = result.records()
    assert [(r["width"], r["height"]) for r in records] == [size_of(p) for p in images]
    assert_parity(records, torchvision_records(model, weights, images), min_score)
    if model.startswith("keypoint"):
        names = [k["name"] for k in records[0]["detections"][0]["keypoints"]]
        assert names[:3] == ["nose", "left_eye", "right_eye"] and len(names) == 17


def test_the_default_model_is_faster_rcnn_v2() -> None:
    from ptm_cli import tasks

    assert tasks.get("detect").default_model == "fasterrcnn_resnet50_fpn_v2"
    entry = Catalog.load(extra=[]).resolve("fasterrcnn_resnet50_fpn_v2")
    assert (entry.task, entry.num_classes, entry.resize, entry.max_size) == ("detect", 91, 800, 1333)


def test_every_detector_in_the_catalog_builds_as_torchvision_builds_it() -> None:
    """ptm's network for each entry has torchvision's modules (frozen norms included) and state-dict shapes."""
    import torchvision.models as tvm

    entries = Catalog.load(extra=[]).entries("detect")
    assert {e.model for e in entries} == {
        "fasterrcnn_resnet50_fpn",
        "fasterrcnn_resnet50_fpn_v2",
        "fasterrcnn_mobilenet_v3_large_fpn",
        "fasterrcnn_mobilenet_v3_large_320_fpn",
        "retinanet_resnet50_fpn",
        "retinanet_resnet50_fpn_v2",
        "fcos_resnet50_fpn",
        "ssd300_vgg16",
        "ssdlite320_mobilenet_v3_large",
        "keypointrcnn_resnet50_fpn",
    }
    from ptm_cli.nets import architectures

    for entry in entries:
        with torch.device("meta"):
            ours = architectures.factory(entry)()
        weights = tvm.get_model_weights(entry.model)[entry.weights]
        assert weights.url == entry.url
        assert len(weights.meta["categories"]) == entry.num_classes
        assert list(weights.meta.get("keypoint_names", [])) == list(entry.keypoint_names)
        norms = [m for m in ours.modules() if type(m).__name__ == "FrozenBatchNorm2d"]
        assert bool(norms) == entry.frozen_batchnorm
        # torchvision zeroes the frozen norms' epsilon for the COCO_V1 weights of its oldest ResNet-50 detectors
        assert {m.eps for m in norms} <= ({0.0} if entry.batchnorm_eps == 0 else {1e-5})


@pytest.mark.parametrize(
    ("model", "min_score", "keep"),
    [("retinanet_resnet50_fpn_v2", 0.05, 300), ("fcos_resnet50_fpn", 0.2, 100), ("ssd300_vgg16", 0.01, 200)],
)
@pytest.mark.slow
def test_the_other_families_run_end_to_end(
    model: str, min_score: float, keep: int, seeded_weights: SeededWeights, tmp_path: Path
) -> None:
    weights = seeded_weights.detector(model, boost={1: 3.0, 18: 2.0})
    small = tmp_path / "small.png"
    image = rgb(DATA / "rocket.jpg").resize((320, 214))
    image.info.clear()
    image.save(small)
    result = detect(weights, "--min-score", str(min_score), "--max-detections", str(keep), str(small), model=model)
    assert result.code == 0, result.stderr
    (record,) = result.records()
    assert record["detections"] and all(d["score"] >= min_score for d in record["detections"])
    assert_parity([record], torchvision_records(model, weights, [small]), min_score)


# --- batches --------------------------------------------------------------------------------------------------


def test_a_batch_gives_each_image_the_boxes_it_gets_alone(ssdlite: Path, tmp_path: Path) -> None:
    """Eight photos of one size and two of others: --batch-size 8 and 1 give the same records."""
    names = []
    for i in range(10):
        size = (320, 240) if i < 8 else (200 + 40 * i, 150)
        image = rgb(DATA / PHOTOS[i % 3]).resize(size).rotate(11 * i)
        image.save(tmp_path / f"p{i}.png")
        names.append(str(tmp_path / f"p{i}.png"))
    one = detect(ssdlite, "--batch-size", "1", "--min-score", "0.01", *names)
    eight = detect(ssdlite, "--batch-size", "8", "--min-score", "0.01", *names)
    assert one.code == eight.code == 0
    assert one.stdout == eight.stdout
    assert all(r["detections"] for r in one.records())


def test_faster_rcnn_batches_keep_boxes_too(seeded_weights: SeededWeights, tmp_path: Path) -> None:
    weights = seeded_weights.detector("fasterrcnn_mobilenet_v3_large_320_fpn")
    names = []
    for i in range(4):
        rgb(DATA / PHOTOS[i % 3]).resize((300, 200)).rotate(7 * i).save(tmp_path / f"{i}.png")
        names.append(str(tmp_path / f"{i}.png"))
    model = "fasterrcnn_mobilenet_v3_large_320_fpn"
    one = detect(weights, "--batch-size", "1", "--min-score", "0.05", *names, model=model)
    four = detect(weights, "--batch-size", "4", "--min-score", "0.05", *names, model=model)
    assert one.code == four.code == 0 and one.stdout == four.stdout


# --- tiles ------------------------------------------------------------------------------------------------------


class SquareFinder(nn.Module):
    """A detector with known answers: bright squares on a dark image, found as a real model finds objects.

    Like torchvision's detectors it looks at the image resized to a fixed
    long side (``view`` pixels): a square narrower than 3 of those pixels is
    too small to see. A square it sees is reported with its exact box, read
    from the full-resolution pixels, score 0.9, category 1.
    """

    def __init__(self, view: int = 128) -> None:
        super().__init__()
        self.view = view

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [self._find(image) for image in images]

    def _find(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = image.shape[1:]
        scale = self.view / max(height, width)
        small = nn.functional.interpolate(image[None, :1], scale_factor=scale, mode="area", recompute_scale_factor=True)
        mask = (small[0, 0] > 0.75).tolist()
        boxes = []
        seen: set[tuple[int, int]] = set()
        for y, row in enumerate(mask):
            for x, on in enumerate(row):
                if not on or (y, x) in seen:
                    continue
                component = self._component(mask, y, x, seen)
                ys, xs = [p[0] for p in component], [p[1] for p in component]
                if max(xs) - min(xs) + 1 < 3 or max(ys) - min(ys) + 1 < 3:
                    continue
                boxes.append(self._exact(image, min(xs), min(ys), max(xs) + 1, max(ys) + 1, scale))
        result = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        return {
            "boxes": result,
            "scores": torch.full((len(boxes),), 0.9),
            "labels": torch.ones(len(boxes), dtype=torch.int64),
        }

    @staticmethod
    def _component(mask: list[list[bool]], y: int, x: int, seen: set[tuple[int, int]]) -> list[tuple[int, int]]:
        todo, found = [(y, x)], []
        seen.add((y, x))
        while todo:
            cy, cx = todo.pop()
            found.append((cy, cx))
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < len(mask) and 0 <= nx < len(mask[0]) and mask[ny][nx] and (ny, nx) not in seen:
                    seen.add((ny, nx))
                    todo.append((ny, nx))
        return found

    @staticmethod
    def _exact(image: torch.Tensor, x0: int, y0: int, x1: int, y1: int, scale: float) -> list[float]:
        """The bright pixels' bounds at full resolution, near the small view's box."""
        height, width = image.shape[1:]
        left, top = max(0, math.floor((x0 - 3) / scale)), max(0, math.floor((y0 - 3) / scale))
        right, bottom = min(width, math.ceil((x1 + 3) / scale)), min(height, math.ceil((y1 + 3) / scale))
        bright = image[0, top:bottom, left:right] > 0.5
        rows, cols = torch.nonzero(bright.any(dim=1)).flatten(), torch.nonzero(bright.any(dim=0)).flatten()
        return [left + int(cols[0]), top + int(rows[0]), left + int(cols[-1]) + 1, top + int(rows[-1]) + 1]


def square_detector() -> Detector:
    from ptm_cli.nets.device import choose_precision

    entry = Entry(model="squares", weights="test", task="detect", architecture="squares", labels=None)
    return Detector(
        entry,
        SquareFinder(),
        weights_label="test",
        labels=["__background__", "square"],
        device=torch.device("cpu"),
        precision=choose_precision("fp32", torch.device("cpu")),
    )


def test_tiles_find_every_small_square_once_with_its_true_box(tmp_path: Path) -> None:
    """Small squares only tiles can see, some cut by tile edges; big squares across tiles; each found once."""
    width, height, tile = 2000, 1200, 512
    image = Image.new("RGB", (width, height), (10, 10, 10))
    draw = ImageDraw.Draw(image)
    xs, ys = tile_starts(width, tile, tile // 4), tile_starts(height, tile, tile // 4)
    squares = [(100, 100, 20), (1500, 900, 24), (1900, 60, 18)]
    # Small squares across every inner tile edge (inside the overlap: a neighbour sees them whole).
    squares += [(x + tile - 40, 300, 20) for x in xs[:-1]] + [(900, y + tile - 40, 20) for y in ys[:-1]]
    squares += [(400, 450, 300), (1100, 650, 260)]  # big ones, cut by tile edges: the whole-image pass finds them
    for left, top, side in squares:
        draw.rectangle([left, top, left + side - 1, top + side - 1], fill=(250, 250, 250))
    path = tmp_path / "squares.png"
    image.save(path)
    from ptm_cli.images.inputs import ImageInput

    detector = square_detector()
    limits = Limits(min_score=0.5, max_detections=1000)
    whole = next(iter(detect_images([ImageInput(str(path), path=path)], detector, limits=limits)))
    tiled = next(iter(detect_images([ImageInput(str(path), path=path)], detector, limits=limits, tile=tile)))
    truth = sorted((float(x), float(y), float(x + s), float(y + s)) for x, y, s in squares)
    assert sorted(d.box for d in tiled.detections or []) == truth
    seen_whole = sorted(d.box for d in whole.detections or [])
    assert seen_whole == sorted(b for b in truth if b[2] - b[0] > 100)  # without tiles, only the big ones
    assert to_record(tiled, detector)["detections"][0]["label"] == "square"


def test_tile_starts_cover_the_image_with_the_overlap() -> None:
    for length in (513, 1000, 2000, 4000, 12345):
        starts = tile_starts(length, 1024, 256)
        assert starts[0] == 0 and starts[-1] + 1024 == max(length, 1024)
        assert all(b - a <= 1024 - 256 for a, b in itertools.pairwise(starts))


def test_tile_option_runs_a_real_detector_on_a_large_image(ssdlite: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    rgb(DATA / "rocket.jpg").resize((1600, 1068)).save(big)
    result = detect(ssdlite, "--tile", "512", "--min-score", "0.3", str(big))
    plain = detect(ssdlite, "--min-score", "0.3", str(big))
    assert result.code == plain.code == 0, result.stderr
    (tiled,) = result.records()
    assert (tiled["width"], tiled["height"]) == (1600, 1068)
    assert len(tiled["detections"]) >= 1
    for d in tiled["detections"]:
        b = d["box"]
        assert 0 <= b["xmin"] < b["xmax"] <= 1600 and 0 <= b["ymin"] < b["ymax"] <= 1068
    assert detect(ssdlite, "--tile", "32", str(big)).code == 2


# --- options and records ------------------------------------------------------------------------------------------


def test_min_score_classes_and_max_detections(ssdlite: Path) -> None:
    image = str(DATA / "rocket.jpg")
    every = detect(ssdlite, "--min-score", "0.01", "--max-detections", "300", image).records()[0]["detections"]
    labels = {d["label"] for d in every}
    assert {"person", "dog"} <= labels
    people = detect(ssdlite, "--min-score", "0.01", "--classes", "Person", image).records()[0]["detections"]
    assert people and {d["label"] for d in people} == {"person"}
    few = detect(ssdlite, "--min-score", "0.01", "--max-detections", "3", image).records()[0]["detections"]
    assert few == every[:3]
    high = detect(ssdlite, "--min-score", "0.6", image).records()[0]["detections"]
    assert all(d["score"] >= 0.6 for d in high)
    assert [d["score"] for d in every] == sorted((d["score"] for d in every), reverse=True)
    assert all(d["category_id"] in (1, 18) or d["score"] < 0.05 for d in every)


def test_an_unknown_class_is_a_usage_error_listing_the_classes(ssdlite: Path) -> None:
    result = detect(ssdlite, "--classes", "person,unicorn", str(DATA / "rocket.jpg"))
    assert_refused(result, "'unicorn'", "person", "toothbrush")
    assert "N/A" not in result.stderr and "__background__" not in result.stderr


def test_csv_has_one_row_per_detection(ssdlite: Path) -> None:
    result = run_ptm(
        ["detect", "-m", SSDLITE, "-w", str(ssdlite), "-f", "csv", "--max-detections", "2", str(DATA / "rocket.jpg")]
    )
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "input,rank,label,category_id,score,xmin,ymin,xmax,ymax,error"
    assert len(lines) == 3 and lines[1].split(",")[1:3] == ["1", "person"]


def test_an_image_with_nothing_found_still_has_its_record(ssdlite: Path) -> None:
    result = detect(ssdlite, "--min-score", "1", str(DATA / "coffee.png"))
    assert result.code == 0
    (record,) = result.records()
    assert record["detections"] == [] and (record["width"], record["height"]) == size_of(DATA / "coffee.png")
    csv = run_ptm(
        ["detect", "-m", SSDLITE, "-w", str(ssdlite), "-f", "csv", "--min-score", "1", str(DATA / "coffee.png")]
    )
    assert csv.stdout.strip().splitlines()[1].startswith(str(DATA / "coffee.png") + ",,")


def test_boxes_are_in_the_pixels_of_the_image_as_seen(ssdlite: Path, tmp_path: Path) -> None:
    """An EXIF-rotated JPEG: width and height as shown, and boxes inside them."""
    image = rgb(DATA / "rocket.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    (record,) = detect(ssdlite, "--min-score", "0.3", str(path)).records()
    assert (record["width"], record["height"]) == (image.height, image.width)
    assert all(d["box"]["xmax"] <= image.height + 1e-3 for d in record["detections"])


# --- COCO --------------------------------------------------------------------------------------------------------


def test_coco_file_loads_in_pycocotools_and_evaluates_to_itself(ssdlite: Path, tmp_path: Path) -> None:
    coco_module = pytest.importorskip("pycocotools.coco")
    from pycocotools.cocoeval import COCOeval

    out = tmp_path / "results.json"
    images = [str(DATA / n) for n in PHOTOS]
    result = detect(ssdlite, "--min-score", "0.3", "--coco", str(out), *images)
    assert result.code == 0, result.stderr
    records = result.records()
    doc = json.loads(out.read_text())
    assert [i["file_name"] for i in doc["images"]] == images
    assert len(doc["annotations"]) == sum(len(r["detections"]) for r in records) > 0
    first = records[0]["detections"][0]
    b = first["box"]
    assert doc["annotations"][0]["bbox"] == pytest.approx(
        [b["xmin"], b["ymin"], b["xmax"] - b["xmin"], b["ymax"] - b["ymin"]]
    )
    ground = coco_module.COCO(str(out))  # the file is a COCO dataset ...
    results = ground.loadRes(doc["annotations"])  # ... and its annotations are COCO results
    evaluation = COCOeval(ground, results, "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # every box matches itself: ids, categories and [x, y, w, h] agree
    again = detect(ssdlite, "--coco", str(out), images[0])
    assert_refused(again, "--force")


# --- drawings and crops --------------------------------------------------------------------------------------------


def test_draw_beside_the_input_and_never_over_it(ssdlite: Path, tmp_path: Path) -> None:
    photo = tmp_path / "street.jpg"
    rgb(DATA / "rocket.jpg").save(photo)
    first = detect(ssdlite, "--draw", "--min-score", "0.3", str(photo))
    assert first.code == 0, first.stderr
    drawn = tmp_path / "street.detect.jpg"
    (record,) = first.records()
    assert record["drawn"] == str(drawn)
    with Image.open(drawn) as image:
        assert image.format == "JPEG" and image.size == size_of(photo)
    before = drawn.read_bytes()
    again = detect(ssdlite, "--draw", "--min-score", "0.3", str(photo))
    assert again.code == 1 and "already exists" in again.records()[0]["error"]["message"]
    assert drawn.read_bytes() == before
    assert detect(ssdlite, "--draw", "--force", str(photo)).code == 0


def test_draw_to_a_file_a_folder_or_stdout(ssdlite: Path, tmp_path: Path) -> None:
    photo = str(DATA / "rocket.jpg")
    out = tmp_path / "boxes.png"
    assert detect(ssdlite, "-o", str(out), photo).code == 0
    with Image.open(out) as image:
        assert image.format == "PNG"
    folder = tmp_path / "drawn"
    assert detect(ssdlite, "--draw-dir", str(folder), photo, str(DATA / "coffee.png")).code == 0
    assert sorted(p.name for p in folder.iterdir()) == ["coffee.jpg", "rocket.jpg"]
    piped = detect(ssdlite, "-o", "-", photo)
    assert piped.code == 0
    assert size_of(io.BytesIO(piped.stdout_bytes)) == size_of(photo)


def test_drawn_boxes_are_where_the_record_says(ssdlite: Path, tmp_path: Path) -> None:
    plain = Image.new("RGB", (640, 480), (128, 128, 128))
    path = tmp_path / "grey.png"
    plain.save(path)
    out = tmp_path / "drawn.png"
    result = detect(ssdlite, "-o", str(out), "--max-detections", "1", "--min-score", "0.01", str(path))
    (record,) = result.records()
    from ptm_cli.output.drawing import class_colour

    box = record["detections"][0]["box"]
    colour = class_colour(record["detections"][0]["label"])
    drawn = rgb(out)
    x = round((box["xmin"] + box["xmax"]) / 2)
    edge = [drawn.getpixel((x, y)) for y in range(max(0, int(box["ymax"]) - 4), min(480, int(box["ymax"]) + 1))]
    assert any(sum(abs(a - b) for a, b in zip(p, colour, strict=True)) < 30 for p in edge)


def test_crops_are_named_after_input_label_and_rank(ssdlite: Path, tmp_path: Path) -> None:
    crops = tmp_path / "crops"
    result = detect(
        ssdlite, "--crops", str(crops), "--max-detections", "3", "--min-score", "0.01", str(DATA / "rocket.jpg")
    )
    assert result.code == 0, result.stderr
    (record,) = result.records()
    names = sorted(p.name for p in crops.iterdir())
    assert names == sorted(f"rocket.{d['label']}.{i}.png" for i, d in enumerate(record["detections"], 1))
    first = record["detections"][0]["box"]
    with Image.open(crops / f"rocket.{record['detections'][0]['label']}.1.png") as crop:
        assert crop.width == math.ceil(first["xmax"]) - math.floor(first["xmin"])


def test_crops_refuse_a_symlink_or_a_file_and_write_nothing_elsewhere(ssdlite: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    assert_refused(detect(ssdlite, "--crops", str(link), str(DATA / "rocket.jpg")), "symbolic link")
    afile = tmp_path / "file"
    afile.write_text("x")
    assert_refused(detect(ssdlite, "--crops", str(afile), str(DATA / "rocket.jpg")), "is a file")
    assert list(target.iterdir()) == [] and afile.read_text() == "x"


def test_a_hostile_label_makes_a_safe_crop_name() -> None:
    from ptm_cli.tasks._detect_files import crop_name

    assert crop_name("photo", "../../etc/passwd", 1, ".png") == "photo.etc_passwd.1.png"
    assert crop_name("photo", None, 2, ".png") == "photo.object.2.png"
    assert "/" not in crop_name("p", "a/b\\c\x00d", 3, ".png")


# --- hostile inputs -------------------------------------------------------------------------------------------------


def test_odd_images_give_records_or_clear_errors(ssdlite: Path, tmp_path: Path) -> None:
    one = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(one)
    strip = tmp_path / "strip.png"
    Image.new("RGB", (10000, 1), (10, 200, 10)).save(strip)
    deep = tmp_path / "deep.png"
    Image.new("I;16", (120, 80), 40000).save(deep)
    cmyk = tmp_path / "cmyk.jpg"
    rgb(DATA / "rocket.jpg").convert("CMYK").save(cmyk)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff nothing")
    names = [str(p) for p in (one, strip, deep, cmyk, broken)]
    result = detect(ssdlite, "--min-score", "0.01", *names)
    assert result.code == 1
    records = result.records()
    assert [r["input"] for r in records] == names
    assert [(r.get("width"), r.get("height")) for r in records[:4]] == [(1, 1), (10000, 1), (120, 80), (640, 427)]
    assert records[4]["error"]["type"] in ("corrupt_image", "unsupported_format", "input_error") or records[4]["error"]
    for r in records[:4]:
        for d in r["detections"]:
            assert 0 <= d["box"]["xmin"] <= d["box"]["xmax"] <= r["width"]


def test_thousands_of_detections(seeded_weights: SeededWeights, tmp_path: Path) -> None:
    weights = seeded_weights.detector(SSDLITE, boost={c: 7.0 for c in range(1, 91)})
    result = detect(
        weights,
        "--min-score",
        "0.001",
        "--max-detections",
        "5000",
        "--draw-dir",
        str(tmp_path / "d"),
        str(DATA / "rocket.jpg"),
    )
    assert result.code == 0, result.stderr
    (record,) = result.records()
    assert len(record["detections"]) > 1000
    assert len(record["detections"]) <= 5000
    assert (tmp_path / "d" / "rocket.jpg").stat().st_size > 0


def test_non_finite_scores_are_an_error_record(tmp_path: Path) -> None:
    from helpers import detector_state_dict

    state = detector_state_dict(SSDLITE)
    key = "head.regression_head.module_list.0.1.bias"
    state[key][:] = float("nan")
    weights = tmp_path / "nan.pth"
    torch.save(state, weights)
    result = detect(weights, str(DATA / "rocket.jpg"))
    assert result.code == 1
    assert result.records()[0]["error"]["type"] == "NonFiniteOutput"


def test_detect_refuses_a_classifier_and_classification_options(ssdlite: Path) -> None:
    assert_refused(run_ptm(["detect", "-m", "resnet18", str(DATA / "rocket.jpg")]), "ptm classify")
    assert run_ptm(["detect", "-m", SSDLITE, "--resize", "300", str(DATA / "rocket.jpg")]).code == 2
    assert_refused(run_ptm(["classify", "-m", SSDLITE, str(DATA / "rocket.jpg")]), "ptm detect")


def test_report_page_holds_the_boxes(ssdlite: Path, tmp_path: Path) -> None:
    page = tmp_path / "boxes.html"
    result = detect(ssdlite, "--min-score", "0.3", "--report", str(page), str(DATA / "rocket.jpg"))
    assert result.code == 0, result.stderr
    text = page.read_text()
    start = text.index('id="ptm-data">') + len('id="ptm-data">')
    data = json.loads(text[start : text.index("</script>", start)])
    (entry,) = data["entries"]
    boxes = entry["view"]["boxes"]
    record = result.records()[0]
    assert len(boxes) == len(record["detections"]) > 0
    first = record["detections"][0]["box"]
    assert boxes[0]["x"] == pytest.approx(first["xmin"] / record["width"])
    assert boxes[0]["colour"].startswith("#")


def test_listing_detectors_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys; from ptm_cli.cli import run; run(['models', '--task', 'detect']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("False")
    assert "fasterrcnn_resnet50_fpn_v2" in out.stdout
