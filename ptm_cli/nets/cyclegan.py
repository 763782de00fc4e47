"""The CycleGAN ResNet generator (the book's horse2zebra network and its siblings).

:func:`build_generator` lays out the ResNet-9-block generator so that its 48
state_dict keys are those of the book's ``horse2zebra_0.4.0.pth`` and of the
official CycleGAN ``resnet_9blocks`` checkpoints. :func:`clean_state_dict`
drops the InstanceNorm running-stat buffers that checkpoints saved with
torch < 0.4 still carry (they are never used).

Its InstanceNorm layers can record the statistics they normalise by, or
normalise by given ones instead; that is what lets the translation engine
run large images in tiles that agree with each other.

Importing this module does not import torch; the network classes are
defined the first time a generator is built.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..cache.catalog import Entry

ARCHITECTURE = "cyclegan_resnet9"
GENERATOR_KWARGS = ("ngf", "n_blocks")
_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@functools.cache
def _network_classes() -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    """Define the generator's module classes (once, and only when torch is wanted)."""
    import torch
    from torch import nn

    class FreezableInstanceNorm2d(nn.InstanceNorm2d):
        """InstanceNorm2d (affine=False, no running stats) that can record or reuse statistics.

        ``record``: also keep the per-channel mean and variance it normalised by.
        ``frozen``: normalise by these (mean, var) instead of the input's own,
        which is what makes tiles agree with each other.
        """

        def __init__(self, channels: int):
            super().__init__(channels, affine=False, track_running_stats=False)
            self.record = False
            self.recorded: tuple[torch.Tensor, torch.Tensor] | None = None
            self.frozen: tuple[torch.Tensor, torch.Tensor] | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.frozen is not None:
                return self._normalise(x, *self.frozen)
            if self.record:
                var, mean = torch.var_mean(x.float(), dim=(2, 3), keepdim=True, correction=0)
                self.recorded = (mean, var)
                return self._normalise(x, mean, var)
            return super().forward(x)

        def _normalise(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
            """``(x - mean) / sqrt(var + eps)``, computed in float32, in x's dtype.

            A float32 x is normalised in place when no gradient is wanted: every
            norm in the generator follows a convolution whose output nothing else
            holds, and a full-resolution activation is 256 bytes per pixel. A
            bf16 x goes through one fused kernel that reads bf16 and writes bf16
            (float32 inside), not a float32 copy converted back.
            """
            if x.dtype != torch.float32 and mean.shape[0] == 1:
                flat_mean, flat_var = mean.reshape(-1), var.reshape(-1)
                return torch.nn.functional.batch_norm(x, flat_mean, flat_var, training=False, eps=self.eps)
            y = x.clone() if x.dtype == torch.float32 and torch.is_grad_enabled() else x.float()
            return y.sub_(mean).mul_(torch.rsqrt(var + self.eps)).to(x.dtype)

    class ReflectionPad2d(nn.ReflectionPad2d):
        """Reflection padding in its input's dtype.

        Autocast pads in float32: a bf16 activation would be copied to twice
        its size, only for the next convolution to convert it back.
        """

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(x.device.type, enabled=False):
                return super().forward(x)

    class ResnetBlock(nn.Module):
        """Two 3x3 convolutions with reflection padding and a skip connection."""

        def __init__(self, channels: int):
            super().__init__()
            self.conv_block = nn.Sequential(
                ReflectionPad2d(1),
                nn.Conv2d(channels, channels, kernel_size=3, bias=True),
                FreezableInstanceNorm2d(channels),
                nn.ReLU(True),
                ReflectionPad2d(1),
                nn.Conv2d(channels, channels, kernel_size=3, bias=True),
                FreezableInstanceNorm2d(channels),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = x + self.conv_block(x)
            return out

    class ResnetGenerator(nn.Module):
        """CycleGAN's resnet_9blocks generator; every layer sits in ``self.model``."""

        def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9):
            super().__init__()
            layers: list[nn.Module] = [
                ReflectionPad2d(3),
                nn.Conv2d(input_nc, ngf, kernel_size=7, bias=True),
                FreezableInstanceNorm2d(ngf),
                nn.ReLU(True),
            ]
            for factor in (1, 2):  # downsampling: ngf -> 2 ngf -> 4 ngf
                channels = ngf * factor
                layers += [
                    nn.Conv2d(channels, channels * 2, kernel_size=3, stride=2, padding=1, bias=True),
                    FreezableInstanceNorm2d(channels * 2),
                    nn.ReLU(True),
                ]
            layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
            for factor in (4, 2):  # upsampling: 4 ngf -> 2 ngf -> ngf
                channels = ngf * factor
                layers += [
                    nn.ConvTranspose2d(
                        channels, channels // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=True
                    ),
                    FreezableInstanceNorm2d(channels // 2),
                    nn.ReLU(True),
                ]
            layers += [ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, bias=True), nn.Tanh()]
            self.model = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.model(x)
            return out

    return FreezableInstanceNorm2d, ResnetBlock, ResnetGenerator


def build_generator(*, ngf: int = 64, n_blocks: int = 9, input_nc: int = 3, output_nc: int = 3) -> nn.Module:
    """A CycleGAN ResNet generator with freshly initialised weights (the catalog uses the defaults)."""
    generator_class = _network_classes()[2]
    return generator_class(input_nc=input_nc, output_nc=output_nc, ngf=ngf, n_blocks=n_blocks)


def norm_layers(model: nn.Module) -> list[Any]:
    norm_class = _network_classes()[0]
    return [m for m in model.modules() if isinstance(m, norm_class)]


@functools.cache
def _norm_paths(ngf: int, n_blocks: int) -> frozenset[str]:
    """Module paths of the generator's InstanceNorm layers (``model.2``, ``model.10.conv_block.2``...)."""
    import torch

    norm_class = _network_classes()[0]
    with torch.device("meta"):  # no memory, no initialisation: only the names are wanted
        model = build_generator(ngf=ngf, n_blocks=n_blocks)
    return frozenset(name for name, module in model.named_modules() if isinstance(module, norm_class))


def _drop_norm_buffers(state_dict: Mapping[str, Any], norm_paths: frozenset[str]) -> dict[str, Any]:
    """Remove the InstanceNorm running stats torch < 0.4 saved; they are never used.

    Only buffers at InstanceNorm positions go: a checkpoint of another
    architecture (batch norm, say) still fails the strict load on its other keys.
    """

    def is_norm_buffer(key: str) -> bool:
        path, _, leaf = key.rpartition(".")
        return leaf in _NORM_BUFFERS and path in norm_paths

    return {k: v for k, v in state_dict.items() if not is_norm_buffer(k)}


def clean_state_dict(state_dict: Mapping[str, torch.Tensor], *, ngf: int = 64, n_blocks: int = 9) -> dict[str, Any]:
    """``state_dict`` without the unused InstanceNorm buffers of old checkpoints."""
    return _drop_norm_buffers(state_dict, _norm_paths(ngf, n_blocks))


def generator_kwargs(entry: Entry) -> dict[str, int]:
    unknown = sorted(set(entry.builder_kwargs) - set(GENERATOR_KWARGS))
    if unknown:
        raise ConfigError(
            f"{entry.ref}: builder_kwargs {', '.join(unknown)} are not understood by {ARCHITECTURE}; "
            f"it takes {', '.join(GENERATOR_KWARGS)}"
        )
    kwargs: dict[str, int] = {}
    for key in GENERATOR_KWARGS:
        if key not in entry.builder_kwargs:
            continue
        value = entry.builder_kwargs[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{entry.ref}: builder_kwargs.{key} must be a positive whole number")
        kwargs[key] = value
    return kwargs
