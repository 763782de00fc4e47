"""`ptm segment`: torchvision parity, full-resolution masks, tiles, cut-outs, instance masks and COCO RLE.

Semantic models hold seeded weights calibrated on a sample photo
(helpers.segmenter_state_dict), so their masks change class across a photo
as a trained model's do. Families are tested with their smallest members
(LRASPP, DeepLabV3-MobileNetV3, FCN-ResNet50); the default DeepLabV3-ResNet101
and Mask R-CNN run once.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import DATA, SeededWeights, assert_refused, run_ptm, segmenter_state_dict, torchvision_detector
from PIL import Image

from ptm_cli.cache.catalog import Catalog
from ptm_cli.output.masks import decode_rle
from ptm_cli.tasks._segmenter import MaskSink, Upsampler, build_segmenter

LRASPP = "lraspp_mobilenet_v3_large"
MASKRCNN = "maskrcnn_resnet50_fpn"
PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg")
SEMANTIC = [
    "deeplabv3_mobilenet_v3_large",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "fcn_resnet50",
    "fcn_resnet101",
    "lraspp_mobilenet_v3_large",
]


@pytest.fixture(scope="module")
def lraspp(seeded_weights: SeededWeights) -> Path:
    return seeded_weights.segmenter(LRASPP, boost={15: 1.0})


def rgb(path: Path | str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def plain_copies(folder: Path, names: tuple[str, ...] = PHOTOS) -> list[Path]:
    """The sample photos without colour profiles: ptm and torchvision then decode the same pixels."""
    copies = []
    for name in names:
        copy = folder / f"{Path(name).stem}.png"
        image = rgb(DATA / name)
        image.info.clear()
        image.save(copy)
        copies.append(copy)
    return copies


def segment(weights: Path, *args: str, model: str = LRASPP) -> Any:
    return run_ptm(["segment", "-m", model, "-w", str(weights), "-f", "jsonl", *args])


def entry(model: str) -> Any:
    return Catalog.load(extra=[]).resolve(model)


def reference_logits(model: str, state: dict[str, torch.Tensor], image: Image.Image) -> torch.Tensor:
    """torchvision's documented usage: ``weights.transforms()(image)``, then ``model(batch)["out"]``."""
    built, preprocess = torchvision_detector(model, state)
    with torch.inference_mode():
        return built(preprocess(image).unsqueeze(0))["out"][0]


