"""Segmentation: which pixels are what, from torchvision's semantic and instance (Mask R-CNN) models.

Semantic models label every pixel with one of Pascal VOC's 21 classes; the
record gives each present class's share of the pixels (``coverage``) and the
mask is made at the input's full resolution (:mod:`._segmenter`). Instance
models find objects as ``ptm detect`` does and give each its mask as COCO
RLE and its area (:mod:`._detector`). What is written besides records is in
:mod:`._segment_files`. :data:`TASK` is ``ptm segment``.

Importing this module imports neither torch nor torchvision.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..errors import UsageError
from ._detect_files import coco_categories
from ._detector import DEFAULT_MAX_DETECTIONS, DEFAULT_MIN_SCORE, MAX_DETECTIONS, Detector, build_detector
from ._segment_files import SegmentCocoFile, SegmentOutputs, wanted
from ._segment_runs import DEFAULT_OPACITY, coverage, segment_images, semantic_record
from ._segmenter import Segmenter, SemanticResult, build_segmenter, class_indices
from .base import WORKERS_OPTION, ModelOptions, Option, Outcome, Plan, RunContext, Task, batch_size_option

if TYPE_CHECKING:
    from ..cache.catalog import Catalog
    from ..images.inputs import ImageInput
    from ..output.records import RecordWriter

__all__ = [
    "TASK",
    "Segmenter",
    "SemanticResult",
    "coverage",
    "load_segmenter",
    "segment_images",
    "semantic_record",
]


def load_segmenter(options: ModelOptions, *, progress: bool = True) -> Segmenter | Detector:
    """The ready model for ``options``, exactly as ``ptm segment`` builds it (a Detector for Mask R-CNN)."""
    model: Segmenter | Detector = TASK.plan(options).load(progress=progress)
    return model


# --- the task ------------------------------------------------------------------------------------


def _rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One CSV/TSV row per class (semantic) or object (instance)."""
    if "error" in record:
        error = record["error"]
        return [{"input": record["input"], "error": f"{error['type']}: {error['message']}"}]
    rows: list[dict[str, Any]] = []
    for rank, c in enumerate(record.get("coverage") or [], start=1):
        rows.append(
            {
                "input": record["input"],
                "rank": rank,
                "label": c["label"],
                "class_id": c["class_id"],
                "share": c["share"],
            }
        )
    for rank, d in enumerate(record.get("detections") or [], start=1):
        rows.append(
            {
                "input": record["input"],
                "rank": rank,
                "label": d["label"],
                "class_id": d["category_id"],
                "score": d["score"],
                **d["box"],
                "area": d["area"],
            }
        )
    return rows or [{"input": record["input"]}]


def _instance(plan: Plan[Any]) -> bool:
    from ..nets.segmentation import is_instance

    return plan.entry is not None and is_instance(plan.entry)


