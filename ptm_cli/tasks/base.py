"""The shape every task has: what a task module declares, and the plan that turns options into a ready model.

A task is one module of this package with a module-level ``TASK``, an
instance of a :class:`Task` subclass. It declares everything that is its
own: its command-line options (as data: :class:`Option`; the commands layer
makes click options of them), how its model is built from a catalog entry,
how it runs over inputs (one record per input, in input order), its record
schema (table, CSV and Parquet columns), and how a record looks on the
results page. The command line, ``ptm batch``, ``ptm serve``, the results
page and the progress display take any task from :func:`ptm_cli.tasks.get`
and never ask which one it is.

:class:`ModelOptions` is what a user says about the model (``-m``, ``-w``,
``--device``, ``--precision`` and the preprocessing overrides);
:meth:`Task.plan` checks it without importing torch or touching the network,
and :meth:`Plan.load` builds the model. A warm server installs a cache with
:func:`use_model_cache`; plans then load through it.

Importing this module imports neither torch nor Pillow.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from ..errors import UsageError

if TYPE_CHECKING:
    from ..cache.catalog import Catalog, Entry
    from ..images.inputs import ImageInput
    from ..output.imagefiles import Destination
    from ..output.records import RecordWriter
    from ..output.videofiles import VideoOutputs
    from ..video.sampling import Sampling

HUB_PREFIX = "hub:"
M = TypeVar("M")  # a task's model: a Classifier, a Translator...


# --- what a user says about the model -----------------------------------------------------------


@dataclass(frozen=True)
class ModelOptions:
    """A model as the command line names it."""

    model: str
    weights: str = "DEFAULT"
    device: str = "auto"
    precision: str = "fp32"
    resize: int | None = None
    crop: int | None = None
    labels_file: str | None = None
    trust_repo: bool = False
    hub_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_hub(self) -> bool:
        return self.model.startswith(HUB_PREFIX)


# --- a task's own options, as data ---------------------------------------------------------------

# What an option's value is: the commands layer picks the click type from this.
KINDS = ("int", "float", "text", "flag", "size", "choice", "multiple", "dir")


@dataclass(frozen=True)
class Option:
    """One command-line option of a task.

    ``name`` is its key in the run's parameters; a ``stage="model"`` option
    is a field of :class:`ModelOptions` instead (it changes the model that is
    built). ``batch`` gives its spelling in ``ptm batch TASK`` (None: the
    same flags; an empty tuple: not offered there). ``records`` says whether
    its value changes the records, which makes it part of a batch job's
    identity.
    """

    name: str
    flags: tuple[str, ...]
    help: str
    kind: str = "text"
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    show_default: bool = False
    stage: str = "run"
    batch: tuple[str, ...] | None = None
    records: bool = True
    completion: str | None = None  # "weights": the chosen model's variants; "classes": its class names

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option {self.name}: unknown kind {self.kind!r}")

    @property
    def batch_flags(self) -> tuple[str, ...]:
        return self.flags if self.batch is None else self.batch


@dataclass(frozen=True)
class Alias:
    """Another name for a task with its model fixed (``ptm zebra`` is ``ptm translate -m horse2zebra``)."""

    name: str
    model: str
    summary: str
    help: str
    tag: str  # what outputs written beside their inputs are called: horse.zebra.png


def batch_size_option(default: int, maximum: int, help: str = "Images per forward pass.") -> Option:
    """``--batch-size`` of a task that runs its model on batches (not offered by ``ptm batch``: workers choose)."""
    return Option(
        "batch_size",
        ("--batch-size",),
        help,
        kind="int",
        default=default,
        minimum=1,
        maximum=maximum,
        show_default=True,
        batch=(),
        records=False,
    )


# The decoding threads of a task that runs on the shared pipeline (tasks/_pipeline.py).
WORKERS_OPTION = Option(
    "workers",
    ("--workers",),
    "Image decoding threads.",
    kind="int",
    default=2,
    minimum=1,
    maximum=64,
    show_default=True,
    batch=(),
    records=False,
)


# The options of every task that writes one image per input (ptm translate; later masks and drawings).
IMAGE_OUTPUT_OPTIONS = (
    Option(
        "output",
        ("-o", "--output"),
        metavar="FILE|-",
        batch=(),
        records=False,
        help="Output file for one input; '-' writes the image to stdout. Without -o or --output-dir, each "
        "output goes next to its input (horse.jpg -> horse.zebra.png).",
    ),
    Option(
        "output_dir",
        ("--output-dir",),
        kind="dir",
        batch=(),
        records=False,
        help="Directory for the outputs of several inputs (names keep the input's stem).",
    ),
    Option(
        "suffix",
        ("--suffix",),
        default="",
        help="Added to each output's stem, e.g. _zebra (default next to the input: .zebra or .MODEL).",
    ),
    Option(
        "image_format",
        ("--format",),
        metavar="FORMAT",
        batch=("--image-format",),
        help="Image format to write (png, jpeg, webp, bmp, tiff); default: -o's extension, else png.",
    ),
    Option(
        "force",
        ("--force",),
        kind="flag",
        batch=(),
        records=False,
        help="Overwrite existing output files (and a --report FILE that is not a results page).",
    ),
    Option(
        "skip_existing",
        ("--skip-existing",),
        kind="flag",
        batch=(),
        records=False,
        help="Skip inputs whose output file already exists.",
    ),
)


# What a task that writes an image per input adds for a video input, whose frames it writes as one video.
VIDEO_OUTPUT_OPTIONS = (
    Option(
        "codec",
        ("--codec",),
        kind="choice",
        choices=("h264", "h265", "vp9", "av1"),
        batch=(),
        records=False,
        help="Video codec of a video input's output (default: h264 in yuv420p; vp9 for .webm).",
    ),
    Option(
        "crf",
        ("--crf",),
        kind="int",
        minimum=0,
        maximum=63,
        batch=(),
        records=False,
        help="Quality of a written video: lower is better and larger (default: the codec's own, 23 for h264).",
    ),
)


# --- running ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One input's record, and (when a results page wants it) the image the task made from it."""

    record: dict[str, Any]
    output_image: Any = None
    pending: bool = False  # this input's record comes with a later input's (a video classifier's clip of frames)

    @property
    def ok(self) -> bool:
        return "error" not in self.record


