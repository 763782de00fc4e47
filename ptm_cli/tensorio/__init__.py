"""Weights files: safe readers for ``.pth``/``.safetensors``/``.h5``, inspecting and converting.

The bottom layer of ptm's weights handling: it reads and writes files and
knows nothing of the cache, the catalog or any model. Submodules:

* :mod:`.formats` - which format a file is in, dtype facts;
* :mod:`.torchfile`, :mod:`.safetensors_io`, :mod:`.h5` - one per format;
* :mod:`.loading` - :func:`load_state_dict`, the one safe entry point;
* :mod:`.inspection` - :func:`inspect_file`, tensor by tensor, without the data;
* :mod:`.convert` - :func:`convert_file`, bit for bit.

Importing this package imports neither torch, numpy, h5py nor safetensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .filetypes import FORMATS, SUFFIXES, detect_format, has_weights_suffix

if TYPE_CHECKING:
    from .reading import load_state_dict

# The readers load on first use: naming a weights file (``-w x.pth``) needs only the suffix table.
_LAZY = {"load_state_dict": "reading"}

__all__ = ["FORMATS", "SUFFIXES", "detect_format", "has_weights_suffix", "load_state_dict"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
