"""From model options to a ready model: the one function the CLI, a batch worker and a server call.

:class:`ModelOptions` is what a user says on the command line (``-m``,
``-w``, ``--device``, ``--precision``, ``--resize``, ``--crop``, and for
``hub:`` models ``--labels``, ``--trust-repo``, ``--arg``).
:func:`plan_classifier` / :func:`plan_translator` check those options
without importing torch or touching the network (so a typo fails at once,
before any input is read), and the plan's ``load()`` builds the model.
:func:`load_classifier` and :func:`load_translator` do both.

``-w`` is read strictly: a weights variant name (``DEFAULT``,
``IMAGENET1K_V1``...) always means the catalog's weights, even if a file of
that name sits in the working directory; a local file is a path, which is to
say it contains a path separator or ends in a weights suffix (``.pth``,
``.safetensors``...). A name that is neither a known variant nor a path is
refused with a message that names both readings.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cache.catalog import Catalog, Entry, load_labels
from ..errors import UnknownModel, UsageError
from ..nets.device import check_device_spec, choose_device, choose_precision, place_classifier
from ..tensorio.filetypes import has_weights_suffix

if TYPE_CHECKING:
    import torch

    from ..cache.weights import Validator
    from .classify import Classifier
    from .translate import Translator

HUB_PREFIX = "hub:"


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


@dataclass(frozen=True)
class Plan:
    """Options checked and resolved; ``load()`` does the expensive part."""

    options: ModelOptions
    entry: Entry | None  # None for hub: models, whose entry comes from the repository
    weights_file: Path | None
    _load: Callable[[Plan, bool], Any]

    def load(self, *, progress: bool = True) -> Any:
        return self._load(self, progress)


def local_weights_file_spelling(value: str) -> bool:
    """Whether ``-w VALUE`` is spelled as a path (a separator, or a weights suffix) rather than a variant name."""
    return os.sep in value or "/" in value or has_weights_suffix(value)


def local_weights_file(value: str) -> Path | None:
    """The file ``-w VALUE`` names, or None when VALUE is a variant name.

    A path has a separator or a weights suffix; anything else is a name,
    whatever the working directory holds.
    """
    if not local_weights_file_spelling(value):
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        if path.is_dir():
            what = "is a folder"
        elif path.exists():
            what = "is a device or pipe, not a file ptm can seek in"
        else:
            what = "does not exist"
        raise UsageError(f"weights file {value} {what}; give the path of a .pth, .safetensors or .h5 file")
    return path


def resolve_entry(
    model: str, weights_option: str, *, task: str, catalog: Catalog | None = None
) -> tuple[Entry, Path | None]:
    """The catalog entry for ``-m``/``-w`` (``-m MODEL:WEIGHTS`` works too) and a local weights file, if any.

    ``catalog``: one already read (a server keeps it); by default the catalog files are read now.
    """
    weights_file = local_weights_file(weights_option)
    named = None if weights_file or weights_option.upper() == "DEFAULT" else weights_option
    if ":" in model and named is not None:
        raise UsageError(f"-m {model} already names its weights; drop -w {weights_option}")
    try:
        entry = (catalog or Catalog.load()).resolve(model, named, task=task)
    except UnknownModel as exc:
        if named is not None and Path(named).is_file():
            raise UsageError(
                f"-w {named} is neither a weights variant of {model} nor a path; "
                f"for the file in this folder write -w ./{named}"
            ) from exc
        raise
    return entry, weights_file


def weights_validator(entry: Entry) -> Validator:
    """A check for a file that has no full sha256 to be verified against: it must load, and fit ``entry``.

    The cache runs it before it keeps (and pins) a download or an import.
    """
    from ..nets import architectures

    def validate(path: Path) -> None:
        from ..tensorio import load_state_dict

        architectures.check_fits(entry, load_state_dict(path))

    return validate


def ensure_weights(entry: Entry, *, progress: bool = True) -> Path:
    """The verified local file for ``entry`` (downloaded first if needed); a first download must fit the entry."""
    from ..cache import weights

    return weights.ensure_weights(entry, progress=progress, validate=weights_validator(entry))


def import_weights(entry: Entry, src: Path) -> Path:
    """Copy a weights file into the cache after checking its hash (and, with no full hash known, its fit)."""
    from ..cache import weights

    return weights.import_weights(entry, src, validate=weights_validator(entry))


def catalog_entry(name: str, weights_name: str | None = None) -> Entry:
    """The catalog entry ``NAME`` (its default weights) or ``MODEL:WEIGHTS`` names, for the cache commands."""
    return Catalog.load().resolve(name, weights_name)


def weights_file_or_cached(target: str) -> Path:
    """A weights FILE (anything spelled as a path), or the cached file of a catalog NAME.

    As with ``-w``, a name always means the catalog, even when a file of that
    name sits in the working directory; such a file is read only when no
    catalog entry has the name.
    """
    from ..cache import weights

    local = local_weights_file(target)  # a path that does not exist fails here, naming it
    if local is not None:
        return local
    try:
        entry = catalog_entry(target)
    except UnknownModel:
        if Path(target).is_file():
            return Path(target)
        raise
    cached = weights.cached_path(entry)
    if not cached.is_file():
        raise UsageError(f"{target} is not downloaded yet; run `ptm weights download {target}` first")
    return cached


def _state_dict(
    entry: Entry, weights_file: Path | str | None, progress: bool
) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors and the label records show for them: the variant, or the file as the user wrote it."""
    from ..cache import weights

    if weights_file is not None:
        from ..tensorio import load_state_dict

        return load_state_dict(Path(weights_file)), str(weights_file)
    return weights.load_weights(entry, progress=progress, validate=weights_validator(entry)), entry.weights


