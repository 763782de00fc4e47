"""Reading ``torch.save`` files without ever running code from them.

Files are unpickled only with ``weights_only=True`` (tensors, containers and
numbers, nothing else) and memory-mapped when they are zip archives, so a
170 MB checkpoint costs little more than its pickle. A file that would need
full pickle is refused as :class:`UnsafeWeights`, never retried unsafely;
TorchScript archives, which carry code, are refused before torch sees them.

:func:`read_object` gives whatever the file holds (a state dict, a bare
tensor as in the book's ``torch.save(points, ...)``, a list...);
:func:`as_state_dict` turns it into named tensors for a model.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import IncompatibleWeights, UnsafeWeights, WeightsError, first_line
from .filetypes import cannot_read, damaged

if TYPE_CHECKING:
    import torch

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


def _is_torchscript(names: list[str]) -> bool:
    # torch.jit.save writes ARCHIVE/constants.pkl and ARCHIVE/code/...; torch.save never does.
    for name in names:
        parts = name.split("/")
        if len(parts) >= 2 and parts[1] in ("constants.pkl", "code"):
            return True
    return False


def _sniff(path: Path) -> str:
    """``"zip"`` (torch.save's format), ``"pickle"`` (legacy) or ``"other"``; refuses what cannot be weights."""
    try:
        with path.open("rb") as stream:
            head = stream.read(4)
    except OSError as exc:
        raise cannot_read(path, exc) from None
    if not head:
        raise damaged(path, "it is empty")
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            raise damaged(path, "a truncated or corrupt zip archive") from None
        if _is_torchscript(names):
            raise WeightsError(
                f"{path} is a TorchScript archive, which ptm does not load as weights because it contains code; "
                "load it with torch.jit.load in a Python session you trust and save `model.state_dict()` "
                "with torch.save instead"
            )
        return "zip"
    return "pickle" if head[0] == 0x80 else "other"


def _unsafe(path: Path, exc: BaseException) -> UnsafeWeights:
    found = re.search(r"GLOBAL ([A-Za-z_][\w.]*)", str(exc))
    what = f" ({found.group(1)})" if found else ""
    return UnsafeWeights(
        f"{path} stores pickled Python objects{what}, not just tensors, and ptm will not execute code from a "
        "weights file; load it once in a Python session you trust and save `model.state_dict()` with torch.save"
    )


def read_object(path: Path) -> Any:
    """Whatever ``torch.save`` wrote to ``path``, loaded with ``weights_only=True`` on the CPU."""
    path = Path(path)
    kind = _sniff(path)
    import torch

    try:
        with warnings.catch_warnings():
            # weights_only checks a sparse tensor's invariants and says so; the check is what we want.
            warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
            # Quantized tensors are rebuilt through TypedStorage, which torch calls deprecated; ptm refuses them later.
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                # Legacy (pre-zip) files cannot be memory-mapped; still weights_only.
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text and "Unsupported operand" not in text:
            raise _unsafe(path, exc) from None
        # An opcode no pickle of tensors contains, or a broken stream: bytes, not a threat.
        detail = "not a PyTorch weights file" if "Unsupported operand" in text else first_line(exc, 120)
        raise damaged(path, detail) from None
    except (EOFError, RuntimeError) as exc:
        raise damaged(path, first_line(exc, 120)) from None
    except (KeyError, ValueError, IndexError, TypeError, AttributeError, ImportError) as exc:
        # Garbage read as a legacy pickle fails in arbitrary ways; a zip that torch wrote does not.
        if kind == "zip":
            raise
        raise damaged(path, f"not a PyTorch weights file: {first_line(exc, 120)}") from None
    except OSError as exc:
        raise cannot_read(path, exc) from None


def is_tensor_mapping(obj: Any) -> bool:
    import torch

    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = ", ".join(repr(k) for k in list(obj)[:5])
        return f"a mapping with keys {keys}" if obj else "an empty mapping"
    return f"a {type(obj).__name__}"


def strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop DataParallel's ``module.`` prefix when every key has it."""
    prefix = "module."
    if not state or not all(k.startswith(prefix) for k in state):
        return state if isinstance(state, dict) else dict(state)
    stripped: OrderedDict[str, Any] = OrderedDict((k[len(prefix) :], v) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if isinstance(metadata, dict):
        # Module versions travel in _metadata keyed by module path; keep them in step with the keys.
        renamed = {("" if k == "module" else k.removeprefix(prefix)): v for k, v in metadata.items()}
        stripped._metadata = renamed  # type: ignore[attr-defined]
    return stripped


def as_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The named tensors a model gets from a loaded object.

    Unwraps ``{"state_dict": ...}``/``{"model": ...}`` checkpoints and strips a
    ``module.`` prefix; anything else is :class:`IncompatibleWeights`.
    """
    state = obj
    if not is_tensor_mapping(obj) and isinstance(obj, Mapping):
        state = next((obj[k] for k in _WRAPPER_KEYS if is_tensor_mapping(obj.get(k))), obj)
    if not is_tensor_mapping(state):
        raise IncompatibleWeights(
            f"{path} holds {describe(obj)} rather than a state dict of named tensors; "
            "save `model.state_dict()` with torch.save and use that file"
        )
    return strip_module_prefix(state)


def load_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``torch.save`` file, safely (see the module docstring)."""
    path = Path(path)
    return as_state_dict(read_object(path), path)


def iter_tensors(obj: Any, prefix: str = "", *, depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside ``obj``, named by its path: ``a.b`` in mappings, ``[0]`` in lists and tuples.

    A bare tensor is named ``""``. Containers deeper than 64 levels are
    refused rather than followed (a hostile file could nest without end).
    """
    import torch

    if depth > 64:
        raise WeightsError("the file nests containers more than 64 levels deep; it is not a weights file")
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            yield from iter_tensors(value, name, depth=depth + 1)
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from iter_tensors(value, f"{prefix}[{index}]", depth=depth + 1)
