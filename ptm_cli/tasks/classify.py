"""Image classification: ranked labels with softmax probabilities, from any catalog classifier or hub model.

:class:`Classifier` holds one model ready to run (weights verified and
loaded, device and precision chosen, preprocessing fixed); a ready one comes
from :func:`load_classifier`. :func:`classify_images` feeds it through the
shared pipeline (:mod:`._pipeline`): results come back in input order, one
per input, with failed inputs carrying their error instead of predictions
(never another image's prediction). :data:`TASK` is ``ptm classify``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from ..errors import CompileFailed, ConfigError, InputError, NonFiniteOutput, PtmError, UsageError, first_line
from .base import WORKERS_OPTION, M, ModelOptions, Option, Outcome, Plan, RunContext, Task, batch_size_option

MAX_TOP_K = 100_000
"""The largest ``-k``: more than any catalog model's classes (ImageNet-21k has 21,841)."""

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

    from ..cache.catalog import Entry
    from ..images.inputs import ImageInput
    from ..images.transforms import Preprocess
    from ..nets.device import Precision
    from ..output.records import RecordWriter
    from ..video.sampling import Sampling


@dataclass(frozen=True)
class Prediction:
    rank: int
    index: int
    label: str | None
    probability: float


@dataclass(frozen=True)
class Classification:
    """The outcome for one input: predictions, or the error that stopped it."""

    input: str
    predictions: list[Prediction] | None = None
    error: PtmError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Classifier:
    """A classification model ready to run on preprocessed batches."""

    def __init__(
        self,
        entry: Entry,
        model: nn.Module,
        *,
        weights_label: str,
        labels: list[str] | None,
        preprocess: Preprocess,
        device: torch.device,
        precision: Precision,
    ):
        self.entry = entry
        self.model = model
        self.weights_label = weights_label
        self.labels = labels
        self.preprocess = preprocess
        self.device = device
        self.precision = precision
        self._forward: Callable[[torch.Tensor], torch.Tensor] = model
        self._compiled_batch: int | None = None  # the batch size the compiled graph was built for
        self.openmp_spinning = False  # how torch's OpenMP threads waited at the end of the last run

    @property
    def compiled(self) -> bool:
        return self._forward is not self.model

    def compile(self) -> None:
        """Run the model through ``torch.compile`` from the next batch on.

        Compiling takes a minute or more for a ResNet on a CPU, paid by the
        first batch; every batch is then padded to that first batch's size
        so the graph is compiled once. It needs a fixed input size, so the
        preprocessing must crop.
        """
        import torch

        if self.preprocess.crop is None:
            raise UsageError("--compile needs a fixed input size: give --crop N (or a model whose catalog entry crops)")
        # Its CPU build step looks for CUDA and logs that none is found: not news on stderr.
        import logging

        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        self._forward = torch.compile(self.model, dynamic=False)

    def check_labels(self) -> None:
        """ConfigError when the labels do not match the model's outputs (a catalog mistake)."""
        if self.labels is None:
            return
        outputs = _output_count(self.model)
        if outputs is not None and outputs != len(self.labels):
            raise ConfigError(
                f"{self.entry.ref}: the model has {outputs} outputs but its labels list {len(self.labels)} "
                "classes; fix `labels` or `num_classes` in the catalog entry"
            )

    def predict(self, batch: torch.Tensor, top_k: int) -> list[list[Prediction]]:
        """Top-k predictions (softmax probabilities) for a batch [N, 3, H, W].

        Raises ``NonFiniteOutput`` when the model's output for any image holds
        NaN or infinity; :meth:`predict_each` reports that per image instead.
        """
        results = self.predict_each(batch, top_k)
        for result in results:
            if isinstance(result, NonFiniteOutput):
                raise result
        return [r for r in results if not isinstance(r, NonFiniteOutput)]

    def predict_each(self, batch: torch.Tensor, top_k: int) -> list[list[Prediction] | NonFiniteOutput]:
        """Per image of the batch: its top-k predictions, or ``NonFiniteOutput`` (NaN/inf logits)."""
        import torch

        k = min(top_k, self._class_count())
        count = len(batch)
        if self.compiled:
            batch = self._pad_for_compiled(batch)
        if self.device.type == "cuda":
            batch = batch.pin_memory()  # lets the copy below overlap with queued GPU work
        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.precision.dtype, enabled=self.precision.autocast):
                logits = self._run(x)[:count]
            logits = logits.float()
            finite = torch.isfinite(logits).all(dim=1).cpu().tolist()
            probabilities = torch.softmax(logits, dim=1)
            top = probabilities.topk(k, dim=1)
        values, indices = top.values.cpu().tolist(), top.indices.cpu().tolist()
        return [
            [
                Prediction(rank=r + 1, index=i, label=self._label(i), probability=p)
                for r, (i, p) in enumerate(zip(row_i, row_p, strict=True))
            ]
            if ok
            else NonFiniteOutput(
                f"the model's output for this input holds NaN or infinity ({self.entry.ref}), so it has no "
                "probabilities; check the weights (`ptm weights inspect`) and the catalog's mean and std"
            )
            for row_i, row_p, ok in zip(indices, values, finite, strict=True)
        ]

    def _pad_for_compiled(self, batch: torch.Tensor) -> torch.Tensor:
        """Zero images after the real ones, so a short last batch reuses the compiled graph."""
        import torch

        if self._compiled_batch is None or len(batch) > self._compiled_batch:
            return batch
        padding = batch.new_zeros((self._compiled_batch - len(batch), *batch.shape[1:]))
        return torch.cat([batch, padding])

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if not self.compiled or self._compiled_batch is not None:
            return self._forward(x)
        try:
            logits = self._forward(x)
        except Exception as e:  # the first call compiles; its failures are the compiler's
            raise CompileFailed(
                f"torch.compile failed ({type(e).__name__}: {first_line(e, 300)}); run without --compile, "
                "or install a C++ compiler (on CPU, torch.compile builds its kernels with one)"
            ) from e
        self._compiled_batch = len(x)
        return logits

    def _class_count(self) -> int:
        return len(self.labels) if self.labels else (_output_count(self.model) or 1000)

    def _label(self, index: int) -> str | None:
        return self.labels[index] if self.labels and index < len(self.labels) else None


