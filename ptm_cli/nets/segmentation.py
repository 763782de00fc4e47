"""torchvision's segmentation networks built as their pretrained weights expect, with nothing downloaded.

Two kinds share ``ptm segment``:

* semantic models (DeepLabV3, FCN, LRASPP): a class score for every pixel.
  Their COCO-with-VOC-labels weights hold an auxiliary head (``aux_loss``,
  which the catalog's ``builder_kwargs`` carries) so that they load strictly;
  :func:`drop_auxiliary` removes it once loaded, since only training uses it
  and it costs a tenth of the forward pass;
* instance models (Mask R-CNN): detectors with a mask head, built by
  :mod:`.detection` (frozen backbone norms and all).

:func:`global_pools` finds the layers that average a whole feature map to
one value per channel (DeepLabV3's image-pooling branch, LRASPP's scale
branch, MobileNetV3's squeeze-and-excitation blocks): a tile seeing part of
the image would average only its part, so tiled runs take those values from
a pass over the whole image (:func:`pools_recorded`, :func:`pools_frozen`).

Importing this module imports neither torch nor torchvision.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..cache.catalog import Entry

INSTANCE_PREFIX = "maskrcnn_"


def is_instance(entry: Entry) -> bool:
    """Whether ``entry`` is an instance segmentation model (one mask per object) rather than a semantic one."""
    return entry.architecture.startswith(INSTANCE_PREFIX)


@functools.cache
def semantic_architectures() -> frozenset[str]:
    import torchvision.models as tvm
    import torchvision.models.segmentation as segmentation

    return frozenset(tvm.list_models(module=segmentation))


def factory(entry: Entry) -> Callable[[], nn.Module]:
    """A no-argument constructor for ``entry``'s network, with no weights loaded or downloaded."""
    if is_instance(entry):
        from . import detection

        return detection.factory(entry)
    if entry.architecture not in semantic_architectures():
        raise ConfigError(
            f"{entry.ref}: architecture {entry.architecture!r} is not a torchvision segmentation model; "
            "`ptm models --task segment` lists the ones ptm can build"
        )
    import torchvision.models as tvm

    kwargs: dict[str, Any] = dict(entry.builder_kwargs)
    if entry.num_classes:
        kwargs["num_classes"] = entry.num_classes
    architecture = entry.architecture

    def build() -> nn.Module:
        try:
            model: nn.Module = tvm.get_model(architecture, weights=None, weights_backbone=None, **kwargs)
        except (TypeError, ValueError, NotImplementedError) as e:
            raise ConfigError(
                f"{entry.ref}: {architecture} cannot be built with builder_kwargs {kwargs} ({e}); "
                "fix builder_kwargs in the catalog entry"
            ) from e
        return model

    return build


def drop_auxiliary(model: nn.Module) -> nn.Module:
    """``model`` without its auxiliary classifier (its ``out`` is unchanged; ``aux`` is for training)."""
    if getattr(model, "aux_classifier", None) is not None:
        model.aux_classifier = None  # type: ignore[assignment]
    return model


# --- whole-image pooling ---------------------------------------------------------------------------


def global_pools(model: nn.Module) -> list[nn.Module]:
    """Every layer that averages a whole feature map to one value per channel, in forward order."""
    from torch import nn

    found: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.AdaptiveAvgPool2d) and _is_one(module.output_size):
            found.append(module)
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            raise ConfigError(f"{type(model).__name__}: adaptive pooling to {module.output_size} cannot be tiled")
    return found


def _is_one(size: Any) -> bool:
    return size == 1 or (isinstance(size, tuple | list) and all(s == 1 for s in size))


@contextlib.contextmanager
def pools_recorded(pools: list[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """While the block runs, each pool's output of the last forward pass is kept, in ``pools``' order."""
    recorded: dict[int, torch.Tensor] = {}

    def hook_for(index: int) -> Callable[..., None]:
        def keep(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            recorded[index] = output.detach()

        return keep

    handles = [pool.register_forward_hook(hook_for(i)) for i, pool in enumerate(pools)]
    values: list[torch.Tensor] = []
    try:
        yield values
        values.extend(recorded[i] for i in range(len(pools)) if i in recorded)
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def pools_frozen(pools: list[nn.Module], values: list[torch.Tensor] | None) -> Iterator[None]:
    """While the block runs, every pool gives ``values`` (one row per image of a batch) instead of its own average.

    ``values=None`` leaves the pools alone (each tile averages itself: only
    for showing why whole-image values are needed).
    """
    if values is None:
        yield
        return
    if len(values) != len(pools):
        raise ConfigError(f"{len(values)} recorded pooling values for {len(pools)} pooling layers")

    def hook_for(value: torch.Tensor) -> Callable[..., torch.Tensor]:
        def replace(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            return value[:1].to(output.dtype).expand(output.shape[0], -1, -1, -1)

        return replace

    handles = [pool.register_forward_hook(hook_for(value)) for pool, value in zip(pools, values, strict=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
