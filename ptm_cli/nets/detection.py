"""torchvision's detectors built as their pretrained weights expect, without torchvision downloading anything.

torchvision builds a detector differently when it is given pretrained
weights: the ResNet and MobileNet backbones of the v1 models then use
``FrozenBatchNorm2d`` instead of ``BatchNorm2d`` (other state-dict keys,
other arithmetic), and the number of classes and keypoints follows the
weights. ptm builds the same network from its catalog entry:
``builder_kwargs`` carries the class and keypoint counts, and
``frozen_batchnorm`` (and ``batchnorm_eps``) say to swap the batch norms the way torchvision's
builder does, so a checkpoint loads strictly and computes what torchvision's
own model computes. ``scripts/gen_torchvision_catalog.py`` checks this
against the model torchvision builds with weights, and ``tests/test_catalog.py``
checks the shipped catalog still agrees.

Importing this module imports neither torch nor torchvision.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from ..cache.catalog import Entry


@functools.cache
def architectures() -> frozenset[str]:
    """The detection builders torchvision has (instance segmentation's Mask R-CNN among them)."""
    import torchvision.models as tvm
    import torchvision.models.detection as detection

    return frozenset(tvm.list_models(module=detection))


def factory(entry: Entry) -> Callable[[], nn.Module]:
    """A no-argument constructor for ``entry``'s detector, with no weights loaded or downloaded."""
    if entry.architecture not in architectures():
        raise ConfigError(
            f"{entry.ref}: architecture {entry.architecture!r} is not a torchvision detector; "
            "`ptm models --task detect` lists the ones ptm can build"
        )
    import torchvision.models as tvm

    kwargs: dict[str, Any] = dict(entry.builder_kwargs)
    if entry.num_classes:
        kwargs["num_classes"] = entry.num_classes
    architecture, frozen, eps = entry.architecture, entry.frozen_batchnorm, entry.batchnorm_eps

    def build() -> nn.Module:
        try:
            model: nn.Module = tvm.get_model(architecture, weights=None, weights_backbone=None, **kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"{entry.ref}: {architecture} cannot be built with builder_kwargs {kwargs} ({e}); "
                "fix builder_kwargs in the catalog entry"
            ) from e
        if frozen:
            freeze_batchnorm(model, eps)
        return model

    return build


def freeze_batchnorm(model: nn.Module, eps: float | None = None) -> None:
    """Replace every ``BatchNorm2d`` by a ``FrozenBatchNorm2d`` of the same size and epsilon (or ``eps``), in place.

    This is the network torchvision's builders make for pretrained weights
    (their state dicts have no ``num_batches_tracked``); for some older COCO
    weights they then set every frozen norm's epsilon to 0, as they were trained.
    """
    from torch import nn
    from torchvision.ops.misc import FrozenBatchNorm2d

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                setattr(parent, name, FrozenBatchNorm2d(child.num_features, eps=child.eps if eps is None else eps))


_LIMITS = ("score_thresh", "box_score_thresh", "detections_per_img", "box_detections_per_img")


@contextlib.contextmanager
def limited(model: nn.Module, *, min_score: float, max_detections: int) -> Iterator[None]:
    """Let the model keep at least every box ``min_score`` and ``max_detections`` ask for, while the block runs.

    A detector drops boxes below its own score threshold (0.05 for most,
    0.01 for SSD300, 0.001 for SSDlite, 0.2 for FCOS) and keeps at most its
    own number per image (100, 200 or 300) before ptm sees them. Lowering the
    threshold only adds boxes below the old one: non-maximum suppression goes
    from the highest score down, so a lower box never removes a higher one,
    and the boxes above the old threshold stay as they were. The model's own
    values come back after the block; callers hold the model alone meanwhile.
    """
    holders = [h for h in (model, getattr(model, "roi_heads", None)) if h is not None]
    saved = [(h, name, getattr(h, name)) for h in holders for name in _LIMITS if hasattr(h, name)]
    try:
        for holder, name, value in saved:
            if name.endswith("score_thresh"):
                setattr(holder, name, min(float(value), min_score))
            else:
                setattr(holder, name, max(int(value), max_detections))
        yield
    finally:
        for holder, name, value in saved:
            setattr(holder, name, value)


@contextlib.contextmanager
def masks_unpasted(model: nn.Module) -> Iterator[None]:
    """While the block runs, an instance model leaves its masks unpasted: ``mask_probs`` [N, 1, M, M] per image.

    torchvision pastes every object's mask into a float array the size of
    the whole image ([N, 1, H, W]: 4.8 GB for 100 objects on a 12-megapixel
    photo); ptm pastes each one into its window instead
    (:func:`ptm_cli.tasks._detector.instance_mask`). Boxes and keypoints are
    brought to the image's pixels as usual. Models without masks are left alone.
    """
    transform = getattr(model, "transform", None)
    heads = getattr(model, "roi_heads", None)
    if transform is None or heads is None or not heads.has_mask():
        yield
        return
    original = transform.postprocess

    def postprocess(result: list[dict[str, Any]], image_shapes: Any, original_sizes: Any) -> list[dict[str, Any]]:
        held = [r.pop("masks", None) for r in result]
        out: list[dict[str, Any]] = original(result, image_shapes, original_sizes)
        for r, masks in zip(out, held, strict=True):
            if masks is not None:
                r["mask_probs"] = masks
        return out

    transform.postprocess = postprocess
    try:
        yield
    finally:
        del transform.postprocess


def input_limits(model: Any) -> dict[str, Any]:
    """How the model resizes its inputs: its transform's sizes and normalisation (for the catalog and reports)."""
    transform = model.transform
    fixed = transform.fixed_size
    return {
        "resize": int(transform.min_size[-1]),
        "max_size": int(transform.max_size),
        "fixed_size": None if fixed is None else [int(fixed[0]), int(fixed[1])],
        "mean": [float(x) for x in transform.image_mean],
        "std": [float(x) for x in transform.image_std],
    }