@dataclass
class RunContext:
    """Where a run's side products go; everything is optional for a task that writes only records.

    ``destination`` (tasks that write images): where each output goes, and
    ``force``/``skip_existing``/``emit_bytes`` decide about existing files and
    stdout. ``on_image(name, image)`` sees each decoded input (possibly from
    a decoding thread); ``keep_images`` asks for output images on the
    :class:`Outcome` (a results page); ``on_note`` and ``on_tile`` are the
    progress display's.
    """

    destination: Destination | None = None
    force: bool = False
    skip_existing: bool = False
    emit_bytes: Callable[[bytes], None] | None = None
    on_image: Callable[[str, Any], None] | None = None
    keep_images: bool = False
    on_note: Callable[[str], None] | None = None
    on_tile: Callable[[int, int], None] | None = None
    shown_folder: Path | None = None  # batch: outputs are recorded under the job folder as the user wrote it
    taken: Mapping[str, str] = field(default_factory=dict)  # batch: output name -> the input that owns it
    videos: VideoOutputs | None = None  # where a video input's frames are written (one video file each)


# --- the task --------------------------------------------------------------------------------------


class Task(Generic[M]):
    """What every task declares; a task module defines one subclass and ``TASK = ThatTask()``.

    Class attributes describe the task (names, help, options); the methods
    build its model, run it and shape its records. Methods that need torch
    import it themselves, so that listing tasks stays cheap.
    """

    name: ClassVar[str]  # the command, and the catalog entries' ``task``
    title: ClassVar[str]  # for people: "Classification"
    summary: ClassVar[str]  # one line for `ptm --help`
    help: ClassVar[str]  # the command's help: what it does, then examples
    batch_help: ClassVar[str]
    default_model: ClassVar[str | None] = None  # None: -m is required
    catalog_task: ClassVar[str | None] = None  # whose catalog entries it runs (None: its own; embed: classify's)
    model_help: ClassVar[str] = "Model name (see `ptm models`)."
    weights_help: ClassVar[str] = "Weights variant, or the path of a local weights file."
    options: ClassVar[tuple[Option, ...]] = ()
    aliases: ClassVar[tuple[Alias, ...]] = ()
    image_outputs: ClassVar[bool] = False  # one image file per input: -o, --output-dir, --suffix, ...
    beside_tag: ClassVar[str | None] = None  # names outputs beside their inputs (photo.detect.jpg); None: the model
    default_image_format: ClassVar[str | None] = None  # of images written beside inputs or into a folder (None: PNG)
    record_formats: ClassVar[bool] = True  # -f/--format chooses how records are written
    hub_models: ClassVar[bool] = False  # accepts -m hub:OWNER/NAME/ENTRY
    shares_forward_passes: ClassVar[bool] = False  # a warm server may merge clients' batches
    flush_every: ClassVar[str | None] = None  # the parameter whose value says how many records to flush at once
    columns: ClassVar[tuple[str, ...]] = ()  # CSV/TSV columns (one row per item of a record)
    frame_records: ClassVar[bool] = True  # a record per video frame (False: one per video, as for its output file)

    # -- options and plans

    def check(self, params: Mapping[str, Any]) -> None:
        """Refuse parameters that cannot work, before any model loads (nothing by default)."""

    def check_plan(self, plan: Plan[M], params: Mapping[str, Any]) -> None:
        """Refuse parameters that do not fit the planned model (a class it lacks), before it loads."""

    def refuses_videos(self, params: Mapping[str, Any]) -> str | None:
        """Why this call cannot take a video's frames (an index file of images...), or None when it can."""
        return None

    def frame_sampling(self, plan: Plan[M], sampling: Sampling) -> Sampling:
        """The frames of a video this call takes, given what the command line asked (a video model: its rate)."""
        return sampling

    def models_of(self) -> str:
        """The ``task`` of the catalog entries this task runs."""
        return self.catalog_task or self.name

    def writes_images(self, params: Mapping[str, Any]) -> bool:
        """Whether this call writes an image per input (-o, an output folder...); a task may make it optional."""
        return self.image_outputs

    def plan(self, options: ModelOptions, *, catalog: Catalog | None = None) -> Plan[M]:
        """Options checked and resolved (no torch, no network); ``.load()`` does the expensive part."""
        from ..nets.device import check_device_spec
        from ..settings import check_side_pixels

        check_device_spec(options.device)
        for option, side in (("--resize", options.resize), ("--crop", options.crop)):
            if side is not None:
                check_side_pixels(option, side)
        if options.is_hub:
            if not self.hub_models:
                raise UsageError("hub: models, --labels, --trust-repo and --arg apply to classification only")
            return self.plan_hub(options)
        if options.labels_file or options.trust_repo or options.hub_args:
            raise UsageError("--labels, --trust-repo and --arg apply to hub: models only")
        from ..cache.naming import resolve_entry

        entry, weights_file = resolve_entry(options.model, options.weights, task=self.models_of(), catalog=catalog)
        return Plan(self, options, entry, weights_file)

    def plan_hub(self, options: ModelOptions) -> Plan[M]:
        raise UsageError(f"`ptm {self.name}` does not run hub: models")

    def servable(self, params: Mapping[str, Any], options: ModelOptions) -> bool:
        """Whether a warm server may run this call (it shares its models with other clients)."""
        return not options.is_hub

    # -- the model

    def build(self, plan: Plan[M], *, progress: bool) -> M:
        """The ready model for ``plan`` (torch is imported here)."""
        raise NotImplementedError

    def prepare(self, model: M, params: Mapping[str, Any]) -> None:
        """Last steps before a run that change the model (``--compile``); nothing by default."""

    def relabel(self, model: M, weights_label: str) -> M:
        """``model`` as records of this call name its weights (a warm server shares one model)."""
        import copy

        view = copy.copy(model)
        view.weights_label = weights_label  # type: ignore[attr-defined]  # every task's model has one
        return view

    def shared(self, model: M, forward: Callable[..., Any], weights_label: str) -> M:
        """``model`` with its batches run by ``forward`` (a warm server's shared passes); see shares_forward_passes."""
        raise NotImplementedError

    def batch_forward(self, model: M) -> Callable[..., Any]:
        """The function a warm server shares between clients: a batch tensor and arguments in, rows out."""
        raise NotImplementedError

    # -- running

    def run(
        self, model: M, inputs: Iterable[ImageInput], params: Mapping[str, Any], context: RunContext
    ) -> Iterator[Outcome]:
        """One outcome per input, in input order; a failed input is an error record, never a missing one."""
        raise NotImplementedError

    # -- records

    def writer(self, stream: IO[str], fmt: str | None) -> RecordWriter:
        """The record writer for this task's records on ``stream`` (None: the stream's default format)."""
        from ..output.records import RecordWriter, default_format

        return RecordWriter(stream, fmt or default_format(stream), columns=list(self.columns))

    def parquet_fields(self) -> list[tuple[str, Any]]:
        """The Parquet columns of a record (pyarrow types); ``error`` is added to them."""
        raise NotImplementedError

    def collect(
        self, records: Callable[[], Iterator[dict[str, Any]]], path: Path, job: Mapping[str, Any], *, force: bool
    ) -> str:
        """Write a finished batch job's records (``records()`` gives them afresh, in manifest order) into the one
        file this task makes of them (``ptm batch merge -o``); a line for the user about what was written."""
        raise UsageError(
            f"`ptm batch merge -o` makes one file of a job's records for `ptm embed` jobs, not {self.name}"
        )

    # -- the results page

    def report_header(self, model: M, params: Mapping[str, Any]) -> dict[str, Any]:
        """What the page says about the run, above the entries."""
        model_: Any = model
        return {
            "model": model_.entry.model,
            "weights": model_.weights_label,
            "device": str(model_.device),
            "precision": model_.precision.name,
        }

    def batch_report_header(self, job: Mapping[str, Any]) -> dict[str, Any]:
        """The page header of a finished batch job, from its job file."""
        return {"model": job.get("model", ""), "weights": job.get("weights", ""), "precision": job.get("precision", "")}

    def report_view(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """How a successful record is shown: ``bars`` (label, value from 0 to 1, text) and ``lines`` of text."""
        return {"lines": []}


# --- plans -------------------------------------------------------------------------------------------


# A warm server's cache: a plan and a way to build its model in, the (shared) model out.
ModelCache = Callable[["Plan[Any]", Callable[[], Any]], Any]
_model_cache: list[ModelCache] = []


def use_model_cache(cache: ModelCache | None) -> None:
    """Make every later :meth:`Plan.load` go through ``cache`` (None: build each time, the default)."""
    _model_cache[:] = [] if cache is None else [cache]


@dataclass(frozen=True)
class Plan(Generic[M]):
    """A task's model options, checked and resolved; :meth:`load` builds the model."""

    task: Task[M]
    options: ModelOptions
    entry: Entry | None  # None for hub: models, whose entry comes from the repository
    weights_file: Path | None

    @property
    def weights_label(self) -> str:
        """How records name the weights: the variant, or a local file as the user wrote it."""
        if self.weights_file is not None:
            return self.options.weights
        return "hub" if self.entry is None else self.entry.weights

    def load(self, *, progress: bool = True) -> M:
        """The ready model: built now, or taken from the warm server's cache."""
        if _model_cache and self.entry is not None:
            cached: M = _model_cache[0](self, lambda: self.task.build(self, progress=progress))
            return cached
        return self.task.build(self, progress=progress)

    def identity(self) -> tuple[object, ...]:
        """What decides the model this plan builds: the entry, the weights file and labels as they are now.

        A replaced weights file (``ptm weights rm`` and a new import, an
        edited local file) or a changed labels file gives another identity,
        so a warm server never answers with a model the files no longer hold.
        """
        from ..cache.weights import cached_path

        assert self.entry is not None
        weights = self.weights_file if self.weights_file is not None else cached_path(self.entry)
        labels = self.entry.labels
        labels_path = None if labels in (None, "imagenet") else Path(labels)
        return (
            self.task.name,
            repr(self.entry),
            _file_identity(weights),
            _file_identity(labels_path),
            self.options.device,
            self.options.precision,
            self.options.resize,
            self.options.crop,
        )


def _file_identity(path: Path | None) -> tuple[object, ...] | None:
    """A file by path, device, inode, size and mtime (None: no file; ``missing``: not there yet)."""
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return (os.path.abspath(path), "missing")
    return (os.path.abspath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