def _as_written(plan: Plan) -> str | None:
    """A local weights file as the user spelled it (``./DEFAULT`` stays ``./DEFAULT`` in the records)."""
    return None if plan.weights_file is None else plan.options.weights


# --- classifiers ---------------------------------------------------------------------------------


def _check_sides(options: ModelOptions) -> None:
    from ..settings import check_side_pixels

    for option, side in (("--resize", options.resize), ("--crop", options.crop)):
        if side is not None:
            check_side_pixels(option, side)


def plan_classifier(options: ModelOptions, *, catalog: Catalog | None = None) -> Plan:
    """Check classification options now (no torch, no network); ``.load()`` gives a :class:`Classifier`."""
    check_device_spec(options.device)
    _check_sides(options)
    if options.is_hub:
        from ..hub import parse_kwargs, parse_model_spec

        parse_model_spec(options.model)
        parse_kwargs(options.hub_args)
        if options.weights.upper() != "DEFAULT":
            raise UsageError("-w/--weights does not apply to hub: models; pass entry-point arguments with --arg")
        return Plan(options, None, None, _load_hub_classifier)
    if options.labels_file or options.trust_repo or options.hub_args:
        raise UsageError("--labels, --trust-repo and --arg apply to hub: models only")
    entry, weights_file = resolve_entry(options.model, options.weights, task="classify", catalog=catalog)
    return Plan(options, entry, weights_file, _load_catalog_classifier)


def load_classifier(options: ModelOptions, *, progress: bool = True) -> Classifier:
    """A ready :class:`~ptm_cli.tasks.classify.Classifier` for ``options``."""
    classifier: Classifier = plan_classifier(options).load(progress=progress)
    return classifier


def _with_overrides(preprocess: Any, resize: int | None, crop: int | None) -> Any:
    if resize is None and crop is None:
        return preprocess
    return replace(preprocess, resize=resize or preprocess.resize, crop=crop or preprocess.crop)


