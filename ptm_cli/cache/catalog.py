"""The model catalog: which models and weights ptm knows, as data.

One `Entry` per (model, weights) pair: architecture, download URL, sha256
(full or the prefix torchvision puts in its file names), preprocessing, labels
and licence. Entries come from, in order (later files override earlier ones
entry by entry):

1. the catalog files shipped with ptm (``models/*.json`` and ``models/*.toml``,
   the torchvision classifiers among them, generated from torchvision's own
   weight registry);
2. the TOML files named by ``PTM_CATALOG`` (paths separated by ``:``).

Reading the catalog imports neither torch nor Pillow, so ``ptm models`` is
instant.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .. import settings
from ..errors import ConfigError, UnknownModel, first_line

if TYPE_CHECKING:
    from ..images.transforms import Preprocess

CATALOG_DIR = Path(__file__).resolve().parent.parent / "models"
_TASK_NAME = re.compile(r"[a-z][a-z0-9_]*")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HEX = re.compile(r"^[0-9a-f]{8,64}$")


@dataclass(frozen=True)
class Entry:
    """One model with one set of weights."""

    model: str
    weights: str
    task: str
    architecture: str
    url: str | None = None
    sha256: str | None = None  # 64 hex digits, or a prefix of at least 8
    file_name: str | None = None
    size_mb: float | None = None
    is_default: bool = False
    labels: str | None = "imagenet"  # "imagenet", a file path, or None
    num_classes: int | None = None
    num_params: int | None = None
    acc1: float | None = None
    acc5: float | None = None
    gflops: float | None = None
    resize: int | None = None
    crop: int | None = None
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    licence: str | None = None
    description: str | None = None
    builder_kwargs: dict[str, object] = field(default_factory=dict, hash=False, compare=False)
    source: str = ""
    # Detection entries: the model resizes its own inputs (short side ``resize``, long side at most
    # ``max_size``), torchvision's backbone norms are frozen for pretrained weights, and keypoint
    # models name their points.
    max_size: int | None = None
    frozen_batchnorm: bool = False
    batchnorm_eps: float | None = None  # torchvision sets 0 in the frozen norms of some older COCO weights
    keypoint_names: tuple[str, ...] = ()
    box_map: float | None = None
    keypoint_map: float | None = None
    # Segmentation entries: mask mAP (instance models), mean IoU and pixel accuracy (semantic models).
    mask_map: float | None = None
    miou: float | None = None
    pixel_acc: float | None = None
    # Video classifiers: clips of ``clip_frames`` frames taken ``clip_rate`` times a second, each frame
    # resized to exactly ``frame_size`` (height, width) when given, else its short side to ``resize``.
    clip_frames: int | None = None
    clip_rate: float | None = None
    frame_size: tuple[int, int] | None = None

    @property
    def is_video(self) -> bool:
        """Whether the model labels clips of video frames (Kinetics-400 actions) rather than images."""
        return self.clip_frames is not None

    @property
    def ref(self) -> str:
        """``model:weights``, the name ptm prints and accepts."""
        return f"{self.model}:{self.weights}"

    @property
    def full_sha256(self) -> str | None:
        return self.sha256 if self.sha256 and len(self.sha256) == 64 else None

    def preprocess(self) -> Preprocess:
        from ..images.transforms import Preprocess

        return Preprocess(
            resize=self.resize,
            crop=self.crop,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
        )


def _entry_file_name(url: str | None, explicit: str | None, where: str) -> str | None:
    if explicit:
        if "/" in explicit or explicit.startswith("."):
            raise ConfigError(f"{where}: file_name {explicit!r} must be a plain file name")
        return explicit
    if url:
        name = Path(urlsplit(url).path).name
        if not name:
            raise ConfigError(f'{where}: cannot take a file name from url {url!r}; add file_name = "..."')
        return name
    return None


# Normalisation values are for pixels in [0, 1]: a std outside this range (1e-45, say) divides
# the image into infinities, and the model's output into NaN.
NORMALISATION_RANGE = {"mean": (-1000.0, 1000.0), "std": (0.001, 1000.0)}
_INT64_MAX = 2**63 - 1
_MAX_DEPTH = 32  # nesting of tables and arrays in one catalog record


def _triple(value: Any, key: str, where: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    low, high = NORMALISATION_RANGE[key]
    if (
        not isinstance(value, list)
        or len(value) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high for v in value)
    ):
        raise ConfigError(f"{where}: {key} must be a list of three numbers from {low:g} to {high:g}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _size(value: Any, where: str) -> float | None:
    size = _optional(value, (int, float), "size_mb", where)
    if size is not None and not (0 < size < 1e9):  # also refuses NaN and infinity
        raise ConfigError(f"{where}: size_mb must be a positive number of MiB")
    return None if size is None else float(size)


def _check_values(value: Any, key: str, where: str, depth: int = 0) -> None:
    """Refuse integers beyond 64 bits (torch and Pillow would overflow on them) and absurd nesting."""
    if depth > _MAX_DEPTH:
        raise ConfigError(f"{where}: {key} is nested more than {_MAX_DEPTH} deep")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _INT64_MAX:
        raise ConfigError(f"{where}: {key} is an integer beyond 64 bits")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_values(v, f"{key}.{k}", where, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_values(v, key, where, depth + 1)


def _optional(value: Any, kind: type | tuple[type, ...], key: str, where: str) -> Any:
    if value is not None and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)):
        raise ConfigError(f"{where}: {key} has the wrong type ({type(value).__name__})")
    return value


_KNOWN_KEYS = {
    "clip_frames",
    "clip_rate",
    "frame_size",
    "name",
    "model",
    "weights",
    "task",
    "architecture",
    "url",
    "sha256",
    "file_name",
    "size_mb",
    "default",
    "labels",
    "num_classes",
    "num_params",
    "acc1",
    "acc5",
    "gflops",
    "resize",
    "crop",
    "interpolation",
    "mean",
    "std",
    "licence",
    "license",
    "description",
    "builder_kwargs",
    "min_size",
    "recipe",
    "max_size",
    "fixed_size",
    "frozen_batchnorm",
    "batchnorm_eps",
    "keypoint_names",
    "box_map",
    "keypoint_map",
    "mask_map",
    "miou",
    "pixel_acc",
}


def entry_from_mapping(raw: dict[str, Any], *, source: str, base_dir: Path | None = None) -> Entry:
    """Validate one catalog record (a TOML ``[[model]]`` table or JSON object)."""
    model = raw.get("model") or raw.get("name")
    where = f"{source}: model {model!r}" if model else source
    if not isinstance(model, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", model):
        raise ConfigError(f"{where}: every entry needs a name made of letters, digits, '_', '-' or '.'")
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(unknown)}")
    for key, value in raw.items():
        _check_values(value, key, where)
    task = raw.get("task", "classify")  # entries without one are classifiers, as the first catalogs were
    if not isinstance(task, str) or not _TASK_NAME.fullmatch(task):
        raise ConfigError(f"{where}: task must be the name of a ptm command such as classify or translate")
    architecture = raw.get("architecture")
    if not isinstance(architecture, str) or not architecture:
        raise ConfigError(f"{where}: architecture is required (a torchvision builder name or 'cyclegan_resnet9')")
    url = _optional(raw.get("url"), str, "url", where)
    sha = _optional(raw.get("sha256"), str, "sha256", where)
    if sha is not None:
        sha = sha.lower()
        if not _HEX.fullmatch(sha):
            raise ConfigError(f"{where}: sha256 must be 64 hex digits (or a prefix of at least 8)")
    interpolation = raw.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"{where}: interpolation must be one of {', '.join(INTERPOLATIONS)}")
    labels = _optional(raw.get("labels", "imagenet" if task == "classify" else None), str, "labels", where)
    if labels not in (None, "imagenet") and base_dir is not None and not Path(labels).is_absolute():
        labels = str((base_dir / labels).resolve())
    for key in ("resize", "crop", "num_classes", "num_params", "max_size"):
        value = _optional(raw.get(key), int, key, where)
        if value is not None and value <= 0:
            raise ConfigError(f"{where}: {key} must be a positive integer")
    kwargs = raw.get("builder_kwargs", {})
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where}: builder_kwargs must be a table")
    points = raw.get("keypoint_names", [])
    if not isinstance(points, list) or not all(isinstance(p, str) and 0 < len(p) <= 64 for p in points):
        raise ConfigError(f"{where}: keypoint_names must be a list of short names")
    for key in ("acc1", "acc5", "box_map", "keypoint_map", "mask_map", "miou", "pixel_acc"):
        _optional(raw.get(key), (int, float), key, where)
    clip_frames, clip_rate, frame_size = _clip_facts(raw, where)
    return Entry(
        model=model,
        weights=str(raw.get("weights") or "DEFAULT"),
        task=task,
        architecture=architecture,
        url=url,
        sha256=sha,
        file_name=_entry_file_name(url, _optional(raw.get("file_name"), str, "file_name", where), where),
        size_mb=_size(raw.get("size_mb"), where),
        # An entry that names no weights variant is its model's default unless it says otherwise.
        is_default=_optional(raw.get("default", not raw.get("weights")), bool, "default", where),
        labels=labels,
        num_classes=raw.get("num_classes"),
        num_params=raw.get("num_params"),
        acc1=raw.get("acc1"),
        acc5=raw.get("acc5"),
        gflops=raw.get("gflops"),
        resize=raw.get("resize"),
        crop=raw.get("crop"),
        interpolation=interpolation,
        mean=_triple(raw.get("mean"), "mean", where),
        std=_triple(raw.get("std"), "std", where),
        licence=raw.get("licence") or raw.get("license"),
        description=raw.get("description"),
        builder_kwargs=dict(kwargs),
        source=source,
        max_size=raw.get("max_size"),
        frozen_batchnorm=_optional(raw.get("frozen_batchnorm", False), bool, "frozen_batchnorm", where),
        keypoint_names=tuple(points),
        batchnorm_eps=_eps(raw.get("batchnorm_eps"), where),
        box_map=raw.get("box_map"),
        keypoint_map=raw.get("keypoint_map"),
        mask_map=raw.get("mask_map"),
        miou=raw.get("miou"),
        pixel_acc=raw.get("pixel_acc"),
        clip_frames=clip_frames,
        clip_rate=clip_rate,
        frame_size=frame_size,
    )


def _clip_facts(raw: dict[str, Any], where: str) -> tuple[int | None, float | None, tuple[int, int] | None]:
    """A video classifier's clip length, frame rate and frame size, checked."""
    frames = _optional(raw.get("clip_frames"), int, "clip_frames", where)
    rate = _optional(raw.get("clip_rate"), (int, float), "clip_rate", where)
    size = raw.get("frame_size")
    if frames is not None and not 1 <= frames <= 1024:
        raise ConfigError(f"{where}: clip_frames must be from 1 to 1024")
    if (rate is None) != (frames is None) or (rate is not None and not 0.1 <= rate <= 1000):
        raise ConfigError(
            f"{where}: a video classifier gives clip_frames with clip_rate (frames a second, 0.1 to 1000)"
        )
    if size is not None and not (
        isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and 1 <= v <= 4096 for v in size)
    ):
        raise ConfigError(f"{where}: frame_size must be [height, width] in pixels")
    return frames, None if rate is None else float(rate), None if size is None else (size[0], size[1])