def _output_count(model: nn.Module) -> int | None:
    """Size of the last Linear layer's output, when the model ends in one."""
    from torch import nn

    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return last.out_features if last is not None else None


class SharedClassifier:
    """What :func:`classify_images` needs of a classifier, with its batches run by another caller's ``forward``.

    A warm server's: clients' batches that arrive together go through the
    model in one pass (``shared``). Its decoding threads preprocess with
    torch, whose OpenMP teams keep the shared passes' threads asleep, as
    several clients at once want them; where the passes run is not this
    run's to tune.
    """

    shared = True

    def __init__(self, classifier: Classifier, forward: Callable[..., Any], weights_label: str):
        self.entry = classifier.entry
        self.preprocess = classifier.preprocess
        self.device = classifier.device
        self.precision = classifier.precision
        self.weights_label = weights_label
        self._forward = forward

    def predict_each(self, batch: torch.Tensor, top_k: int) -> list[list[Prediction] | NonFiniteOutput]:
        result: list[list[Prediction] | NonFiniteOutput] = self._forward(batch, top_k)
        return result


# A JPEG may be decoded at reduced DCT scale while its shorter side stays at
# least this many times the resize target: 3x faster on 12-megapixel photos,
# and the preprocessed tensor moves by under 0.003 on average (normalised units).
DRAFT_MARGIN = 2


