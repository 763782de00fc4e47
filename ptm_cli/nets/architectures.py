"""One registry from a catalog architecture name to the code that builds it.

Three sources, tried in this order:

* ptm's own networks (:mod:`ptm_cli.nets.classic`): the ResNet family, AlexNet and
  VGG, built without importing torchvision (which halves a cold start), with
  torchvision's exact module names and outputs;
* the CycleGAN generator (:mod:`ptm_cli.nets.cyclegan`) for translation entries;
* every other torchvision classifier, through ``torchvision.models.get_model``;
* torchvision's detectors, as their pretrained weights expect them
  (:mod:`ptm_cli.nets.detection`), and its segmentation models
  (:mod:`ptm_cli.nets.segmentation`).

:func:`factory` gives a no-argument constructor for an entry, :func:`build`
fills it with a state dict (strictly, without initialising first), and
:func:`match_architecture` names the catalog architecture a weights file fits.
:func:`ensure_weights` and :func:`import_weights` put a file in the cache
only once it loads and fits its entry's architecture (when no full sha256 is
known to check it against). Every task and ``ptm weights`` go through here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from . import cyclegan
from .modeling import build_with_weights, skip_init

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..cache.catalog import Catalog, Entry
    from ..cache.weights import Validator
    from ..tensorio.inspection import Inspection
    from .device import Precision

# Floating buffers torchvision models keep in their state dicts (model.parameters() does not count them).
_FLOAT_BUFFERS = ("running_mean", "running_var", "relative_coords_table")


def _torchvision_factory(entry: Entry, kwargs: dict[str, Any]) -> Callable[[], nn.Module]:
    import torchvision.models as tvm

    module = tvm.video if entry.is_video else tvm
    if entry.architecture not in set(tvm.list_models(module=module)):
        kind = "video classifier" if entry.is_video else "classifier"
        raise ConfigError(
            f"{entry.ref}: architecture {entry.architecture!r} is not a torchvision {kind}; "
            "`ptm models` lists the ones ptm can build"
        )
    architecture = entry.architecture
    return lambda: tvm.get_model(architecture, weights=None, **kwargs)


def _classifier_factory(entry: Entry) -> Callable[[], nn.Module]:
    from . import classic as nets

    kwargs = dict(entry.builder_kwargs)
    if entry.num_classes:
        kwargs["num_classes"] = entry.num_classes
    build = nets.builder_for(entry.architecture, kwargs) or _torchvision_factory(entry, kwargs)

    def checked_build() -> nn.Module:
        try:
            return build()
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"{entry.ref}: {entry.architecture} cannot be built with builder_kwargs {kwargs} ({e}); "
                "fix builder_kwargs in the catalog entry"
            ) from e

    return checked_build


def factory(entry: Entry) -> Callable[[], nn.Module]:
    """A no-argument constructor for ``entry``'s architecture; ``ConfigError`` when ptm cannot build it."""
    if entry.architecture == cyclegan.ARCHITECTURE:
        kwargs = cyclegan.generator_kwargs(entry)
        return lambda: cyclegan.build_generator(**kwargs)
    if entry.task == "detect":
        from . import detection

        return detection.factory(entry)
    if entry.task == "segment":
        from . import segmentation

        return segmentation.factory(entry)
    return _classifier_factory(entry)