def _eps(value: Any, where: str) -> float | None:
    eps = _optional(value, (int, float), "batchnorm_eps", where)
    if eps is not None and not (0 <= eps <= 1):  # also refuses NaN
        raise ConfigError(f"{where}: batchnorm_eps must be a number from 0 to 1")
    return None if eps is None else float(eps)


def _read_text(path: Path) -> str:
    """The catalog file as text; not UTF-8 is a ConfigError naming the line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read catalog file {path} ({exc.strerror or exc}); check PTM_CATALOG") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"catalog file {path}, line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 text; save the file as UTF-8"
        ) from None


def _parse(path: Path, loads: Callable[[str], Any]) -> Any:
    """``loads`` of the file's text; every way the text can fail is a ConfigError naming the file."""
    text = _read_text(path)
    try:
        return loads(text)
    except RecursionError:
        raise ConfigError(f"catalog file {path}: nested too deeply to be a catalog") from None
    except ValueError as exc:  # the decoders name the line; an integer of over 4300 digits does not
        raise ConfigError(f"catalog file {path}: {first_line(exc)}") from None


def _records_from_json(path: Path) -> Iterator[dict[str, Any]]:
    doc = _parse(path, json.loads)
    try:
        models = doc["models"]
        for model in models:
            shared = {k: v for k, v in model.items() if k != "weights"}
            for variant in model["weights"]:
                yield {**shared, **{("weights" if k == "name" else k): v for k, v in variant.items()}}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"catalog file {path} is not a ptm JSON catalog ({type(exc).__name__}: {exc}); "
            "write user catalogs as TOML [[model]] tables"
        ) from None