def upsampled_argmax(logits: torch.Tensor, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The argmax of the logits upsampled bilinearly to (height, width), and where its top two are too close to call."""
    full = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    top = full.topk(2, dim=0).values
    return full.argmax(0).to(torch.uint8).numpy(), (top[0] - top[1] < 1e-4).numpy()


# --- the catalog --------------------------------------------------------------------------------------------


def test_every_torchvision_segmentation_model_is_in_the_catalog() -> None:
    import torchvision.models as tvm
    import torchvision.models.segmentation as segmentation

    entries = Catalog.load(extra=[]).entries("segment")
    assert {e.model for e in entries} == set(tvm.list_models(module=segmentation)) | {
        "maskrcnn_resnet50_fpn",
        "maskrcnn_resnet50_fpn_v2",
    }
    for e in entries:
        assert e.url and e.sha256 and e.num_classes in (21, 91)
        if e.num_classes == 21:
            assert (e.resize, e.mean, e.std) == (520, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
            assert e.miou and e.pixel_acc
        else:
            assert e.box_map and e.mask_map
    from ptm_cli import tasks

    assert tasks.get("segment").default_model == "deeplabv3_resnet101"


def test_models_lists_segmentation_models_without_torch() -> None:
    result = run_ptm(["models", "--task", "segment", "-f", "jsonl"])
    assert result.code == 0, result.stderr
    names = {json.loads(line)["model"] for line in result.stdout.splitlines()}
    assert set(SEMANTIC) <= names and MASKRCNN in names


# --- parity --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        LRASPP,
        "deeplabv3_mobilenet_v3_large",
        "fcn_resnet50",
        pytest.param("deeplabv3_resnet101", marks=pytest.mark.slow),  # the default, once
    ],
)
def test_logits_equal_torchvisions_and_the_mask_is_their_full_size_argmax(model: str, tmp_path: Path) -> None:
    state = segmenter_state_dict(model, boost={15: 0.5})
    path = tmp_path / "w.pth"
    torch.save(state, path)
    segmenter = build_segmenter(entry(model), weights_file=path)
    for photo in plain_copies(tmp_path, ("chelsea.png", "rocket.jpg")):
        image = rgb(photo)
        ref = reference_logits(model, state, image)
        ours = segmenter.logits(segmenter.input_tensor(image, None)[None])[0]
        assert ours.shape == ref.shape and min(ref.shape[1:]) == 520
        assert torch.allclose(ours, ref, rtol=0, atol=1e-4), (ours - ref).abs().max()
        sink = segmenter.upsampled(ours, (image.height, image.width))
        expected, close = upsampled_argmax(ref, image.height, image.width)
        assert sink.mask.shape == (image.height, image.width)
        assert np.array_equal(sink.mask[~close], expected[~close])
        assert close.mean() < 1e-3
        assert len(np.unique(sink.mask)) >= 3  # the calibrated weights give a real mask to compare


@pytest.mark.parametrize(
    ("rows", "cols", "height", "width", "chunk"),
    [(65, 87, 720, 1280, 7), (520, 693, 1500, 2000, 64), (33, 20, 101, 77, 5), (50, 50, 50, 50, 3), (16, 16, 9, 9, 4)],
)
def test_banded_upsampling_is_torchs_bilinear_upsampling(
    rows: int, cols: int, height: int, width: int, chunk: int
) -> None:
    """Rows arriving a band at a time give F.interpolate's values (within float rounding) and its argmax."""
    torch.manual_seed(rows)
    logits = torch.randn(21, rows, cols) * 3
    full = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    sink = MaskSink(height, width, 21, frozenset({3, 5}))
    upsampler = Upsampler((rows, cols), (height, width), sink)
    for start in range(0, rows, chunk):
        upsampler.push(logits[:, start : start + chunk])
    assert sink.done()
    top = full.topk(2, dim=0).values
    decided = (top[0] - top[1] >= 1e-5).numpy()
    assert np.array_equal(sink.mask[decided], full.argmax(0).to(torch.uint8).numpy()[decided])
    assert np.array_equal(sink.counts, np.bincount(sink.mask.ravel(), minlength=21))
    alpha = (torch.softmax(full, 0)[[3, 5]].sum(0) * 255).round().to(torch.uint8).numpy()
    assert np.abs(alpha.astype(int) - sink.alpha.astype(int)).max() <= 1


# --- tiles -------------------------------------------------------------------------------------------------------


def tiled_and_whole(model: str, state: dict[str, torch.Tensor], image: Image.Image, tile: int, tmp_path: Path) -> Any:
    path = tmp_path / f"{model}.pth"
    torch.save(state, path)
    segmenter = build_segmenter(entry(model), weights_file=path)
    x = segmenter.input_tensor(image, "full")
    size = (image.height, image.width)
    whole = segmenter.segment(x, size, tile=4096).mask  # one pass
    tiled = segmenter.segment(x, size, tile=tile).mask
    sink = MaskSink(*size, segmenter.classes)
    upsampler = Upsampler(size, size, sink)
    segmenter._tiled(x, tile, 64, None, upsampler.push, None, fit=False)  # each tile pools itself
    return whole, tiled, sink.mask


def test_tiles_with_whole_image_pooling_agree_with_one_pass(tmp_path: Path) -> None:
    """A DeepLabV3 whose reach is short: tiles agree with one pass; tiles that pool themselves do not."""
    model = "deeplabv3_resnet50"
    state = segmenter_state_dict(model, seed=3, short_reach=True)
    image = rgb(DATA / "rocket.jpg").resize((608, 400))
    whole, tiled, self_pooled = tiled_and_whole(model, state, image, 256, tmp_path)
    assert len(np.unique(whole)) >= 5
    agreement = float((whole == tiled).mean())
    assert agreement >= 0.995, agreement
    assert float((whole == self_pooled).mean()) < 0.995


@pytest.mark.parametrize(
    ("model", "floor"),
    # DeepLabV3-MobileNetV3's widest dilated branch reaches 576 pixels (rate 36 at stride 16): past a 384 tile.
    [(LRASPP, 0.9), ("deeplabv3_mobilenet_v3_large", 0.7)],
)
def test_tiles_of_full_networks_mostly_agree_with_one_pass(model: str, floor: float, tmp_path: Path) -> None:
    """Full seeded networks reach further than any overlap; scripts/bench_segment.py measures how far."""
    state = segmenter_state_dict(model, seed=1)
    image = rgb(DATA / "rocket.jpg").resize((640, 432))  # a multiple of the stride: one pass has the tiles' grid
    whole, tiled, self_pooled = tiled_and_whole(model, state, image, 384, tmp_path)
    agreement = float((whole == tiled).mean())
    assert agreement >= floor
    assert agreement > float((whole == self_pooled).mean())


# --- the command: records, masks, overlays, cut-outs ----------------------------------------------------------


def test_records_masks_overlays_and_cutouts(lraspp: Path, tmp_path: Path) -> None:
    photos = plain_copies(tmp_path, ("chelsea.png", "rocket.jpg"))
    result = segment(lraspp, "--mask", "--overlay", "--cutout", "person", *map(str, photos))
    assert result.code == 0, result.stderr
    state = torch.load(lraspp, weights_only=True)
    for record, photo in zip(result.records(), photos, strict=True):
        image = rgb(photo)
        assert (record["width"], record["height"]) == image.size
        shares = [c["share"] for c in record["coverage"]]
        assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(1, abs=1e-4)
        assert record["mask"] == str(photo.with_name(f"{photo.stem}.mask.png"))
        with Image.open(record["mask"]) as mask_image:
            assert (mask_image.mode, mask_image.size) == ("P", image.size)
            mask = np.asarray(mask_image)
            from ptm_cli.output.drawing import class_colour

            assert tuple(mask_image.getpalette()[15 * 3 : 16 * 3]) == class_colour("person")  # type: ignore[index]
        counts = np.bincount(mask.ravel(), minlength=21)
        for c in record["coverage"]:
            assert c["share"] == pytest.approx(counts[c["class_id"]] / mask.size, abs=1e-6)
        ref = reference_logits(LRASPP, state, image)
        expected, close = upsampled_argmax(ref, image.height, image.width)
        assert np.array_equal(mask[~close], expected[~close])
        with Image.open(record["overlay"]) as overlay:
            assert (overlay.format, overlay.size) == ("JPEG", image.size)
        with Image.open(record["cutout"]) as cut:
            assert (cut.mode, cut.size) == ("RGBA", image.size)
            alpha = np.asarray(cut)[..., 3].astype(int)
            colours = np.asarray(cut)[..., :3]
        full = F.interpolate(ref[None], size=(image.height, image.width), mode="bilinear", align_corners=False)[0]
        probability = (torch.softmax(full, 0)[15] * 255).round().numpy()
        assert np.abs(alpha - probability).max() <= 1  # soft edges: the class probability itself
        assert np.array_equal(colours, np.asarray(image))
        assert alpha[mask == 15].min() >= 0 and alpha[mask == 15].mean() > alpha[mask != 15].mean()


def test_cutouts_keep_the_photos_own_transparency(lraspp: Path, tmp_path: Path) -> None:
    opaque = rgb(DATA / "chelsea.png")
    rgba = opaque.convert("RGBA")
    pixels = np.asarray(rgba).copy()
    pixels[:, : opaque.width // 2, 3] = 0  # the left half is transparent
    pixels[:, : opaque.width // 2, :3] = (250, 10, 10)  # with a colour the composite hides
    Image.fromarray(pixels).save(tmp_path / "clear.png")
    flat = Image.fromarray(pixels).convert("RGBA")
    white = Image.new("RGB", flat.size, (255, 255, 255))
    white.paste(flat, (0, 0), flat)
    white.save(tmp_path / "flat.png")
    result = segment(lraspp, "--cutout", "person,cat", str(tmp_path / "clear.png"), str(tmp_path / "flat.png"))
    assert result.code == 0, result.stderr
    clear, flat_record = result.records()
    assert clear["coverage"] == flat_record["coverage"]  # the model saw the same (flattened) pixels
    with Image.open(clear["cutout"]) as a, Image.open(flat_record["cutout"]) as b:
        kept, reference = np.asarray(a), np.asarray(b)
    half = opaque.width // 2
    assert kept[:, :half, 3].max() == 0  # transparent stays transparent
    assert np.array_equal(kept[:, half:, 3], reference[:, half:, 3])
    assert np.array_equal(kept[:, half:, :3], np.asarray(opaque)[:, half:])


def test_a_class_the_model_lacks_is_a_usage_error_before_it_loads(tmp_path: Path) -> None:
    missing = tmp_path / "not-there.pth"
    missing.write_bytes(b"not weights")
    result = segment(missing, "--cutout", "person,unicorn", str(DATA / "chelsea.png"))
    assert_refused(result, "unicorn", "aeroplane", "person", "tvmonitor")
    assert "__background__" not in result.stderr


def test_the_mask_to_a_file_or_stdout(lraspp: Path, tmp_path: Path) -> None:
    photo = plain_copies(tmp_path, ("chelsea.png",))[0]
    to_file = segment(lraspp, "-o", str(tmp_path / "m.png"), str(photo))
    assert to_file.code == 0, to_file.stderr
    assert to_file.records()[0]["mask"] == str(tmp_path / "m.png")
    to_stdout = run_ptm(["segment", "-m", LRASPP, "-w", str(lraspp), "-o", "-", str(photo)])
    assert to_stdout.code == 0, to_stdout.stderr
    with Image.open(io.BytesIO(to_stdout.stdout_bytes)) as streamed, Image.open(tmp_path / "m.png") as written:
        assert streamed.mode == "P" and np.array_equal(np.asarray(streamed), np.asarray(written))
    cut = segment(lraspp, "--cutout", "person", "-o", str(tmp_path / "c.png"), str(photo))
    assert cut.code == 0 and cut.records()[0]["cutout"] == str(tmp_path / "c.png")
    assert_refused(segment(lraspp, "-o", str(tmp_path / "x.png"), str(photo), str(photo)), "-o names one")
    assert_refused(segment(lraspp, "--mask", "--overlay", "-o", str(tmp_path / "y.png"), str(photo)), "--output-dir")
    assert_refused(segment(lraspp, "--cutout", "cat", "-o", str(tmp_path / "z.jpg"), str(photo)), "lossless")


def test_existing_outputs_are_kept_without_force(lraspp: Path, tmp_path: Path) -> None:
    photo = plain_copies(tmp_path, ("chelsea.png",))[0]
    mask = photo.with_name("chelsea.mask.png")
    mask.write_bytes(b"mine")
    kept = segment(lraspp, "--mask", str(photo))
    assert kept.code == 1 and "already exists" in kept.records()[0]["error"]["message"]
    assert mask.read_bytes() == b"mine"
    forced = segment(lraspp, "--mask", "--force", str(photo))
    assert forced.code == 0, forced.stderr
    with Image.open(mask) as image:
        assert image.mode == "P"


def test_mask_dir_writes_there_and_refuses_a_symlink(lraspp: Path, tmp_path: Path) -> None:
    photos = plain_copies(tmp_path, ("chelsea.png", "coffee.png"))
    result = segment(lraspp, "--mask-dir", str(tmp_path / "masks"), *map(str, photos))
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["chelsea.mask.png", "coffee.mask.png"]
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.symlink(target, tmp_path / "link")
    assert_refused(segment(lraspp, "--mask-dir", str(tmp_path / "link"), str(photos[0])), "symbolic link")
    assert list(target.iterdir()) == []


def test_full_resolution_in_tiles_from_the_command_line(lraspp: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    rgb(DATA / "rocket.jpg").resize((900, 600)).save(big)
    tiles = segment(lraspp, "--size", "full", "--tile", "256", "--mask", str(big))
    assert tiles.code == 0, tiles.stderr
    record = tiles.records()[0]
    assert (record["width"], record["height"]) == (900, 600)
    with Image.open(record["mask"]) as mask:
        assert mask.size == (900, 600)


def test_csv_and_table_rows(lraspp: Path) -> None:
    csv = run_ptm(["segment", "-m", LRASPP, "-w", str(lraspp), "-f", "csv", str(DATA / "chelsea.png")])
    assert csv.code == 0, csv.stderr
    lines = csv.stdout.splitlines()
    assert lines[0] == "input,rank,label,class_id,share,score,xmin,ymin,xmax,ymax,area,error"
    assert len(lines) > 2 and lines[1].split(",")[1] == "1"
    table = run_ptm(["segment", "-m", LRASPP, "-w", str(lraspp), "-f", "table", str(DATA / "chelsea.png")])
    assert table.code == 0 and "%" in table.stdout


def test_odd_images_give_records_or_clear_errors(lraspp: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    Image.new("L", (1, 1), 7).save(tmp_path / "dot.png")
    Image.new("RGB", (3000, 2), (9, 9, 9)).save(tmp_path / "strip.png")
    Image.new("I;16", (40, 30), 30000).save(tmp_path / "deep.png")
    names = ["empty.png", "text.jpg", "dot.png", "strip.png", "deep.png"]
    result = segment(lraspp, "--mask", *(str(tmp_path / n) for n in names))
    assert result.code == 1
    records = {Path(r["input"]).name: r for r in result.records()}
    assert records["empty.png"]["error"]["type"] == "UnreadableImage"
    assert records["text.jpg"]["error"]["type"] in ("UnreadableImage", "UnsupportedFormat")
    for name, size in (("dot.png", (1, 1)), ("deep.png", (40, 30))):
        assert (records[name]["width"], records[name]["height"]) == size
        with Image.open(records[name]["mask"]) as mask:
            assert mask.size == size
    strip = records["strip.png"]
    assert "error" in strip or (strip["width"], strip["height"]) == (3000, 2)


def test_non_finite_scores_are_an_error_record(tmp_path: Path) -> None:
    state = segmenter_state_dict(LRASPP)
    state[next(k for k in state if k.startswith("classifier.") and k.endswith("bias"))][3] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    result = segment(tmp_path / "nan.pth", "--mask", str(DATA / "chelsea.png"))
    assert result.code == 1
    assert result.records()[0]["error"]["type"] == "NonFiniteOutput"


def test_semantic_and_instance_options_stay_apart(lraspp: Path, tmp_path: Path) -> None:
    photo = str(DATA / "chelsea.png")
    assert_refused(segment(lraspp, "--coco", str(tmp_path / "c.json"), photo), "--coco", "instance")
    assert_refused(segment(lraspp, "--classes", "person", photo), "--classes", "instance")
    assert_refused(run_ptm(["segment", "-m", "ssdlite320_mobilenet_v3_large", photo]), "ptm detect")
    assert_refused(run_ptm(["segment", "-m", MASKRCNN, "--size", "full", photo]), "--size", "semantic")


def test_the_python_api(lraspp: Path) -> None:
    from ptm_cli.images.inputs import ImageInput
    from ptm_cli.tasks.base import ModelOptions
    from ptm_cli.tasks.segment import load_segmenter, segment_images, semantic_record

    segmenter = load_segmenter(ModelOptions(LRASPP, weights=str(lraspp)), progress=False)
    results = list(segment_images([ImageInput(str(DATA / "coffee.png"), path=DATA / "coffee.png")], segmenter))
    record = semantic_record(results[0], segmenter)
    assert results[0].mask.shape == (record["height"], record["width"]) and record["coverage"]


# --- instance segmentation: Mask R-CNN ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def maskrcnn(seeded_weights: SeededWeights) -> Path:
    return seeded_weights.detector(MASKRCNN, boost={1: 3.0, 17: 2.0})  # person, cat


@pytest.mark.slow
def test_mask_rcnn_equals_torchvision_and_its_coco_file_evaluates(maskrcnn: Path, tmp_path: Path) -> None:
    from pycocotools import mask as coco_mask
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    photos = plain_copies(tmp_path, ("chelsea.png", "coffee.png"))
    coco_file = tmp_path / "results.json"
    result = run_ptm(
        [
            "segment",
            "-m",
            MASKRCNN,
            "-w",
            str(maskrcnn),
            "-f",
            "jsonl",
            "--min-score",
            "0.05",
            "--coco",
            str(coco_file),
            "--mask-dir",
            str(tmp_path / "masks"),
            "--cutout",
            "person",
            *map(str, photos),
        ]
    )
    assert result.code == 0, result.stderr
    records = result.records()
    built, preprocess = torchvision_detector(MASKRCNN, torch.load(maskrcnn, weights_only=True))
    for record, photo in zip(records, photos, strict=True):
        image = rgb(photo)
        with torch.inference_mode():
            ref = built([preprocess(image)])[0]
        keep = ref["scores"] >= 0.05
        found = record["detections"]
        assert len(found) == int(keep.sum()) > 0
        for d, box, score, masks in zip(
            found, ref["boxes"][keep], ref["scores"][keep], ref["masks"][keep], strict=True
        ):
            assert d["score"] == pytest.approx(float(score), rel=1e-4, abs=1e-6)
            mine_box = [d["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")]
            assert mine_box == pytest.approx(box.tolist(), rel=1e-4, abs=1e-4)
            expected = (masks[0] > 0.5).numpy().astype(np.uint8)
            mine = decode_rle(d["mask"])
            assert np.array_equal(mine, expected)
            assert d["area"] == int(expected.sum())
        assert len(record["masks"]) == len(found)
        for path, d in zip(record["masks"], found, strict=True):
            with Image.open(path) as png:
                decoded = decode_rle(d["mask"])
                assert np.array_equal(np.asarray(png) > 0, decoded > 0)
        people = [d for d in found if d["label"] == "person"]
        assert len(record["cutouts"]) == len(people)
        for path in record["cutouts"]:
            with Image.open(path) as cut:
                assert cut.mode == "RGBA" and ".person." in Path(path).name
    ground_truth = COCO(str(coco_file))
    assert len(ground_truth.getImgIds()) == 2 and ground_truth.getAnnIds()
    annotations = json.loads(coco_file.read_text())["annotations"]
    detections = ground_truth.loadRes(annotations)
    areas = [d["area"] for r in records for d in r["detections"]]
    segmentations = [a["segmentation"] for a in detections.loadAnns(detections.getAnnIds())]
    assert [int(coco_mask.area({**m, "counts": m["counts"].encode()})) for m in segmentations] == areas
    evaluation = COCOeval(ground_truth, detections, "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    # The results are the ground truth; only overlapping objects of one class (the seeded model finds many
    # around the same spot) can be matched to a neighbour instead of themselves.
    assert evaluation.stats[0] > 0.7


@pytest.mark.slow
def test_mask_rcnn_cutouts_keep_the_photos_transparency(maskrcnn: Path, tmp_path: Path) -> None:
    """Objects cut out of a photo with transparency stay transparent where the photo was."""
    pixels = np.asarray(rgb(DATA / "coffee.png").convert("RGBA")).copy()
    pixels[..., 3] = 0  # every pixel transparent; the model still sees the photo composited onto white
    Image.fromarray(pixels).save(tmp_path / "clear.png")
    args = ["segment", "-m", MASKRCNN, "-w", str(maskrcnn), "-f", "jsonl", "--min-score", "0.05"]
    result = run_ptm(
        [*args, "--cutout", "spoon,person,cat", "--output-dir", str(tmp_path / "out"), str(tmp_path / "clear.png")]
    )
    assert result.code == 0, result.stderr
    record = result.records()[0]
    assert record["cutouts"], record["detections"][:3]
    for path in record["cutouts"]:
        with Image.open(path) as cut:
            assert cut.mode == "RGBA" and np.asarray(cut)[..., 3].max() == 0


def test_every_segmentation_model_builds_as_torchvision_builds_it_for_its_weights() -> None:
    """ptm's network for each entry is torchvision's for the weights: modules (norms, heads) and tensor shapes.

    Both are built on the meta device (no memory, nothing downloaded); torchvision's builder loads
    ptm's state dict strictly, so every key and shape has to match.
    """
    from ptm_cli.nets import architectures

    for e in Catalog.load(extra=[]).entries("segment"):
        with torch.device("meta"):
            ours = architectures.factory(e)()
            theirs, _ = torchvision_detector(e.model, ours.state_dict(), e.weights)
        assert repr(ours) == repr(theirs), e.model
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in theirs.state_dict().items()
        }


def test_a_batch_gives_each_photo_the_mask_it_gets_alone(lraspp: Path, tmp_path: Path) -> None:
    """Photos of one size share a forward pass with --batch-size; records and masks stay byte for byte."""
    photo = rgb(DATA / "rocket.jpg")
    names = []
    for i in range(4):
        path = tmp_path / f"r{i}.png"
        photo.rotate(10 * i).save(path)
        names.append(str(path))
    alone = segment(lraspp, "--batch-size", "1", "--mask-dir", str(tmp_path / "one"), *names)
    batched = segment(lraspp, "--batch-size", "4", "--mask-dir", str(tmp_path / "four"), *names)
    assert alone.code == batched.code == 0, batched.stderr
    assert [r["coverage"] for r in alone.records()] == [r["coverage"] for r in batched.records()]
    for a, b in zip(alone.records(), batched.records(), strict=True):
        assert Path(a["mask"]).read_bytes() == Path(b["mask"]).read_bytes()
