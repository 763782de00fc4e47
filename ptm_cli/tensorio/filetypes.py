"""Which format a weights file is in, and the dtype facts every reader and writer shares.

Formats are named ``pth`` (``torch.save``: ``.pth``, ``.pt``, ``.bin``),
``safetensors`` and ``h5`` (``.h5``, ``.hdf5``); suffixes compare without
regard to case. A file with another name is sniffed for the HDF5 signature,
else read as a torch file.

Importing this module imports neither torch, numpy, h5py nor safetensors.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DamagedWeights, MissingDependency, UsageError, WeightsError

if TYPE_CHECKING:
    import torch

FORMATS = ("pth", "safetensors", "h5")
SUFFIXES: dict[str, str] = {
    ".pth": "pth",
    ".pt": "pth",
    ".bin": "pth",
    ".safetensors": "safetensors",
    ".h5": "h5",
    ".hdf5": "h5",
}
"""Weights-file suffixes (lower case) and the format each names; the one list ptm uses."""
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# What convert writes, and what each format can hold bit for bit.
SUPPORTED_DTYPES = (
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "float8_e4m3fn",
    "float8_e5m2",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
)
CAST_DTYPES = {
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
}
ITEMSIZE = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint64": 8,
    "uint32": 4,
    "uint16": 2,
    "uint8": 1,
    "bool": 1,
    "complex64": 8,
    "complex128": 16,
    "float8_e4m3fn": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
}


def has_weights_suffix(path: Path | str) -> bool:
    return Path(path).suffix.lower() in SUFFIXES


def detect_format(path: Path) -> str:
    """``"pth"``, ``"safetensors"`` or ``"h5"``, from the suffix; other names are sniffed for HDF5, else torch."""
    path = Path(path)
    known = SUFFIXES.get(path.suffix.lower())
    if known:
        return known
    with contextlib.suppress(OSError), path.open("rb") as stream:
        if stream.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            return "h5"
    return "pth"


def output_format(path: Path) -> str:
    known = SUFFIXES.get(Path(path).suffix.lower())
    if known is None:
        raise UsageError(f"cannot tell which format to write {path} in; name it .pth/.pt, .safetensors or .h5/.hdf5")
    return known


def cast_target(dtype: str | None) -> str | None:
    if dtype is None:
        return None
    target = CAST_DTYPES.get(dtype.lower())
    if target is None:
        raise UsageError(f"cannot cast to {dtype!r}; use bf16, fp16 or fp32")
    return target


def is_floating(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> torch.dtype:
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise WeightsError(f"unknown dtype {name!r}")
    return dtype


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides, as torch gives a contiguous tensor (a size-1 or empty dim gets the running product)."""
    strides = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def product(shape: tuple[int, ...]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def damaged(path: Path, detail: str) -> DamagedWeights:
    """The error for a file whose bytes are not a readable weights file.

    The advice fits a file of the user's own; the cache replaces it with its
    own advice for files it manages.
    """
    return DamagedWeights(
        f"{path} is damaged ({detail}); copy or save the file again from its source", path=path, detail=detail
    )


def cannot_read(path: Path, exc: OSError) -> WeightsError:
    if isinstance(exc, FileNotFoundError):
        return WeightsError(f"weights file {path} does not exist; check the path")
    if isinstance(exc, IsADirectoryError):
        return WeightsError(f"{path} is a folder; give the path of a weights file")
    return WeightsError(f"cannot read {path} ({exc.strerror or exc}); check its permissions")


def import_h5py(what: str) -> Any:
    try:
        import h5py
    except ImportError:
        raise MissingDependency(f"{what} needs the h5py package; install it with `pip install 'ptm[h5]'`") from None
    return h5py


def import_safetensors(what: str) -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise MissingDependency(
            f"{what} needs the safetensors package; install it with `pip install 'ptm[safetensors]'`"
        ) from None
    return safetensors.torch