def _records_from_toml(path: Path) -> Iterator[dict[str, Any]]:
    doc = _parse(path, tomllib.loads)
    models = doc.get("model", [])
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise ConfigError(f"catalog file {path}: expected [[model]] tables")
    yield from models


def user_catalog_paths() -> list[Path]:
    """The catalog files ``PTM_CATALOG`` names."""
    return settings.catalog_paths()


def catalog_files(extra: Iterable[Path] | None = None) -> list[Path]:
    """The files :meth:`Catalog.load` reads, in its order: the shipped ones, then ``extra`` or ``PTM_CATALOG``'s."""
    shipped = sorted(CATALOG_DIR.glob("*.json")) + sorted(CATALOG_DIR.glob("*.toml"))
    return shipped + (list(extra) if extra is not None else user_catalog_paths())


# A catalog file changed less than this long ago is read again every time: a second write within
# the file system's timestamp granularity (a few milliseconds) would not change its mtime.
SETTLED_S = 2.0
_LOADED: dict[tuple[Any, ...], Catalog] = {}
_LOADED_LOCK = threading.Lock()


def _files_key(paths: list[Path]) -> tuple[Any, ...] | None:
    """The files as they are now (path, device, inode, size, mtime); None when one is missing or too fresh.

    A long-lived process (the warm server) asks for the catalog on every
    request; a ``stat`` of each file is enough to know it is unchanged.
    """
    now = time.time_ns()
    key = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            return None
        if now - info.st_mtime_ns < SETTLED_S * 1e9:
            return None
        key.append((str(path.absolute()), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(key)


def _what_is(path: Path) -> str:
    """What is at ``path`` when it is not a regular file, for a message."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "is a named pipe, not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a file"
    return "is not a regular file"


class Catalog:
    """All known entries, looked up by model name and weights name."""

    def __init__(self, entries: Iterable[Entry]):
        self._by_model: dict[str, dict[str, Entry]] = {}
        for entry in entries:
            variants = self._by_model.setdefault(entry.model, {})
            variants.pop(entry.weights, None)  # a later file's entry also comes later: its default wins
            variants[entry.weights] = entry

    @classmethod
    def load(cls, extra: Iterable[Path] | None = None) -> Catalog:
        """The catalog its files hold now; parsed again only when one of them changed (see :func:`_files_key`)."""
        paths = catalog_files(extra)
        key = _files_key(paths)
        with _LOADED_LOCK:
            known = _LOADED.get(key) if key is not None else None
        if known is not None:
            return known
        entries: list[Entry] = []
        for path in paths:
            if not path.is_file():
                raise ConfigError(f"catalog file {path} {_what_is(path)}; PTM_CATALOG names TOML or JSON files")
            records = _records_from_json(path) if path.suffix == ".json" else _records_from_toml(path)
            source = path.name if path.parent == CATALOG_DIR else str(path)
            entries.extend(entry_from_mapping(r, source=source, base_dir=path.parent) for r in records)
        catalog = cls(entries)
        if key is not None:
            with _LOADED_LOCK:
                _LOADED.clear()  # one catalog at a time: a changed file leaves nothing stale behind
                _LOADED[key] = catalog
        return catalog

    def models(self, task: str | None = None) -> list[str]:
        return sorted(m for m, ws in self._by_model.items() if task is None or next(iter(ws.values())).task == task)

    def entries(self, task: str | None = None) -> list[Entry]:
        return [e for m in self.models(task) for e in self._by_model[m].values()]

    @cached_property
    def _lower_names(self) -> dict[str, str]:
        return {m.lower(): m for m in self._by_model}

    def variants(self, model: str) -> list[str]:
        """The weights names of ``model`` (any case; ``MODEL:WEIGHTS`` accepted), [] for an unknown model."""
        name = self._lower_names.get(model.split(":", 1)[0].lower())
        return list(self._by_model[name]) if name else []

    def resolve(self, model: str, weights: str | None = None, *, task: str | None = None) -> Entry:
        """The entry for ``model`` (``name`` or ``name:WEIGHTS``) and weights name.

        ``DEFAULT`` (or no weights) picks the entry marked default, else the
        only or first one. Names are matched without regard to case, and
        torchvision's ``ResNet101_Weights.IMAGENET1K_V1`` spelling is accepted.
        """
        if ":" in model and weights is None:
            model, weights = model.split(":", 1)
        name = self._lower_names.get(model.lower())
        if name is None:
            close = [m for m in self.models(task) if model.lower() in m.lower()][:5]
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise UnknownModel(f"unknown model {model!r}.{hint} Run `ptm models` to list the models ptm knows.")
        variants = self._by_model[name]
        first = next(iter(variants.values()))
        if task is not None and first.task != task:
            raise UnknownModel(f"model {name!r} is for `ptm {first.task}`, not `ptm {task}`")
        requested = weights or "DEFAULT"
        for key, entry in variants.items():  # an exact name first: user names may hold dots
            if key.upper() == requested.upper() and key.upper() != "DEFAULT":
                return entry
        wanted = re.sub(r"^\w+_Weights\.", "", requested, flags=re.IGNORECASE).upper()
        if wanted == "DEFAULT":
            # A later catalog file's default (a user's) wins over the shipped one.
            defaults = [e for e in variants.values() if e.is_default]
            return defaults[-1] if defaults else first
        for key, entry in variants.items():
            if key.upper() == wanted:
                return entry
        raise UnknownModel(f"model {name!r} has no weights {weights!r}; it has {', '.join(variants)} (or DEFAULT)")


# Labels that hold a class index's place without naming a class: COCO's unused ids, the background,
# the keypoint model's "no person".
PLACEHOLDER_LABELS = frozenset({"N/A", "__background__", "no person"})


def is_class(label: str) -> bool:
    """Whether a label names a class a model can report (not a placeholder of :data:`PLACEHOLDER_LABELS`)."""
    return label not in PLACEHOLDER_LABELS


def load_labels(entry: Entry) -> list[str] | None:
    """The class names for an entry's outputs, or None when it has none."""
    if entry.labels is None:
        return None
    path = CATALOG_DIR / "imagenet_classes.txt" if entry.labels == "imagenet" else Path(entry.labels)
    limit = settings.tuning.max_labels_bytes
    try:
        with path.open("rb") as stream:  # bounded: `--labels /dev/zero` must not read forever
            data = stream.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"{entry.ref}: cannot read labels file {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise ConfigError(f"{entry.ref}: labels file {path} is larger than {limit >> 20} MiB; give one label per line")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{entry.ref}: labels file {path}, line {at}, is not UTF-8 text") from None
    labels = []
    for number, line in enumerate(text.splitlines(), 1):
        if len(line) > settings.tuning.max_line_bytes:
            raise ConfigError(
                f"{entry.ref}: line {number} of labels file {path} is longer than "
                f"{settings.tuning.max_line_bytes} characters; give one label per line"
            )
        if line.strip():
            labels.append(line.strip())
    return labels
