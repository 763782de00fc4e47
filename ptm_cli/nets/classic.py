"""The classic ImageNet classifiers, built without importing torchvision.

Importing torchvision costs about as long as importing torch itself (most
of it is the compiler stack its detection operators pull in), which doubles
the start-up of a one-image ``ptm classify``. The networks people reach for
first (the ResNet family, AlexNet and VGG) are small enough to define here.
Every module name, parameter shape and operation order matches torchvision's
own classes, so a torchvision state dict loads with ``strict=True`` and the
outputs are bit-identical; ``tests/test_nets.py`` holds them to that.

Anything else in the catalog, and any builder argument this module does not
know, is built by torchvision (see :func:`ptm_cli.nets.architectures.factory`).
Importing this module imports torch.

The structure of these networks is torchvision's, Copyright (c) Soumith
Chintala 2016, under the BSD 3-Clause licence: see LICENSES/torchvision.txt
and NOTICE.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["BUILDERS", "VGG", "AlexNet", "BasicBlock", "Bottleneck", "ResNet", "builder_for"]


def _conv3x3(inputs: int, outputs: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inputs, outputs, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)


def _conv1x1(inputs: int, outputs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inputs, outputs, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18 and -34)."""

    expansion = 1

    def __init__(
        self, inputs: int, planes: int, stride: int, downsample: nn.Module | None, groups: int, base_width: int
    ):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("ResNet basic blocks take groups=1 and width_per_group=64 only")
        self.conv1 = _conv3x3(inputs, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += shortcut
        result: Tensor = self.relu(out)
        return result


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand, and a shortcut.

    The stride sits on the 3x3 convolution ("ResNet v1.5"), as in the
    torchvision weights.
    """

    expansion = 4

    def __init__(
        self, inputs: int, planes: int, stride: int, downsample: nn.Module | None, groups: int, base_width: int
    ):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = _conv1x1(inputs, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += shortcut
        result: Tensor = self.relu(out)
        return result


class ResNet(nn.Module):
    """ResNet, ResNeXt and Wide ResNet: a stem, four stages of blocks, pooling, one linear layer."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        groups: int = 1,
        width_per_group: int = 64,
    ):
        super().__init__()
        self.inplanes = 64
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._stage(block, 64, layers[0], stride=1)
        self.layer2 = self._stage(block, 128, layers[1], stride=2)
        self.layer3 = self._stage(block, 256, layers[2], stride=2)
        self.layer4 = self._stage(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self._initialise()

    def _stage(self, block: type[BasicBlock | Bottleneck], planes: int, count: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        blocks: list[nn.Module] = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes, 1, None, self.groups, self.base_width) for _ in range(1, count)]
        return nn.Sequential(*blocks)

    def _initialise(self) -> None:
        # Only for training from scratch: ptm builds on the meta device and loads weights over this.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        logits: Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return logits


class AlexNet(nn.Module):
    """The one-GPU AlexNet variant ("One weird trick") that torchvision's weights were trained on."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
        return logits


# Output channels of each 3x3 convolution, "M" for a 2x2 max-pool (configurations A, B, D and E of the paper).
_VGG_LAYOUTS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """Plain stacks of 3x3 convolutions (optionally batch-normalised) and three linear layers."""

    def __init__(self, layout: Sequence[int | str], batch_norm: bool, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            assert isinstance(item, int)
            layers.append(nn.Conv2d(channels, item, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(item))
            layers.append(nn.ReLU(inplace=True))
            channels = item
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))
        return logits


def _resnet(block: type[BasicBlock | Bottleneck], layers: list[int], **fixed: int) -> Callable[..., nn.Module]:
    def build(num_classes: int = 1000, **kwargs: int) -> nn.Module:
        # The named variants fix groups/width_per_group; the catalog repeats them, and they must agree.
        for key, value in fixed.items():
            if kwargs.setdefault(key, value) != value:
                raise TypeError(f"{key}={kwargs[key]} does not describe this variant ({key}={value})")
        return ResNet(block, layers, num_classes=num_classes, **kwargs)

    return build


def _vgg(layout: str, batch_norm: bool) -> Callable[..., nn.Module]:
    return lambda num_classes=1000, dropout=0.5: VGG(_VGG_LAYOUTS[layout], batch_norm, num_classes, dropout)


_RESNETS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": _resnet(BasicBlock, [2, 2, 2, 2]),
    "resnet34": _resnet(BasicBlock, [3, 4, 6, 3]),
    "resnet50": _resnet(Bottleneck, [3, 4, 6, 3]),
    "resnet101": _resnet(Bottleneck, [3, 4, 23, 3]),
    "resnet152": _resnet(Bottleneck, [3, 8, 36, 3]),
    "resnext50_32x4d": _resnet(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4),
    "resnext101_32x8d": _resnet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=8),
    "resnext101_64x4d": _resnet(Bottleneck, [3, 4, 23, 3], groups=64, width_per_group=4),
    "wide_resnet50_2": _resnet(Bottleneck, [3, 4, 6, 3], width_per_group=128),
    "wide_resnet101_2": _resnet(Bottleneck, [3, 4, 23, 3], width_per_group=128),
}
_PLAIN: dict[str, Callable[..., nn.Module]] = {
    "alexnet": AlexNet,
    **{f"{name}{suffix}": _vgg(name, suffix == "_bn") for name in _VGG_LAYOUTS for suffix in ("", "_bn")},
}
BUILDERS: dict[str, Callable[..., nn.Module]] = {**_RESNETS, **_PLAIN}

# The builder arguments each family takes; anything else is left to torchvision.
_ARGUMENTS = {
    **dict.fromkeys(_RESNETS, frozenset({"num_classes", "groups", "width_per_group"})),
    **dict.fromkeys(_PLAIN, frozenset({"num_classes", "dropout"})),
}


def builder_for(architecture: str, kwargs: dict[str, Any]) -> Callable[[], nn.Module] | None:
    """A no-argument constructor when this module can build the architecture with these arguments."""
    build = BUILDERS.get(architecture)
    if build is None or not set(kwargs) <= _ARGUMENTS[architecture]:
        return None
    return lambda: build(**kwargs)
