"""Device and precision choice: where a model runs and in which float type.

``auto`` means the best device present: CUDA, then Apple's MPS, then the CPU.
Asking for a device that is not there is a usage error, never a silent
fallback, so a script that says ``--device cuda`` learns at once that it is on
the wrong machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DeviceUnavailable, UsageError
from ..settings import PRECISIONS

if TYPE_CHECKING:
    import torch
    from torch import nn

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_spec(spec: str) -> str:
    """Validate a ``--device`` value without importing torch."""
    spec = spec.strip().lower()
    if not DEVICE_PATTERN.match(spec):
        raise UsageError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps")
    return spec


def choose_device(spec: str = "auto") -> torch.device:
    """The torch device for ``spec`` (auto, cpu, cuda, cuda:N, mps)."""
    import torch

    spec = check_device_spec(spec)
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not _mps_available():
            raise DeviceUnavailable("the MPS device (Apple GPU) is not available here; use --device cpu or auto")
        return torch.device("mps")
    # cuda or cuda:N
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise DeviceUnavailable(f"{spec} was asked for but {why}; use --device cpu or auto")
    index = int(spec.split(":")[1]) if ":" in spec else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailable(
            f"{spec} does not exist: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    return torch.device("cuda", index)


def place_classifier(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device`` in channels_last, which lets oneDNN/cuDNN pick their fastest convolution kernels."""
    import torch

    return model.to(device).to(memory_format=torch.channels_last)


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512_BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        flags = ""
    if flags:
        return " avx512_bf16" in flags or " amx_bf16" in flags
    # No /proc (macOS, Windows): ask oneDNN, which knows the CPU it runs on.
    import torch

    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


@dataclass(frozen=True)
class Precision:
    """The float type a model computes in, and how to get there."""

    name: str  # fp32, bf16 or fp16

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    @property
    def autocast(self) -> bool:
        return self.name != "fp32"


def choose_precision(name: str, device: torch.device) -> Precision:
    """Resolve ``--precision`` for a device; ``auto`` picks the fastest one that is well supported."""
    name = name.lower()
    if name not in PRECISIONS:
        raise UsageError(f"unknown precision {name!r}; use {', '.join(PRECISIONS)}")
    kind = device.type
    if name == "auto":
        if kind == "cuda":
            import torch

            return Precision("bf16" if torch.cuda.is_bf16_supported() else "fp16")
        if kind == "mps":
            return Precision("fp16")
        return Precision("bf16" if cpu_supports_bf16() else "fp32")
    if name == "fp16" and kind == "cpu":
        raise UsageError("fp16 on the CPU is slower than fp32 on most processors; use --precision bf16 or fp32")
    return Precision(name)