def classify_images(
    inputs: Iterable[ImageInput],
    classifier: Classifier | SharedClassifier,
    *,
    top_k: int = 5,
    batch_size: int = 8,
    workers: int = 2,
    full_decode: bool = False,
    on_image: Callable[[ImageInput, Image.Image], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> Iterator[Classification]:
    """Classify ``inputs`` in batches; one result per input, in input order.

    ``full_decode`` turns off reduced-scale JPEG decoding (see `DRAFT_MARGIN`).
    ``on_image(item, image)`` sees each decoded RGB image (in a decoding
    thread, before preprocessing), e.g. to keep a thumbnail for a report.
    ``on_note(message)`` hears about images that load with a caveat (a damaged
    colour profile); it may be called from the decoding threads.
    """
    from ._pipeline import run_batched

    if top_k < 1:
        raise UsageError("--top-k must be at least 1")
    preprocess = classifier.preprocess
    short_side = preprocess.resize or preprocess.crop
    min_short_side = None if full_decode or short_side is None else DRAFT_MARGIN * short_side
    # The decoding threads run no torch operation (so they hold no OpenMP team) and take the fused
    # resize-and-crop, except for a shared classifier (see SharedClassifier).
    without_torch = not getattr(classifier, "shared", False)

    def load(item: ImageInput) -> Any:
        from ..images.transforms import preprocess as run_preprocess

        try:
            image = item.open(min_short_side=min_short_side, on_note=on_note)
        except InputError as exc:
            return exc
        if on_image is not None:
            on_image(item, image)
        try:
            return run_preprocess(image, preprocess, without_torch=without_torch)
        except InputError as exc:
            return exc

    def forward(batch: torch.Tensor) -> list[Any]:
        return classifier.predict_each(batch, top_k)

    for item, outcome in run_batched(inputs, load, forward, model=classifier, batch_size=batch_size, workers=workers):
        if isinstance(outcome, PtmError):
            yield Classification(item.name, error=outcome)
        else:
            yield Classification(item.name, predictions=outcome)


def to_record(result: Classification, classifier: Classifier | SharedClassifier) -> dict[str, Any]:
    """The JSON record ptm writes for one input."""
    from ..output.records import round_float

    if result.error is not None:
        return {"input": result.input, "error": result.error.record()}
    return {
        "input": result.input,
        "model": classifier.entry.model,
        "weights": classifier.weights_label,
        "predictions": [
            {"rank": p.rank, "index": p.index, "label": p.label, "probability": round_float(p.probability)}
            for p in result.predictions or []
        ],
    }


# --- building classifiers -------------------------------------------------------------------------


def _with_overrides(preprocess: Preprocess, resize: int | None, crop: int | None) -> Preprocess:
    if resize is None and crop is None:
        return preprocess
    return replace(preprocess, resize=resize or preprocess.resize, crop=crop or preprocess.crop)


def build_classifier(
    entry: Entry,
    *,
    weights_file: Path | str | None = None,
    weights_label: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    resize: int | None = None,
    crop: int | None = None,
    progress: bool = True,
) -> Classifier:
    """A ready classifier for a catalog entry (or one made in code), with its weights or ``weights_file``."""
    from ..cache.catalog import load_labels
    from ..nets import architectures
    from ..nets.device import check_device_spec, choose_device, choose_precision, place_classifier

    check_device_spec(device)
    preprocess = _with_overrides(entry.preprocess(), resize, crop)
    labels = load_labels(entry)
    architectures.factory(entry)  # a catalog mistake fails before any download
    # Weights before devices: a missing file should fail before torch is even imported.
    state_dict = architectures.load_weights(entry, weights_file, progress=progress)
    torch_device = choose_device(device)
    chosen = choose_precision(precision, torch_device)
    model = place_classifier(architectures.build(entry, state_dict), torch_device)
    label = weights_label or (str(weights_file) if weights_file is not None else entry.weights)
    classifier = Classifier(
        entry, model, weights_label=label, labels=labels, preprocess=preprocess, device=torch_device, precision=chosen
    )
    classifier.check_labels()
    return classifier


def load_classifier(options: ModelOptions, *, progress: bool = True) -> Classifier:
    """A ready :class:`Classifier` for ``options``, exactly as ``ptm classify`` builds it."""
    classifier: Classifier = TASK.plan(options).load(progress=progress)
    return classifier


# --- the task ------------------------------------------------------------------------------------------

BAR_CELLS = 10


def probability_bar(probability: float) -> str:
    """A bar of BAR_CELLS cells for a terminal table, eighths of a cell included: ``█████▍    ``."""
    eighths = max(0, min(BAR_CELLS * 8, round(probability * BAR_CELLS * 8)))
    full, part = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[part] if full < BAR_CELLS else ""
    return ("█" * full + partial).ljust(BAR_CELLS)


def _rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "error" in record:
        error = record["error"]
        return [{"input": record["input"], "error": f"{error['type']}: {error['message']}"}]
    return [{"input": record["input"], **p} for p in record["predictions"]]


# The options of every task that runs a classifier's network (classify, embed) and may take a hub: model.
RESIZE_OPTION = Option(
    "resize", ("--resize",), "Resize the shorter side to N before cropping.", kind="int", minimum=1, stage="model"
)
CROP_OPTION = Option("crop", ("--crop",), "Centre crop of N x N pixels.", kind="int", minimum=1, stage="model")
HUB_OPTIONS = (
    Option(
        "trust_repo",
        ("--trust-repo",),
        "Run a hub: model's repository code without it being trusted first.",
        kind="flag",
        stage="model",
        batch=(),
    ),
    Option(
        "hub_args",
        ("--arg",),
        "Argument for a hub: entry point.",
        kind="multiple",
        metavar="KEY=VALUE",
        stage="model",
        batch=(),
    ),
)


def hub_plan(task: Task[M], options: ModelOptions) -> Plan[M]:
    """The plan of a ``hub:`` model for a task that runs classifiers: its spelling and arguments checked."""
    from ..hub import parse_kwargs, parse_model_spec

    parse_model_spec(options.model)
    parse_kwargs(options.hub_args)
    if options.weights.upper() != "DEFAULT":
        raise UsageError("-w/--weights does not apply to hub: models; pass entry-point arguments with --arg")
    return Plan(task, options, None, None)


class ClassifyTask(Task["Classifier"]):
    name = "classify"
    title = "Classification"
    summary = "Classify IMAGES with an ImageNet model: ranked labels with probabilities."
    help = """Classify IMAGES (files, directories, or - for stdin) with an ImageNet model.

    \b
    Examples:
      ptm classify dog.jpg
      ptm classify -m alexnet -k 3 photos/
      ptm classify -w IMAGENET1K_V1 --resize 256 --crop 224 dog.jpg
      find . -name '*.jpg' | ptm classify --files-from - -f csv > labels.csv
      ptm classify -m hub:pytorch/vision:v0.10.0/resnet18 --arg pretrained=true dog.jpg
      ptm classify --server auto dog.jpg      # a warm server answers in a fraction of a second
    """
    batch_help = """Classify IMAGES (files, folders, --files-from) into shard files under --output DIR.

    \b
    Examples:
      ptm batch classify -r photos/ --output run1
      ptm batch classify -m alexnet --shard-size 500 --format parquet -r photos/ --output run2 --engine spark
    """
    default_model = "resnet101"
    model_help = (
        "Model name (see `ptm models`), or hub:OWNER/NAME[:REF]/ENTRY or hub:./DIR/ENTRY for a torch.hub model."
    )
    weights_help = "Weights variant (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT), or the path of a local weights file."
    options = (
        Option(
            "top_k",
            ("-k", "--top-k"),
            "Labels per image (at most the model's classes are given).",
            kind="int",
            default=5,
            minimum=1,
            maximum=MAX_TOP_K,
            show_default=True,
        ),
        batch_size_option(8, 1024),
        WORKERS_OPTION,
        RESIZE_OPTION,
        CROP_OPTION,
        Option(
            "full_decode",
            ("--full-decode",),
            kind="flag",
            batch=(),
            help="Decode large JPEGs at full size instead of a reduced scale that still covers --resize twice over.",
        ),
        Option(
            "compile_model",
            ("--compile",),
            kind="flag",
            batch=(),
            records=False,
            help="Compile the model (torch.compile): a minute or more at start, then faster batches (see Performance).",
        ),
        Option(
            "labels_file",
            ("--labels",),
            "Class names for a hub: model, one per line.",
            metavar="FILE",
            stage="model",
            batch=(),
        ),
        *HUB_OPTIONS,
    )
    hub_models = True
    shares_forward_passes = True
    flush_every = "batch_size"
    columns = ("input", "rank", "index", "label", "probability", "error")

    def plan_hub(self, options: ModelOptions) -> Plan[Classifier]:
        return hub_plan(self, options)

    def servable(self, params: Mapping[str, Any], options: ModelOptions) -> bool:
        # A compiled model is this call's own; a hub model runs repository code trusted for this call only;
        # a video classifier's clips are not merged with other callers' images.
        return not (options.is_hub or params.get("compile_model") or self.plan(options).entry.is_video)  # type: ignore[union-attr]

    def check_plan(self, plan: Plan[Classifier], params: Mapping[str, Any]) -> None:
        if plan.entry is not None and plan.entry.is_video:
            asked = [f for f, v in (("--resize", plan.options.resize), ("--crop", plan.options.crop)) if v]
            asked += [
                f for f, name in (("--compile", "compile_model"), ("--full-decode", "full_decode")) if params.get(name)
            ]
            if asked:
                raise UsageError(
                    f"{asked[0]} applies to image classifiers; {plan.entry.ref} has its own clip transform"
                )

    def frame_sampling(self, plan: Plan[Classifier], sampling: Sampling) -> Sampling:
        if plan.entry is None or not plan.entry.is_video:
            return sampling
        from ._clips import clip_sampling

        return clip_sampling(plan.entry, sampling)

    def build(self, plan: Plan[Classifier], *, progress: bool) -> Classifier:
        options = plan.options
        if plan.entry is not None and plan.entry.is_video:
            from ._clips import build_video_classifier

            video = build_video_classifier(
                plan.entry,
                weights_file=plan.weights_file,
                weights_label=plan.weights_label,
                device=options.device,
                precision=options.precision,
                progress=progress,
            )
            return cast("Classifier", video)  # runs through classify_clips (see run)
        if plan.entry is None:
            from ._hub import hub_classifier

            classifier: Classifier = hub_classifier(plan.options, build=Classifier)
            classifier.preprocess = _with_overrides(classifier.preprocess, options.resize, options.crop)
            return classifier
        return build_classifier(
            plan.entry,
            weights_file=plan.weights_file,
            weights_label=plan.weights_label,
            device=options.device,
            precision=options.precision,
            resize=options.resize,
            crop=options.crop,
            progress=progress,
        )

    def prepare(self, model: Classifier, params: Mapping[str, Any]) -> None:
        if params.get("compile_model"):
            model.compile()

    def batch_forward(self, model: Classifier) -> Callable[..., Any]:
        forward: Callable[..., Any] = model.predict_each
        return forward

    def shared(self, model: Classifier, forward: Callable[..., Any], weights_label: str) -> Classifier:
        # It has what classify_images and to_record use of a Classifier; forward passes are another caller's.
        return cast("Classifier", SharedClassifier(model, forward, weights_label))

    def run(
        self, model: Classifier, inputs: Iterable[ImageInput], params: Mapping[str, Any], context: RunContext
    ) -> Iterator[Outcome]:
        from ._clips import VideoClassifier, classify_clips

        if isinstance(model, VideoClassifier):
            yield from classify_clips(
                model, inputs, top_k=params.get("top_k", 5), batch_size=params.get("batch_size", 8)
            )
            return
        on_image = context.on_image
        results = classify_images(
            inputs,
            model,
            top_k=params.get("top_k", 5),
            batch_size=params.get("batch_size", 8),
            workers=params.get("workers", 2),
            full_decode=bool(params.get("full_decode")),
            on_image=None if on_image is None else lambda item, image: on_image(item.name, image),
            on_note=context.on_note,
        )
        try:
            for result in results:
                yield Outcome(to_record(result, model))
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()  # a caller that stops early stops the decoding threads now

    def writer(self, stream: IO[str], fmt: str | None) -> RecordWriter:
        """One row per prediction in csv/tsv/table; on a terminal, probabilities with bars."""
        from ..output.records import RecordWriter, default_format

        terminal = default_format(stream) == "table"  # the stream is a terminal
        chosen = fmt or default_format(stream)

        def table_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
            result = _rows(record)
            for i, row in enumerate(result):
                if "probability" in row:
                    percent = f"{100 * row['probability']:.2f}%"
                    row["probability"] = f"{probability_bar(row['probability'])} {percent:>7}" if terminal else percent
                if i:
                    row["input"] = ""
            return result

        if chosen == "table":
            return RecordWriter(
                stream,
                chosen,
                columns=["input", "rank", "label", "index", "probability", "error"],
                flatten=table_rows,
                table_style=lambda row: "red" if row.get("error") else None,
                optional=["error"],
            )
        return RecordWriter(stream, chosen, columns=list(self.columns), flatten=_rows)

    def parquet_fields(self) -> list[tuple[str, Any]]:
        import pyarrow as pa

        prediction = pa.struct(
            [("rank", pa.int32()), ("index", pa.int32()), ("label", pa.string()), ("probability", pa.float64())]
        )
        return [
            ("input", pa.string()),
            ("model", pa.string()),
            ("weights", pa.string()),
            ("predictions", pa.list_(prediction)),
        ]

    def report_header(self, model: Classifier, params: Mapping[str, Any]) -> dict[str, Any]:
        p = model.preprocess
        steps = [f"resize {p.resize}" if p.resize else "", f"crop {p.crop}" if p.crop else "", p.interpolation]
        return {
            "model": model.entry.model,
            "weights": model.weights_label,
            "preprocessing": ", ".join(x for x in steps if x),
            "top-k": params.get("top_k", 5),
            "device": str(model.device),
            "precision": model.precision.name,
        }

    def batch_report_header(self, job: Mapping[str, Any]) -> dict[str, Any]:
        return {
            **super().batch_report_header(job),
            "resize": job.get("resize"),
            "crop": job.get("crop"),
            "top-k": job.get("top_k"),
        }

    def report_view(self, record: Mapping[str, Any]) -> dict[str, Any]:
        bars = [
            {
                "label": p["label"] if p["label"] is not None else f"#{p['index']}",
                "value": p["probability"],
                "text": f"{100 * p['probability']:.2f}%",
            }
            for p in record.get("predictions") or []
        ]
        return {"bars": bars}


TASK = ClassifyTask()