def build(entry: Entry, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """``entry``'s network with ``state_dict`` loaded strictly, in eval mode, on the CPU, in float32.

    Raises ``IncompatibleWeights`` naming missing, unexpected or mis-shaped keys.
    """
    make = factory(entry)
    if entry.architecture == cyclegan.ARCHITECTURE:
        state_dict = cyclegan.clean_state_dict(state_dict, **cyclegan.generator_kwargs(entry))
    model = build_with_weights(make, state_dict, what=f"{entry.architecture} ({entry.ref})")
    # Files saved in fp16/bf16 keep that dtype when assigned; precision is chosen when running.
    return model.float()


def ready(
    entry: Entry, weights_file: Path | str | None, *, device: str, precision: str, progress: bool
) -> tuple[nn.Module, torch.device, Precision]:
    """``entry``'s network with its weights (the catalog's, or ``weights_file``), on the device ``device`` names,
    and the precision it runs at there. The architecture is checked before any download, the device after."""
    from .device import check_device_spec, choose_device, choose_precision

    check_device_spec(device)
    factory(entry)  # the architecture and its arguments, before any download
    state_dict = load_weights(entry, weights_file, progress=progress)
    torch_device = choose_device(device)
    chosen = choose_precision(precision, torch_device)
    return build(entry, state_dict).to(torch_device), torch_device, chosen


def check_fits(entry: Entry, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise ``IncompatibleWeights`` unless ``state_dict`` has exactly the keys, shapes and kinds ``entry`` needs.

    The model is built on the meta device (no memory, no initialisation), and
    the weights are not loaded into it: a cheap check of a file before the
    cache keeps it.
    """
    import torch

    from .modeling import check_compatible

    make = factory(entry)
    if entry.architecture == cyclegan.ARCHITECTURE:
        state_dict = cyclegan.clean_state_dict(state_dict, **cyclegan.generator_kwargs(entry))
    try:
        with torch.device("meta"), skip_init():
            model = make()
    except (NotImplementedError, RuntimeError):
        with skip_init():
            model = make()
    check_compatible(model, state_dict, what=f"{entry.architecture} ({entry.ref})")


# --- weights for an entry ---------------------------------------------------------------------------


def weights_validator(entry: Entry) -> Validator:
    """A check for a file that has no full sha256 to be verified against: it must load, and fit ``entry``.

    The cache runs it before it keeps (and pins) a download or an import.
    """

    def validate(path: Path) -> None:
        from ..tensorio import load_state_dict

        check_fits(entry, load_state_dict(path))

    return validate


def ensure_weights(entry: Entry, *, progress: bool = True) -> Path:
    """The verified local file for ``entry`` (downloaded first if needed); a first download must fit the entry."""
    from ..cache import weights

    return weights.fetch(entry, progress=progress, validate=weights_validator(entry))


def import_weights(entry: Entry, src: Path) -> Path:
    """Copy a weights file into the cache after checking its hash (and, with no full hash known, its fit)."""
    from ..cache import weights

    return weights.import_weights(entry, src, validate=weights_validator(entry))


def load_weights(entry: Entry, weights_file: Path | str | None = None, *, progress: bool = True) -> dict[str, Any]:
    """``entry``'s tensors: from ``weights_file`` when given, else from its verified cached file."""
    if weights_file is not None:
        from ..tensorio import load_state_dict

        return load_state_dict(Path(weights_file))
    from ..cache import weights

    return weights.load_weights(entry, progress=progress, validate=weights_validator(entry))


# --- which architecture does a file fit? ---------------------------------------------------------


def match_architecture(inspection: Inspection, catalog: Catalog, *, exhaustive: bool = False) -> str | None:
    """The catalog architecture whose state dict has exactly the file's keys and shapes, or None.

    Candidates are built on the meta device (no memory, no initialisation).
    Only entries whose catalog ``num_params`` equals an estimate of the file's
    parameter count are tried; ``exhaustive`` then also tries every other entry
    small enough to fit (slower: seconds), nearest parameter count first.
    """
    wanted = {t.name: t.shape for t in inspection.tensors}
    if not wanted:
        return None
    estimates = _param_count_estimates(inspection)
    candidates = _distinct_builds(catalog)
    likely = [e for e in candidates if e.num_params in estimates]
    others: list[Entry] = []
    if exhaustive:
        tried = {id(e) for e in likely}
        ceiling = inspection.num_params  # every parameter is a floating tensor of the file
        target = max(estimates)
        others = sorted(
            (e for e in candidates if id(e) not in tried and (e.num_params or 0) <= ceiling),
            key=lambda e: abs((e.num_params or 0) - target),
        )
    for entry in likely + others:
        if _architecture_shapes(entry) == wanted:
            return entry.architecture
    return None


def _param_count_estimates(inspection: Inspection) -> set[int]:
    """What ``sum(p.numel() for p in model.parameters())`` may be for the model that saved this file.

    The catalog's num_params counts parameters only, not buffers, and a tied
    parameter once. A state dict also holds buffers: batch-norm running stats
    and Swin V2's ``relative_coords_table`` are the floating ones torchvision
    has (``num_batches_tracked`` is an integer). GoogLeNet's published count
    is taken after torchvision drops its auxiliary heads, which its file still
    holds, so a second estimate leaves out top-level ``aux*`` modules.
    """
    params = [
        t
        for t in inspection.tensors
        if t.is_floating and t.alias_of is None and t.name.rsplit(".", 1)[-1] not in _FLOAT_BUFFERS
    ]
    everything = sum(t.numel for t in params)
    without_aux = sum(t.numel for t in params if not t.name.lower().startswith("aux"))
    return {everything, without_aux}


def _distinct_builds(catalog: Catalog) -> list[Entry]:
    """One entry per distinct (architecture, builder arguments): weights variants build the same model."""
    seen: dict[tuple[str, str, str], Entry] = {}
    for entry in catalog.entries():
        key = (entry.task, entry.architecture, json.dumps([entry.builder_kwargs, entry.num_classes], sort_keys=True))
        seen.setdefault(key, entry)
    return list(seen.values())


def _architecture_shapes(entry: Entry) -> dict[str, tuple[int, ...]] | None:
    """The entry's state-dict keys and shapes, or None when it cannot be built."""
    import torch

    try:
        make = factory(entry)
    except ConfigError:
        return None
    # Any failure only means this candidate is not the one: matching never fails because of it.
    try:
        with torch.device("meta"), skip_init():
            model = make()
    except Exception:
        try:
            # Builders that compute with real tensors (RegNet) cannot run on meta; skip_init
            # leaves the CPU memory untouched, so this costs little more.
            with skip_init():
                model = make()
        except Exception:
            return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