class SegmentTask(Task[Any]):
    name = "segment"
    title = "Segmentation"
    summary = "Label the pixels of IMAGES: class masks and coverage, or each object's mask (Mask R-CNN)."
    help = """Label the pixels of IMAGES (files, directories, or - for stdin).

    Semantic models (the default, deeplabv3_resnet101; FCN, LRASPP) give each
    class's share of the pixels, and full-resolution masks, overlays and
    cut-outs. Mask R-CNN models give each object's box, score, area and
    mask (COCO RLE: needs the coco extra).

    \b
    Examples:
      ptm segment photo.jpg
      ptm segment --mask --overlay photos/            # photos/x.mask.png, x.overlay.jpg
      ptm segment --cutout person -o person.png portrait.jpg
      ptm segment -m lraspp_mobilenet_v3_large --mask-dir masks/ -f csv photos/ > coverage.csv
      ptm segment --size full --mask big-photo.jpg   # at the photo's own resolution, in tiles
      ptm segment -m maskrcnn_resnet50_fpn_v2 --coco results.json --mask-dir masks/ photos/
    """
    batch_help = """Segment IMAGES (files, folders, --files-from) into shard files under --output DIR.

    \b
    Examples:
      ptm batch segment -r photos/ --output seg1
      ptm batch segment -m lraspp_mobilenet_v3_large -r photos/ --mask-dir masks/ --output seg2 --engine ray
    """
    default_model = "deeplabv3_resnet101"
    model_help = "A segmentation model (see `ptm models --task segment`)."
    weights_help = "Weights variant (COCO_WITH_VOC_LABELS_V1, DEFAULT, ...), or the path of a local weights file."
    options = (
        Option(
            "size",
            ("--size",),
            kind="size",
            help="Semantic models: short side the network runs at (default: the weights' own, 520), or 'full' "
            "for the photo's own resolution, in tiles.",
        ),
        Option(
            "tile",
            ("--tile",),
            "Semantic models: tile side for runs larger than one tile (default 1024).",
            kind="int",
            minimum=128,
            metavar="N",
        ),
        Option(
            "overlap",
            ("--overlap",),
            "Semantic models: pixels neighbouring tiles share (default 96; more agrees better with one pass).",
            kind="int",
            minimum=0,
            metavar="N",
        ),
        Option(
            "mask",
            ("--mask",),
            kind="flag",
            batch=(),
            records=False,
            help="Write each input's class mask: a palette PNG whose pixel values are class indices "
            "(photo.mask.png beside it); instance models: one PNG per object.",
        ),
        Option(
            "mask_dir",
            ("--mask-dir",),
            kind="dir",
            help="Write the masks into this folder instead (implies --mask).",
        ),
        Option(
            "overlay",
            ("--overlay",),
            kind="flag",
            batch=(),
            records=False,
            help="Write each photo with its classes tinted and a legend (photo.overlay.jpg).",
        ),
        Option(
            "opacity",
            ("--opacity",),
            "How strongly --overlay tints (0 to 1).",
            kind="float",
            default=DEFAULT_OPACITY,
            minimum=0,
            maximum=1,
            show_default=True,
            batch=(),
            records=False,
        ),
        Option(
            "cutout",
            ("--cutout",),
            "Cut out these classes (comma-separated, e.g. person,dog) as RGBA PNGs with soft edges "
            "(photo.cutout.png; instance models: one per object).",
            metavar="NAMES",
            completion="classes",
            batch=(),
            records=False,
        ),
        Option(
            "output",
            ("-o", "--output"),
            metavar="FILE|-",
            batch=(),
            records=False,
            help="The one image of one input (its mask, else its overlay or cut-out), as FILE ('-': stdout).",
        ),
        Option(
            "output_dir",
            ("--output-dir",),
            kind="dir",
            batch=(),
            records=False,
            help="Folder for overlays, cut-outs (and masks, without --mask-dir).",
        ),
        Option(
            "min_score",
            ("--min-score",),
            "Instance models: keep objects scoring at least this (0 to 1).",
            kind="float",
            default=DEFAULT_MIN_SCORE,
            minimum=0,
            maximum=1,
            show_default=True,
        ),
        Option(
            "classes",
            ("--classes",),
            "Instance models: keep only these classes, comma-separated.",
            metavar="NAMES",
            completion="classes",
        ),
        Option(
            "max_detections",
            ("--max-detections",),
            "Instance models: keep at most this many objects per image.",
            kind="int",
            default=DEFAULT_MAX_DETECTIONS,
            minimum=1,
            maximum=MAX_DETECTIONS,
            show_default=True,
        ),
        Option(
            "coco",
            ("--coco",),
            metavar="FILE",
            batch=(),
            records=False,
            help="Instance models: also write a COCO file (images, categories, and results with RLE masks).",
        ),
        batch_size_option(1, 64, "Images per forward pass (images of one size share a pass)."),
        WORKERS_OPTION,
        Option(
            "force",
            ("--force",),
            kind="flag",
            batch=(),
            records=False,
            help="Overwrite existing masks, overlays, cut-outs, --coco and --report files.",
        ),
    )
    flush_every = "batch_size"
    columns = (
        "input",
        "rank",
        "label",
        "class_id",
        "share",
        "score",
        "xmin",
        "ymin",
        "xmax",
        "ymax",
        "area",
        "error",
    )

    def refuses_videos(self, params: Mapping[str, Any]) -> str | None:
        if any(params.get(name) for name in ("mask", "mask_dir", "overlay", "cutout", "output", "output_dir", "coco")):
            return "ptm segment writes masks and cut-outs of images; without file options it gives each frame's record"
        return None

    def writes_images(self, params: Mapping[str, Any]) -> bool:
        """Only ``-o`` goes through the shared destination (one input, a file or stdout); see _segment_files."""
        return params.get("output") is not None

    def check(self, params: Mapping[str, Any]) -> None:
        from ..settings import check_side_pixels
        from ._detect_files import check_coco_path

        if params.get("tile") is not None:
            check_side_pixels("--tile", params["tile"])
        size = params.get("size")
        if isinstance(size, int) and not isinstance(size, bool):
            check_side_pixels("--size", size)
        if params.get("tile") is not None or params.get("overlap") is not None:
            from ._segmenter import DEFAULT_TILE, check_tiling

            check_tiling(params.get("tile") or DEFAULT_TILE, params.get("overlap"))
        wanted(params)
        if params.get("coco") is not None:
            check_coco_path(Path(params["coco"]), force=bool(params.get("force")))

    def check_plan(self, plan: Plan[Any], params: Mapping[str, Any]) -> None:
        """Options that do not fit the planned model, and unknown class names, before it loads."""
        from ..cache.catalog import load_labels

        assert plan.entry is not None
        labels = load_labels(plan.entry) or []
        instance = _instance(plan)
        if instance:
            from ..output.masks import check_rle_encoder

            check_rle_encoder()
            for option in ("size", "tile", "overlap"):
                if params.get(option) is not None:
                    raise UsageError(
                        f"--{option} applies to semantic models; {plan.entry.ref} resizes its inputs itself"
                    )
            if params.get("output") is not None:
                raise UsageError(f"{plan.entry.ref} gives one mask per object; use --mask-dir or --output-dir, not -o")
        else:
            for option in ("classes", "coco"):
                if params.get(option) is not None:
                    raise UsageError(f"--{option} applies to instance models (Mask R-CNN), not {plan.entry.ref}")
        for option in ("cutout", "classes"):
            if params.get(option) is not None:
                class_indices(str(params[option]).split(","), labels, plan.entry.ref, f"--{option}")

    def plan(self, options: ModelOptions, *, catalog: Catalog | None = None) -> Plan[Any]:
        if options.resize is not None or options.crop is not None:
            raise UsageError("segmentation models take the whole image; --resize and --crop do not apply")
        planned = super().plan(options, catalog=catalog)
        assert planned.entry is not None
        from ._detector import check_entry

        check_entry(planned.entry, self.name)
        return planned

    def build(self, plan: Plan[Any], *, progress: bool) -> Any:
        assert plan.entry is not None
        options = plan.options
        if _instance(plan):
            return build_detector(
                plan.entry,
                weights_file=plan.weights_file,
                weights_label=plan.weights_label,
                device=options.device,
                precision=options.precision,
                progress=progress,
                task=self.name,
            )
        return build_segmenter(
            plan.entry,
            weights_file=plan.weights_file,
            weights_label=plan.weights_label,
            device=options.device,
            precision=options.precision,
            progress=progress,
        )

    def run(
        self, model: Any, inputs: Iterable[ImageInput], params: Mapping[str, Any], context: RunContext
    ) -> Iterator[Outcome]:
        from ._segment_runs import run_instance, run_semantic

        chosen = wanted(params)
        outputs = SegmentOutputs(chosen, force=context.force, emit_bytes=context.emit_bytes)
        if isinstance(model, Detector):
            outputs.per_object = True
            coco_path = params.get("coco")
            coco = SegmentCocoFile(coco_categories(model)) if coco_path is not None else None
            yield from run_instance(model, inputs, params, context, outputs, coco)
            if coco is not None and coco_path is not None:
                from ..output.imagefiles import write_output

                write_output(Path(coco_path), coco.data(), force=True)
            return
        yield from run_semantic(model, inputs, params, context, outputs)

    def writer(self, stream: IO[str], fmt: str | None) -> RecordWriter:
        from ..output.records import RecordWriter, default_format

        chosen = fmt or default_format(stream)
        if chosen == "table":

            def table_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
                rows = _rows(record)
                for i, row in enumerate(rows):
                    if "share" in row:
                        row["value"] = f"{100 * row.pop('share'):.1f}%"
                    elif "score" in row:
                        row["value"] = f"{row.pop('score'):.3f}  {row.pop('area')} px"
                    if i:
                        row["input"] = ""
                return rows

            return RecordWriter(
                stream,
                chosen,
                columns=["input", "rank", "label", "value", "error"],
                flatten=table_rows,
                table_style=lambda row: "red" if row.get("error") else None,
                optional=["error"],
            )
        return RecordWriter(stream, chosen, columns=list(self.columns), flatten=_rows)

    def parquet_fields(self) -> list[tuple[str, Any]]:
        import pyarrow as pa

        box = pa.struct([(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")])
        rle = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])
        detection = pa.struct(
            [
                ("label", pa.string()),
                ("category_id", pa.int32()),
                ("score", pa.float64()),
                ("box", box),
                ("area", pa.int64()),
                ("mask", rle),
            ]
        )
        share = pa.struct([("label", pa.string()), ("class_id", pa.int32()), ("share", pa.float64())])
        return [
            ("input", pa.string()),
            ("model", pa.string()),
            ("weights", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("coverage", pa.list_(share)),
            ("detections", pa.list_(detection)),
            ("mask", pa.string()),
            ("masks", pa.list_(pa.string())),
        ]

    def report_header(self, model: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        header = {"model": model.entry.model, "weights": model.weights_label}
        if isinstance(model, Detector):
            header.update({"min score": params.get("min_score", DEFAULT_MIN_SCORE), "classes": params.get("classes")})
        else:
            header.update({"size": params.get("size") or model.entry.resize, "tile": params.get("tile")})
        return {**header, "device": str(model.device), "precision": model.precision.name}

    def batch_report_header(self, job: Mapping[str, Any]) -> dict[str, Any]:
        return {**super().batch_report_header(job), "size": job.get("size"), "min score": job.get("min_score")}

    def report_view(self, record: Mapping[str, Any]) -> dict[str, Any]:
        from ..output.drawing import hex_colour

        if record.get("detections") is not None:
            from .detect import TASK as DETECT

            return DETECT.report_view(record)  # the overlay, when the run made one, comes with the record
        bars = [
            {
                "label": c["label"],
                "value": c["share"],
                "text": f"{100 * c['share']:.1f}%",
                "colour": hex_colour(c["label"]),
            }
            for c in record.get("coverage") or []
        ]
        return {"bars": bars, "lines": [f"{record.get('width')}x{record.get('height')}"]}


TASK = SegmentTask()
