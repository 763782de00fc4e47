"""A classifier's features: the network with its classification head taken off.

The head is the last layer that turns features into class scores: the last
``Linear`` of the network (ResNet's ``fc``, VGG's and AlexNet's last
classifier layer, ViT's ``heads.head``, ConvNeXt's, Swin's, MaxViT's...), or
the last 1x1 ``Conv2d`` whose outputs are the classes (SqueezeNet, which
pools after it). Whatever runs after the head in the network's own forward
(SqueezeNet's ReLU and pooling, a flatten) still runs, so the vector is
what the head would have been given, pooled: 2048 numbers for ResNet-50,
4096 for VGG (its second fully connected layer, after ReLU), 512 for
SqueezeNet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from torch import nn


def remove_head(model: nn.Module, *, classes: int | None = None) -> int:
    """Replace ``model``'s classification head with an identity, in place; the vector's length.

    ``classes`` (when known) is the number of outputs the head must have;
    a network whose last layer is something else is refused rather than
    cut in the wrong place.
    """
    from torch import nn

    last_name, last = None, None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (
            isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
        ):
            last_name, last = name, module
    if last is None or last_name is None:
        raise ConfigError(f"{type(model).__name__} has no Linear or 1x1 convolution to take its features before")
    outputs = last.out_features if isinstance(last, nn.Linear) else last.out_channels
    if classes is not None and outputs != classes:
        raise ConfigError(
            f"the last layer of {type(model).__name__} ({last_name}) gives {outputs} numbers, not its {classes} "
            "classes; ptm cannot tell where its head is"
        )
    parent = model.get_submodule(last_name.rpartition(".")[0]) if "." in last_name else model
    setattr(parent, last_name.rpartition(".")[2], nn.Identity())
    dimension: int = last.in_features if isinstance(last, nn.Linear) else last.in_channels
    return dimension