def build_classifier(
    entry: Entry,
    *,
    weights_file: Path | str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    resize: int | None = None,
    crop: int | None = None,
    progress: bool = True,
) -> Classifier:
    """A ready classifier for a catalog entry (or one made in code), with its weights or ``weights_file``."""
    from ..nets import architectures
    from .classify import Classifier

    check_device_spec(device)
    preprocess = _with_overrides(entry.preprocess(), resize, crop)
    labels = load_labels(entry)
    architectures.factory(entry)  # a catalog mistake fails before any download
    # Weights before devices: a missing file should fail before torch is even imported.
    state_dict, label = _state_dict(entry, weights_file, progress)
    torch_device = choose_device(device)
    chosen = choose_precision(precision, torch_device)
    model = place_classifier(architectures.build(entry, state_dict), torch_device)
    classifier = Classifier(
        entry, model, weights_label=label, labels=labels, preprocess=preprocess, device=torch_device, precision=chosen
    )
    classifier.check_labels()
    return classifier


def _load_catalog_classifier(plan: Plan, progress: bool) -> Classifier:
    options = plan.options
    assert plan.entry is not None
    return build_classifier(
        plan.entry, weights_file=_as_written(plan), device=options.device, precision=options.precision,
        resize=options.resize, crop=options.crop, progress=progress,
    )  # fmt: skip


def _load_hub_classifier(plan: Plan, progress: bool) -> Classifier:
    from ..hub import parse_kwargs
    from .hubclassifier import hub_classifier

    options = plan.options
    classifier = hub_classifier(
        options.model,
        labels_file=options.labels_file,
        device=options.device,
        precision=options.precision,
        trust_repo=options.trust_repo,
        kwargs=parse_kwargs(options.hub_args),
    )
    classifier.preprocess = _with_overrides(classifier.preprocess, options.resize, options.crop)
    return classifier


# --- translators ----------------------------------------------------------------------------------


def plan_translator(options: ModelOptions, *, catalog: Catalog | None = None) -> Plan:
    """Check translation options now (no torch, no network); ``.load()`` gives a :class:`Translator`."""
    check_device_spec(options.device)
    if options.is_hub or options.labels_file or options.trust_repo or options.hub_args:
        raise UsageError("hub: models, --labels, --trust-repo and --arg apply to classification only")
    entry, weights_file = resolve_entry(options.model, options.weights, task="translate", catalog=catalog)
    return Plan(options, entry, weights_file, _load_translator)


def load_translator(options: ModelOptions, *, progress: bool = True) -> Translator:
    """A ready :class:`~ptm_cli.tasks.translate.Translator` for ``options``."""
    translator: Translator = plan_translator(options).load(progress=progress)
    return translator


def build_translator(
    entry: Entry,
    *,
    weights_file: Path | str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    progress: bool = True,
) -> Translator:
    """A ready translator for a catalog entry (or one made in code), with its weights or ``weights_file``."""
    from ..nets import architectures
    from .translate import Translator

    check_device_spec(device)
    architectures.factory(entry)  # the architecture and its arguments, before any download
    state_dict, label = _state_dict(entry, weights_file, progress)
    torch_device = choose_device(device)
    chosen = choose_precision(precision, torch_device)
    model = architectures.build(entry, state_dict).to(torch_device)
    return Translator(entry, model, weights_label=label, device=torch_device, precision=chosen)


def _load_translator(plan: Plan, progress: bool) -> Translator:
    options = plan.options
    assert plan.entry is not None
    return build_translator(
        plan.entry, weights_file=_as_written(plan), device=options.device, precision=options.precision,
        progress=progress,
    )  # fmt: skip


__all__ = [
    "ModelOptions",
    "Plan",
    "build_classifier",
    "build_translator",
    "catalog_entry",
    "load_classifier",
    "load_translator",
    "local_weights_file",
    "local_weights_file_spelling",
    "plan_classifier",
    "plan_translator",
    "resolve_entry",
    "weights_file_or_cached",
]
