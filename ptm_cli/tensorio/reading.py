"""One safe entry point for reading a state dict from any weights file ptm knows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import IncompatibleWeights
from . import h5, safetensors_io, torchfile
from .filetypes import detect_format

if TYPE_CHECKING:
    import torch


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Named tensors from a ``.pth``/``.pt``/``.bin``, ``.safetensors`` or ``.h5``/``.hdf5`` file.

    The format comes from the suffix (any case), else from the bytes. torch
    files load with ``weights_only=True`` and memory-mapped; safetensors and
    HDF5 cannot run code at all. Raises ``DamagedWeights``, ``UnsafeWeights``,
    ``IncompatibleWeights`` (not a state dict) or ``MissingDependency``.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "h5":
        return h5.load(path)
    if fmt == "safetensors":
        state = safetensors_io.load(path)
        if not state:
            raise IncompatibleWeights(f"{path} holds no tensors, so there are no weights to load")
        return torchfile.strip_module_prefix(state)
    return torchfile.load_torch_state_dict(path)
