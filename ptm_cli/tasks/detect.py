"""Object detection: boxes (and people's keypoints) from torchvision's COCO detectors, at any photo size.

:func:`detect_images` feeds a :class:`~._detector.Detector` through the
shared pipeline (:mod:`._pipeline`): one result per input, in input order, a
failed input carrying its error. Batches hold images of one size only: a
detector pads every image of a batch to the largest one, and the padding
changes the features near the edges and so the boxes; images of one size need
no padding, so a batch gives each image exactly the boxes it gets alone.
:data:`TASK` is ``ptm detect``; what it writes besides records is in
:mod:`._detect_files`, the model and tiles in :mod:`._detector`.

Importing this module imports neither torch nor torchvision.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..errors import InputError, OutputError, PtmError, UsageError
from ._detect_files import CocoFile, SideOutputs, check_coco_path, check_crops_folder, coco_categories
from ._detector import (
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_MIN_SCORE,
    MAX_DETECTIONS,
    MIN_TILE,
    Detection,
    Detector,
    ImageDetections,
    Limits,
    build_detector,
    check_entry,
    class_ids,
)
from .base import (
    VIDEO_OUTPUT_OPTIONS,
    WORKERS_OPTION,
    ModelOptions,
    Option,
    Outcome,
    Plan,
    RunContext,
    Task,
    batch_size_option,
)

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ..cache.catalog import Catalog
    from ..images.inputs import ImageInput
    from ..output.records import RecordWriter

__all__ = ["TASK", "Detection", "Detector", "ImageDetections", "Limits", "detect_images", "load_detector", "to_record"]

# --- over many inputs ---------------------------------------------------------------------------------


def detect_images(
    inputs: Iterable[ImageInput],
    detector: Detector,
    *,
    limits: Limits | None = None,
    tile: int | None = None,
    batch_size: int = 2,
    workers: int = 2,
    keep_pixels: bool = False,
    on_image: Callable[[ImageInput, Image.Image], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    on_tile: Callable[[int, int], None] | None = None,
    before_run: Callable[[ImageInput], None] | None = None,
    keep_alpha: bool = False,
) -> Iterator[ImageDetections]:
    """Detect objects in ``inputs``; one result per input, in input order.

    ``keep_pixels`` puts each decoded image on its result (to draw or crop
    from). ``before_run(item)`` may refuse an input before its forward pass
    by raising an InputError (an output that exists). With ``tile``, each
    image runs alone, in tiles (see the module's docstring). ``keep_alpha``
    gives ``on_image`` an image with transparency as RGBA (the detector sees
    it composited onto white, as always).
    """
    from ._pipeline import run_batched

    chosen = limits or Limits()
    if tile is not None and tile < MIN_TILE:
        raise UsageError(f"--tile must be at least {MIN_TILE} pixels")

    def load(item: ImageInput) -> Any:
        from ..images.colour import to_rgb
        from ..images.transforms import pixels_chw

        try:
            if before_run is not None:
                before_run(item)
            image = item.open(on_note=on_note, keep_alpha=keep_alpha)
            if on_image is not None:
                on_image(item, image)
            return pixels_chw(to_rgb(image))
        except InputError as exc:
            return exc

    def forward(batch: torch.Tensor) -> list[Any]:
        if tile is not None:
            found = [detector.detect(image, chosen, tile=tile, on_tile=on_tile) for image in batch]
        else:
            found = list(detector.detect_each(batch, chosen))
        size = (int(batch.shape[2]), int(batch.shape[3]))
        return [(result, image if keep_pixels else None, size) for result, image in zip(found, batch, strict=True)]

    size = 1 if tile is not None else batch_size
    results = run_batched(inputs, load, forward, model=detector, batch_size=size, workers=workers)
    try:
        for item, outcome in results:
            if isinstance(outcome, PtmError):
                yield ImageDetections(item.name, error=outcome)
                continue
            found, pixels, (height, width) = outcome
            if isinstance(found, PtmError):
                yield ImageDetections(item.name, error=found)
                continue
            yield ImageDetections(item.name, width, height, found, pixels=pixels)
    finally:
        _close(results)


def _close(iterator: Iterator[Any]) -> None:
    """Stop a generator now (its decoding threads with it) when its caller stops early."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def to_record(result: ImageDetections, detector: Detector) -> dict[str, Any]:
    """The JSON record ptm writes for one input."""
    from ..output.records import round_float

    if result.error is not None:
        return {"input": result.input, "error": result.error.record()}
    detections = []
    for d in result.detections or []:
        item: dict[str, Any] = {
            "label": d.label,
            "category_id": d.category_id,
            "score": round_float(d.score),
            "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), map(round_float, d.box), strict=True)),
        }
        if d.keypoints is not None:
            item["keypoints"] = [
                {"name": k.name, "x": round_float(k.x), "y": round_float(k.y), "score": round_float(k.score)}
                for k in d.keypoints
            ]
        detections.append(item)
    return {
        "input": result.input,
        "model": detector.entry.model,
        "weights": detector.weights_label,
        "width": result.width,
        "height": result.height,
        "detections": detections,
    }


def load_detector(options: ModelOptions, *, progress: bool = True) -> Detector:
    """A ready :class:`Detector` for ``options`` (:class:`~.base.ModelOptions`), exactly as ``ptm detect`` builds it."""
    detector: Detector = TASK.plan(options).load(progress=progress)
    return detector


# --- the task ---------------------------------------------------------------------------------------------


def _box_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "error" in record:
        error = record["error"]
        return [{"input": record["input"], "error": f"{error['type']}: {error['message']}"}]
    rows = []
    for rank, d in enumerate(record["detections"], start=1):
        rows.append(
            {
                "input": record["input"],
                "rank": rank,
                "label": d["label"],
                "category_id": d["category_id"],
                "score": d["score"],
                **d["box"],
            }
        )
    return rows or [{"input": record["input"]}]


class DetectTask(Task["Detector"]):
    name = "detect"
    title = "Detection"
    summary = "Find objects in IMAGES with a COCO detector: labelled boxes (and people's keypoints)."
    help = """Find objects in IMAGES (files, directories, or - for stdin): labelled boxes with scores.

    Keypoint models (keypointrcnn_resnet50_fpn) also give each person's 17
    keypoints. Boxes are in the pixels of the image as you see it (EXIF
    orientation applied).

    \b
    Examples:
      ptm detect street.jpg
      ptm detect -m ssdlite320_mobilenet_v3_large --classes person,dog -f csv photos/ > boxes.csv
      ptm detect --draw photos/                       # photos/x.detect.jpg beside each input
      ptm detect --draw -o boxes.png --min-score 0.3 street.jpg
      ptm detect --crops crops/ --coco results.json photos/
      ptm detect --tile 1024 big-photo.jpg            # small objects in a 12-megapixel photo
      ptm detect -m keypointrcnn_resnet50_fpn --draw -o pose.jpg people.jpg
    """
    batch_help = """Detect objects in IMAGES (files, folders, --files-from) into shard files under --output DIR.

    \b
    Examples:
      ptm batch detect -r photos/ --output boxes1
      ptm batch detect -m ssdlite320_mobilenet_v3_large --classes person -r photos/ --output people --engine ray
    """
    default_model = "fasterrcnn_resnet50_fpn_v2"
    model_help = "A detection model (see `ptm models --task detect`)."
    weights_help = "Weights variant (COCO_V1, DEFAULT, ...), or the path of a local weights file."
    options = (
        Option(
            "min_score",
            ("--min-score",),
            "Keep detections scoring at least this (0 to 1).",
            kind="float",
            default=DEFAULT_MIN_SCORE,
            minimum=0,
            maximum=1,
            show_default=True,
        ),
        Option(
            "classes",
            ("--classes",),
            "Keep only these classes, comma-separated (e.g. person,dog).",
            metavar="NAMES",
            completion="classes",
        ),
        Option(
            "max_detections",
            ("--max-detections",),
            "Keep at most this many detections per image (the best).",
            kind="int",
            default=DEFAULT_MAX_DETECTIONS,
            minimum=1,
            maximum=MAX_DETECTIONS,
            show_default=True,
        ),
        Option(
            "tile",
            ("--tile",),
            "Also run overlapping N x N tiles and merge them, to find small objects in large photos.",
            kind="int",
            minimum=MIN_TILE,
            metavar="N",
        ),
        batch_size_option(2, 256, "Images per forward pass (images of one size share a pass)."),
        WORKERS_OPTION,
        Option(
            "draw",
            ("--draw",),
            kind="flag",
            batch=(),
            records=False,
            help="Write each image with its boxes drawn, beside its input (photo.detect.jpg).",
        ),
        Option(
            "output",
            ("-o", "--output"),
            metavar="FILE|-",
            batch=(),
            records=False,
            help="The drawn image of one input, as FILE ('-': stdout, records of failures on stderr).",
        ),
        Option(
            "output_dir",
            ("--draw-dir",),
            kind="dir",
            batch=(),
            records=False,
            help="Folder for the drawn images (names keep the input's stem).",
        ),
        Option(
            "suffix",
            ("--suffix",),
            default="",
            batch=(),
            records=False,
            help="Added to each drawn image's stem (default beside the input: .detect).",
        ),
        Option(
            "image_format",
            ("--image-format",),
            metavar="FORMAT",
            batch=(),
            records=False,
            help="Format of drawn images and crops (png, jpeg, webp, bmp, tiff); default: -o's extension, "
            "else jpeg for drawings and png for crops.",
        ),
        Option(
            "crops",
            ("--crops",),
            metavar="DIR",
            batch=(),
            records=False,
            help="Save each detection as its own image in this folder (photo.person.1.png).",
        ),
        Option(
            "coco",
            ("--coco",),
            metavar="FILE",
            batch=(),
            records=False,
            help="Also write the detections as a COCO file (images, categories, and results pycocotools loads).",
        ),
        Option(
            "force",
            ("--force",),
            kind="flag",
            batch=(),
            records=False,
            help="Overwrite existing drawn images, crops, --coco and --report files.",
        ),
        *VIDEO_OUTPUT_OPTIONS,
    )
    shares_forward_passes = False
    flush_every = "batch_size"
    beside_tag = "detect"
    default_image_format = "JPEG"
    columns = ("input", "rank", "label", "category_id", "score", "xmin", "ymin", "xmax", "ymax", "error")

    def refuses_videos(self, params: Mapping[str, Any]) -> str | None:
        if params.get("coco") is not None:
            return "a --coco file describes images; run without --coco for its frames' records"
        return None

    def writes_images(self, params: Mapping[str, Any]) -> bool:
        return bool(params.get("draw") or params.get("output") is not None or params.get("output_dir") is not None)

    def check(self, params: Mapping[str, Any]) -> None:
        from ..settings import check_side_pixels

        if params.get("tile") is not None:
            check_side_pixels("--tile", params["tile"])
        score = params.get("min_score", DEFAULT_MIN_SCORE)
        if not (isinstance(score, int | float) and 0 <= score <= 1):
            raise UsageError("--min-score must be a number from 0 to 1")
        if params.get("crops") is not None:
            check_crops_folder(Path(params["crops"]))
        if params.get("coco") is not None:
            check_coco_path(Path(params["coco"]), force=bool(params.get("force")))

    def check_plan(self, plan: Plan[Detector], params: Mapping[str, Any]) -> None:
        """An unknown --classes name is a usage error, before the model loads."""
        if params.get("classes") is None or plan.entry is None:
            return
        from ..cache.catalog import is_class, load_labels

        labels = load_labels(plan.entry) or []
        known = {label.lower(): i for i, label in enumerate(labels) if is_class(label)}
        class_ids(str(params["classes"]).split(","), known, plan.entry.ref)

    def plan(self, options: ModelOptions, *, catalog: Catalog | None = None) -> Plan[Detector]:
        if options.resize is not None or options.crop is not None:
            raise UsageError("detectors resize their inputs themselves; --resize and --crop do not apply")
        planned = super().plan(options, catalog=catalog)
        assert planned.entry is not None
        check_entry(planned.entry)
        return planned

    def build(self, plan: Plan[Detector], *, progress: bool) -> Detector:
        assert plan.entry is not None
        options = plan.options
        return build_detector(
            plan.entry,
            weights_file=plan.weights_file,
            weights_label=plan.weights_label,
            device=options.device,
            precision=options.precision,
            progress=progress,
        )

    def limits(self, model: Detector, params: Mapping[str, Any]) -> Limits:
        classes = params.get("classes")
        return Limits(
            min_score=float(params.get("min_score", DEFAULT_MIN_SCORE)),
            max_detections=int(params.get("max_detections", DEFAULT_MAX_DETECTIONS)),
            classes=None if classes is None else model.class_ids(str(classes).split(",")),
        )

    def run(
        self, model: Detector, inputs: Iterable[ImageInput], params: Mapping[str, Any], context: RunContext
    ) -> Iterator[Outcome]:
        crops = params.get("crops")
        image_format = params.get("image_format")
        if image_format:
            from ..output.imagefiles import image_format_for

            image_format = image_format_for("", image_format)
        side = SideOutputs(context, None if crops is None else check_crops_folder(Path(crops)), image_format)
        coco_path = params.get("coco")
        coco = CocoFile(coco_categories(model)) if coco_path is not None else None
        on_image = context.on_image
        items: collections.deque[ImageInput] = collections.deque()  # taken in input order, as results come

        def remember(item: ImageInput, image: Any) -> None:
            if on_image is not None:
                on_image(item.name, image)

        def tracked(source: Iterable[ImageInput]) -> Iterator[ImageInput]:
            for item in source:
                items.append(item)
                yield item

        results = detect_images(
            tracked(inputs),
            model,
            limits=self.limits(model, params),
            tile=params.get("tile"),
            batch_size=int(params.get("batch_size", 2)),
            workers=int(params.get("workers", 2)),
            keep_pixels=side.active,
            on_image=remember if on_image is not None else None,
            on_note=context.on_note,
            on_tile=context.on_tile,
            before_run=side.before_run if side.destination is not None else None,
        )
        try:
            for result in results:
                record = to_record(result, model)
                item = items.popleft()
                if result.ok and side.active:
                    try:
                        side.write(item, result.pixels, record)
                    except BrokenPipeError:
                        raise
                    except InputError as exc:
                        record = {"input": result.input, "error": exc.record()}
                    except OSError as exc:
                        record = {"input": result.input, "error": OutputError(f"{result.input}: {exc}").record()}
                if coco is not None:
                    coco.add(record)
                yield Outcome(record)
        finally:
            _close(results)
        if coco is not None and coco_path is not None:
            from ..output.imagefiles import write_output

            write_output(Path(coco_path), coco.data(), force=True)

    def writer(self, stream: IO[str], fmt: str | None) -> RecordWriter:
        """One row per detection in csv/tsv/table."""
        from ..output.records import RecordWriter, default_format

        chosen = fmt or default_format(stream)
        if chosen == "table":

            def table_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
                rows = _box_rows(record)
                for i, row in enumerate(rows):
                    if "score" in row:
                        row["score"] = f"{row['score']:.3f}"
                        row["box"] = " ".join(f"{row.pop(k):.1f}" for k in ("xmin", "ymin", "xmax", "ymax"))
                    if i:
                        row["input"] = ""
                return rows

            return RecordWriter(
                stream,
                chosen,
                columns=["input", "rank", "label", "score", "box", "error"],
                flatten=table_rows,
                table_style=lambda row: "red" if row.get("error") else None,
                optional=["error"],
            )
        return RecordWriter(stream, chosen, columns=list(self.columns), flatten=_box_rows)

    def parquet_fields(self) -> list[tuple[str, Any]]:
        import pyarrow as pa

        box = pa.struct([(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")])
        point = pa.struct([("name", pa.string()), ("x", pa.float64()), ("y", pa.float64()), ("score", pa.float64())])
        detection = pa.struct(
            [
                ("label", pa.string()),
                ("category_id", pa.int32()),
                ("score", pa.float64()),
                ("box", box),
                ("keypoints", pa.list_(point)),
            ]
        )
        return [
            ("input", pa.string()),
            ("model", pa.string()),
            ("weights", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("detections", pa.list_(detection)),
        ]

    def report_header(self, model: Detector, params: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "model": model.entry.model,
            "weights": model.weights_label,
            "min score": params.get("min_score", DEFAULT_MIN_SCORE),
            "classes": params.get("classes"),
            "tile": params.get("tile"),
            "device": str(model.device),
            "precision": model.precision.name,
        }

    def batch_report_header(self, job: Mapping[str, Any]) -> dict[str, Any]:
        return {
            **super().batch_report_header(job),
            "min score": job.get("min_score"),
            "classes": job.get("classes"),
            "tile": job.get("tile"),
        }

    def report_view(self, record: Mapping[str, Any]) -> dict[str, Any]:
        from ..output.drawing import hex_colour, skeleton_for

        width, height = max(1, int(record.get("width") or 1)), max(1, int(record.get("height") or 1))
        boxes = []
        for d in record.get("detections") or []:
            b = d["box"]
            label = d["label"] if d["label"] is not None else f"#{d['category_id']}"
            view: dict[str, Any] = {
                "label": label,
                "text": f"{label} {d['score']:.2f}",
                "colour": hex_colour(label),
                "x": b["xmin"] / width,
                "y": b["ymin"] / height,
                "w": (b["xmax"] - b["xmin"]) / width,
                "h": (b["ymax"] - b["ymin"]) / height,
            }
            if d.get("keypoints"):
                points = d["keypoints"]
                view["points"] = [[k["x"] / width, k["y"] / height] for k in points]
                view["edges"] = [list(edge) for edge in skeleton_for([k["name"] for k in points])]
            boxes.append(view)
        count = len(boxes)
        return {"boxes": boxes, "lines": [f"{count} object{'s' if count != 1 else ''} ({width}x{height})"]}


TASK = DetectTask()
