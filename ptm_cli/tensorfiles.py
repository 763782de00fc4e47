"""Inspecting and converting weights files: ``.pth``/``.pt``/``.bin``, ``.safetensors``, ``.h5``/``.hdf5``.

Everything here returns dataclasses; the CLI decides how they look.

Inspecting (:func:`inspect_file`)
    One :class:`TensorInfo` per tensor: shape, dtype, strides, storage offset,
    contiguity and which tensors share a storage, plus totals. The data itself
    is never read:

    * torch files are loaded with ``weights.load_state_dict`` (``weights_only``,
      memory-mapped), so tensors are views on the mapped file and their
      storages are exactly the ones ``torch.save`` wrote: tensors whose
      ``untyped_storage().data_ptr()`` is equal share a storage. Names are the
      ones ``load_state_dict`` gives (a ``{"state_dict": ...}`` wrapper is
      unwrapped, a DataParallel ``module.`` prefix is stripped).
    * safetensors files are inspected from their JSON header alone (8-byte
      little-endian length, then JSON), without the safetensors package. Every
      tensor is its own contiguous storage (the format forbids sharing); its
      ``storage_offset`` is its place in the data section in elements
      (``data_offsets[0] / itemsize``).
    * HDF5 files need h5py; every dataset is a contiguous tensor of its own.

Converting (:func:`convert_file`)
    Any readable format to ``.pth`` (a plain dict saved with ``torch.save``),
    ``.safetensors`` or ``.h5``, bit for bit, optionally casting floating
    tensors only (``dtype="bf16"|"fp16"|"fp32"``). Every tensor written is
    compact: contiguous, at offset 0 and no larger than its storage, so a
    transposed tensor is made contiguous and a slice of a larger storage is
    copied out (``torch.save`` would otherwise write the whole storage). True
    aliases (the same view under two names: tied weights) stay one storage in
    ``.pth``; safetensors cannot share, so each alias is written as a copy of
    its own, and in HDF5 each name is its own dataset. safetensors keeps no key
    order (it lays tensors out by dtype and name), so ptm records the state
    dict's order in the header metadata (``ptm_key_order``), and
    :func:`load_any` and :func:`inspect_file` follow it. The file is written to a
    temporary file beside the destination and renamed into place, so a failed
    conversion leaves no partial file, and an existing file is kept unless
    ``force``.

HDF5 layout (``ptm-h5/1``)
    State-dict keys are not a tree: ``a`` and ``a.b`` can both be keys, and a
    name cannot be both a dataset and a group in HDF5. So every tensor is a
    dataset directly under the root, named after its key with ``%`` written as
    ``%25``, ``/`` as ``%2F`` and NUL as ``%00`` (an empty key is ``%``, a key
    of only dots has them written as ``%2E``), in creation order. Each dataset
    carries two attributes, ``ptm_key`` (the exact key, which is what reading
    uses) and ``ptm_dtype`` (the torch dtype). numpy has no bfloat16 (nor
    float8), so those tensors are stored as raw unsigned integers of the same
    width (``uint16``/``uint8``) and ``ptm_dtype`` says how to view them back.
    Files written by other tools are read too: datasets anywhere in the tree,
    keyed by their path with ``/`` turned into ``.``.

Importing this module imports neither torch, numpy, h5py nor safetensors.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import struct
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, IncompatibleWeights, MissingDependency, OutputError, UsageError, WeightsError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .catalog import Catalog, Entry

FORMATS = ("pth", "safetensors", "h5")
_SUFFIXES = {".pth": "pth", ".pt": "pth", ".bin": "pth", ".safetensors": "safetensors", ".h5": "h5", ".hdf5": "h5"}
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# What convert_file writes, and what each format can hold bit for bit.
SUPPORTED_DTYPES = (
    "float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
    "int64", "int32", "int16", "int8", "uint8", "bool",
)  # fmt: skip
CAST_DTYPES = {
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16", "half": "float16",
    "fp32": "float32", "float32": "float32", "float": "float32",
}  # fmt: skip
_ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
    "uint64": 8, "uint32": 4, "uint16": 2, "uint8": 1, "bool": 1, "complex64": 8, "complex128": 16,
    "float8_e4m3fn": 1, "float8_e4m3fnuz": 1, "float8_e5m2": 1, "float8_e5m2fnuz": 1, "float8_e8m0fnu": 1,
}  # fmt: skip
# safetensors' dtype codes (its spec) in torch's spelling.
_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool", "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn", "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2": "float8_e5m2",
    "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E8M0": "float8_e8m0fnu",
}  # fmt: skip
# safetensors refuses headers over 100 MB; a larger length means the file is not safetensors.
_MAX_SAFETENSORS_HEADER = 100_000_000

SAFETENSORS_ORDER_KEY = "ptm_key_order"  # metadata: a JSON list of the keys in state-dict order

H5_FORMAT = "ptm-h5/1"
H5_KEY_ATTR = "ptm_key"
H5_DTYPE_ATTR = "ptm_dtype"
# dtypes numpy lacks, stored as unsigned integers of the same width.
_H5_RAW = {"bfloat16": "uint16", "float8_e4m3fn": "uint8", "float8_e5m2": "uint8"}

# Floating buffers torchvision models keep in their state dicts (model.parameters() does not count them).
_FLOAT_BUFFERS = ("running_mean", "running_var", "relative_coords_table")
FILE_MODE = 0o644


# --- results ------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """What one tensor of a weights file is, as a view on a storage."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch's name without "torch.": float32, bfloat16, int16, bool...
    numel: int
    nbytes: int  # numel * itemsize: the bytes this tensor's elements take
    stride: tuple[int, ...]  # in elements, as torch reports it
    storage_offset: int  # in elements
    is_contiguous: bool
    storage: str  # "s0", "s1"...: tensors with the same label share one storage
    storage_nbytes: int  # the size of that whole storage
    shares_with: list[str] = field(default_factory=list)  # the other tensors on the same storage
    alias_of: str | None = None  # an earlier tensor that is exactly the same view (tied weights)

    @property
    def is_floating(self) -> bool:
        return _is_floating(self.dtype)


@dataclass(frozen=True)
class Inspection:
    """Every tensor of one file, in file order, with totals."""

    path: Path
    format: str  # "pth", "safetensors" or "h5"
    file_size: int
    tensors: list[TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors' __metadata__
    warnings: list[str] = field(default_factory=list)

    @property
    def num_params(self) -> int:
        """Elements of floating tensors, a tied (aliased) tensor counted once, buffers included."""
        return sum(t.numel for t in self.tensors if t.is_floating and t.alias_of is None)

    @property
    def total_numel(self) -> int:
        """Elements of every tensor, each name counted."""
        return sum(t.numel for t in self.tensors)

    @property
    def tensor_nbytes(self) -> int:
        """Bytes of every tensor's elements, each name counted (aliases and overlaps too)."""
        return sum(t.nbytes for t in self.tensors)

    @property
    def bytes_by_dtype(self) -> dict[str, int]:
        """Tensor bytes per dtype, each name counted, largest first."""
        totals: dict[str, int] = {}
        for t in self.tensors:
            totals[t.dtype] = totals.get(t.dtype, 0) + t.nbytes
        return dict(sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def num_storages(self) -> int:
        return len({t.storage for t in self.tensors})

    @property
    def storage_nbytes(self) -> int:
        """Bytes of all storages, a shared storage counted once: what the data really takes."""
        return sum({t.storage: t.storage_nbytes for t in self.tensors}.values())


@dataclass(frozen=True)
class ConvertReport:
    """What :func:`convert_file` did."""

    src: Path
    dst: Path
    src_format: str
    dst_format: str
    tensors: int
    bytes_written: int
    dtype: str | None = None  # the dtype floating tensors were cast to, if asked
    cast: list[str] = field(default_factory=list)  # tensors whose dtype changed
    made_contiguous: list[str] = field(default_factory=list)  # non-contiguous tensors written contiguous
    compacted: list[str] = field(default_factory=list)  # views copied out of a larger (often shared) storage
    aliases_kept: list[tuple[str, str]] = field(default_factory=list)  # (name, alias_of) still one storage
    duplicated: list[tuple[str, str]] = field(default_factory=list)  # (name, alias_of) written as separate copies


# --- formats and dtypes ---------------------------------------------------------------


def detect_format(path: Path) -> str:
    """``"pth"``, ``"safetensors"`` or ``"h5"``, from the suffix; other names are sniffed for HDF5, else torch."""
    path = Path(path)
    known = _SUFFIXES.get(path.suffix.lower())
    if known:
        return known
    with contextlib.suppress(OSError), path.open("rb") as stream:
        if stream.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
            return "h5"
    return "pth"


def _output_format(path: Path) -> str:
    known = _SUFFIXES.get(path.suffix.lower())
    if known is None:
        raise UsageError(f"cannot tell which format to write {path} in; name it .pth/.pt, .safetensors or .h5/.hdf5")
    return known


def _cast_target(dtype: str | None) -> str | None:
    if dtype is None:
        return None
    target = CAST_DTYPES.get(dtype.lower())
    if target is None:
        raise UsageError(f"cannot cast to {dtype!r}; use bf16, fp16 or fp32")
    return target


def _is_floating(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise WeightsError(f"unknown dtype {name!r}")
    return dtype


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides, as torch gives a contiguous tensor (a size-1 or empty dim gets the running product)."""
    strides = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _product(shape: tuple[int, ...]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


# --- optional packages ----------------------------------------------------------------


def _import_h5py(what: str) -> Any:
    try:
        import h5py
    except ImportError:
        raise MissingDependency(f"{what} needs the h5py package; install it with `pip install 'ptm[h5]'`") from None
    return h5py


def _import_safetensors(what: str) -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise MissingDependency(
            f"{what} needs the safetensors package; install it with `pip install 'ptm[safetensors]'`"
        ) from None
    return safetensors.torch


# --- storage sharing -------------------------------------------------------------------


def _sharing(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, str], dict[str, str | None]]:
    """Each tensor's storage label (``s0``...) and the earlier tensor it is an exact alias of.

    Must see the tensors as loaded: any clone or ``.contiguous()`` before this
    would hide the sharing. Two tensors share a storage when their storages
    start at the same address; an empty storage has no meaningful address, so
    each empty one is a storage of its own.
    """
    labels: dict[str, str] = {}
    aliases: dict[str, str | None] = {}
    by_address: dict[int, str] = {}
    by_view: dict[tuple[Any, ...], str] = {}
    count = 0
    for name, tensor in state.items():
        storage = tensor.untyped_storage()
        address = storage.data_ptr() if storage.nbytes() > 0 else None
        if address is None or address not in by_address:
            label = f"s{count}"
            count += 1
            if address is None:
                labels[name], aliases[name] = label, None
                continue
            by_address[address] = label
        labels[name] = by_address[address]
        view = (address, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        aliases[name] = by_view.get(view)
        by_view.setdefault(view, name)
    return labels, aliases


def _with_shares(infos: list[TensorInfo]) -> list[TensorInfo]:
    """Fill in ``shares_with`` from the storage labels."""
    members: dict[str, list[str]] = {}
    for info in infos:
        members.setdefault(info.storage, []).append(info.name)
    return [replace(info, shares_with=[n for n in members[info.storage] if n != info.name]) for info in infos]


# --- inspecting ---------------------------------------------------------------------------


def inspect_file(path: Path) -> Inspection:
    """Describe every tensor of a weights file (torch, safetensors or HDF5) without reading its data."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give the path of a weights file")
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; check the path")
    fmt = detect_format(path)
    if fmt == "safetensors":
        return _inspect_safetensors(path)
    if fmt == "h5":
        return _inspect_h5(path)
    return _inspect_torch(path)


def _inspect_torch(path: Path) -> Inspection:
    from .weights import load_state_dict

    # Memory-mapped: the tensors are views on the file, nothing is copied or read but the pickle.
    state = load_state_dict(path)
    labels, aliases = _sharing(state)
    infos = [
        TensorInfo(
            name=name,
            shape=tuple(t.shape),
            dtype=_dtype_name(t.dtype),
            numel=t.numel(),
            nbytes=t.numel() * t.element_size(),
            stride=tuple(t.stride()),
            storage_offset=int(t.storage_offset()),
            is_contiguous=t.is_contiguous(),
            storage=labels[name],
            storage_nbytes=t.untyped_storage().nbytes(),
            alias_of=aliases[name],
        )
        for name, t in state.items()
    ]
    return Inspection(path=path, format="pth", file_size=path.stat().st_size, tensors=_with_shares(infos))


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and where its data section starts; reads nothing else."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            prefix = stream.read(8)
            if len(prefix) < 8:
                raise _damaged(path, "shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_SAFETENSORS_HEADER or length > size - 8:
                raise _damaged(path, f"its header length {length} does not fit the file")
            raw = stream.read(length)
    except OSError as exc:
        raise WeightsError(f"cannot read {path} ({exc.strerror}); check its permissions") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _damaged(path, "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    return header, 8 + length


def _damaged(path: Path, detail: str) -> WeightsError:
    return WeightsError(f"{path} is damaged or not a weights file ({detail})")


def _safetensors_entry(path: Path, name: str, raw: Any) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, validated."""
    if not isinstance(raw, dict):
        raise _damaged(path, f"header entry {name!r} is not an object")
    code, shape, offsets = raw.get("dtype"), raw.get("shape"), raw.get("data_offsets")
    if not isinstance(code, str):
        raise _damaged(path, f"{name!r} has no dtype")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise _damaged(path, f"{name!r} has an invalid shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _damaged(path, f"{name!r} has invalid data_offsets")
    return _SAFETENSORS_DTYPES.get(code, code.lower()), tuple(shape), offsets[0], offsets[1]


def _safetensors_order(names: list[str], metadata: Mapping[str, Any]) -> list[str]:
    """``names`` in the order ptm wrote them (the state dict's), when the file says so.

    safetensors lays tensors out by dtype and name and keeps no order of its
    own, so ptm records the original one in the metadata.
    """
    try:
        recorded = json.loads(metadata[SAFETENSORS_ORDER_KEY])
    except (KeyError, TypeError, ValueError):
        return names
    if not isinstance(recorded, list) or sorted(recorded) != sorted(names):
        return names
    return recorded


def _safetensors_metadata(header: dict[str, Any]) -> dict[str, Any]:
    metadata = header.pop("__metadata__", None)
    return metadata if isinstance(metadata, dict) else {}


def _inspect_safetensors(path: Path) -> Inspection:
    header, data_start = read_safetensors_header(path)
    metadata = _safetensors_metadata(header)
    file_size = path.stat().st_size
    infos = []
    data_end = 0
    for index, name in enumerate(_safetensors_order(list(header), metadata)):
        dtype, shape, begin, end = _safetensors_entry(path, name, header[name])
        numel = _product(shape)
        itemsize = _ITEMSIZE.get(dtype) or ((end - begin) // numel if numel else 1)
        if end - begin != numel * itemsize:
            raise _damaged(path, f"{name!r} takes {end - begin} bytes but its shape and dtype need {numel * itemsize}")
        data_end = max(data_end, end)
        infos.append(
            TensorInfo(
                name=name,
                shape=shape,
                dtype=dtype,
                numel=numel,
                nbytes=end - begin,
                stride=_contiguous_strides(shape),
                storage_offset=begin // itemsize,
                is_contiguous=True,
                storage=f"s{index}",
                storage_nbytes=end - begin,
            )
        )
    warnings = []
    if data_start + data_end > file_size:
        warnings.append(
            f"the data section is truncated: the header describes {data_end} bytes of tensor data "
            f"but the file holds {max(file_size - data_start, 0)}; the tensors cannot be loaded"
        )
    return Inspection(
        path=path,
        format="safetensors",
        file_size=file_size,
        tensors=infos,
        metadata={str(k): str(v) for k, v in metadata.items() if k != SAFETENSORS_ORDER_KEY},
        warnings=warnings,
    )


@contextlib.contextmanager
def _open_h5(path: Path, h5py: Any) -> Iterator[Any]:
    try:
        handle = h5py.File(path, "r")
    except FileNotFoundError:
        raise WeightsError(f"weights file {path} does not exist; check the path") from None
    except OSError as exc:
        raise _damaged(path, f"not a readable HDF5 file: {exc}") from None
    with handle:
        yield handle


def _h5_datasets(group: Any, h5py: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, dataset) for every dataset under ``group``, in the group's own order."""
    for name, item in group.items():
        path = f"{prefix}{name}"
        if isinstance(item, h5py.Dataset):
            yield path, item
        elif isinstance(item, h5py.Group):
            yield from _h5_datasets(item, h5py, f"{path}/")


def _attr_text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return None if value is None else str(value)


def _h5_key(path: str, dataset: Any) -> str:
    key = _attr_text(dataset.attrs.get(H5_KEY_ATTR))
    return path.replace("/", ".") if key is None else key


def _h5_dtype(dataset: Any) -> str | None:
    """The torch dtype a dataset holds, or None when it holds no numbers (strings, compounds...)."""
    tagged = _attr_text(dataset.attrs.get(H5_DTYPE_ATTR))
    if tagged:
        return tagged
    kind = dataset.dtype
    if kind.kind == "b":
        return "bool"
    if kind.kind in "iufc":
        return str(kind.name)
    return None


def _inspect_h5(path: Path) -> Inspection:
    h5py = _import_h5py(f"reading {path}")
    infos: list[TensorInfo] = []
    warnings: list[str] = []
    with _open_h5(path, h5py) as handle:
        for name, dataset in _h5_datasets(handle, h5py):
            dtype = _h5_dtype(dataset)
            if dtype is None or dataset.shape is None:
                warnings.append(f"dataset {name!r} holds no numbers ({dataset.dtype}) and is left out")
                continue
            shape = tuple(int(s) for s in dataset.shape)
            numel = _product(shape)
            nbytes = numel * _ITEMSIZE.get(dtype, dataset.dtype.itemsize)
            infos.append(
                TensorInfo(
                    name=_h5_key(name, dataset),
                    shape=shape,
                    dtype=dtype,
                    numel=numel,
                    nbytes=nbytes,
                    stride=_contiguous_strides(shape),
                    storage_offset=0,
                    is_contiguous=True,
                    storage=f"s{len(infos)}",
                    storage_nbytes=nbytes,
                )
            )
    return Inspection(path=path, format="h5", file_size=path.stat().st_size, tensors=infos, warnings=warnings)


# --- rendering helpers -------------------------------------------------------------------------


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) if shape else "scalar"


def to_rows(inspection: Inspection) -> list[dict[str, Any]]:
    """One flat record per tensor (strings for shape, stride and shares_with), for tables, CSV and JSON."""
    return [
        {
            "name": t.name,
            "shape": _shape_text(t.shape),
            "dtype": t.dtype,
            "numel": t.numel,
            "bytes": t.nbytes,
            "stride": "(" + ", ".join(str(s) for s in t.stride) + ("," if len(t.stride) == 1 else "") + ")",
            "offset": t.storage_offset,
            "contiguous": t.is_contiguous,
            "storage": t.storage,
            "shares_with": ", ".join(t.shares_with),
        }
        for t in inspection.tensors
    ]


def summary(inspection: Inspection) -> dict[str, Any]:
    """The file's totals as one record."""
    return {
        "path": str(inspection.path),
        "format": inspection.format,
        "file_bytes": inspection.file_size,
        "tensors": len(inspection.tensors),
        # Floating-point values, tied tensors once: parameters plus float buffers
        # such as BatchNorm running statistics (a file cannot tell them apart).
        "float_values": inspection.num_params,
        "numel": inspection.total_numel,
        "tensor_bytes": inspection.tensor_nbytes,
        "storages": inspection.num_storages,
        "storage_bytes": inspection.storage_nbytes,
        "bytes_by_dtype": inspection.bytes_by_dtype,
        "metadata": dict(inspection.metadata),
        "warnings": list(inspection.warnings),
    }


# --- matching an architecture ---------------------------------------------------------------


def match_architecture(inspection: Inspection, catalog: Catalog, *, exhaustive: bool = False) -> str | None:
    """The catalog architecture whose state dict has exactly the file's keys and shapes, or None.

    Candidates are built on the meta device (no memory, no initialisation).
    Only entries whose catalog ``num_params`` equals an estimate of the file's
    parameter count are tried; ``exhaustive`` then also tries every other entry
    small enough to fit (slower: seconds), nearest parameter count first.
    """
    wanted = {t.name: t.shape for t in inspection.tensors}
    if not wanted:
        return None
    estimates = _param_count_estimates(inspection)
    candidates = _distinct_builds(catalog)
    likely = [e for e in candidates if e.num_params in estimates]
    others: list[Entry] = []
    if exhaustive:
        tried = {id(e) for e in likely}
        ceiling = inspection.num_params  # every parameter is a floating tensor of the file
        target = max(estimates)
        others = sorted(
            (e for e in candidates if id(e) not in tried and (e.num_params or 0) <= ceiling),
            key=lambda e: abs((e.num_params or 0) - target),
        )
    for entry in likely + others:
        if _architecture_shapes(entry) == wanted:
            return entry.architecture
    return None


def _param_count_estimates(inspection: Inspection) -> set[int]:
    """What ``sum(p.numel() for p in model.parameters())`` may be for the model that saved this file.

    The catalog's num_params counts parameters only, not buffers, and a tied
    parameter once. A state dict also holds buffers: batch-norm running stats
    and Swin V2's ``relative_coords_table`` are the floating ones torchvision
    has (``num_batches_tracked`` is an integer). GoogLeNet's published count
    is taken after torchvision drops its auxiliary heads, which its file still
    holds, so a second estimate leaves out top-level ``aux*`` modules.
    """
    params = [
        t
        for t in inspection.tensors
        if t.is_floating and t.alias_of is None and t.name.rsplit(".", 1)[-1] not in _FLOAT_BUFFERS
    ]
    everything = sum(t.numel for t in params)
    without_aux = sum(t.numel for t in params if not t.name.lower().startswith("aux"))
    return {everything, without_aux}


def _distinct_builds(catalog: Catalog) -> list[Entry]:
    """One entry per distinct (architecture, builder arguments): weights variants build the same model."""
    seen: dict[tuple[str, str, str], Entry] = {}
    for entry in catalog.entries():
        key = (entry.task, entry.architecture, json.dumps([entry.builder_kwargs, entry.num_classes], sort_keys=True))
        seen.setdefault(key, entry)
    return list(seen.values())


def _factory(entry: Entry) -> Callable[[], Any] | None:
    """A no-argument builder for the entry's architecture, or None when ptm cannot build it."""
    if entry.task == "translate":
        return _generator_factory(entry)
    from .classify import architecture_factory

    try:
        return architecture_factory(entry)
    except ConfigError:
        return None


def _generator_factory(entry: Entry) -> Callable[[], Any] | None:
    # translate.py is optional here: use its generator builder only if it has one.
    try:
        module = importlib.import_module(f"{__package__}.translate")
    except ImportError:
        return None
    build = getattr(module, "build_generator", None)
    if not callable(build) or entry.architecture != getattr(module, "ARCHITECTURE", "cyclegan_resnet9"):
        return None
    kwargs = {k: v for k, v in entry.builder_kwargs.items() if k in ("ngf", "n_blocks")}
    return lambda: build(**kwargs)


def _architecture_shapes(entry: Entry) -> dict[str, tuple[int, ...]] | None:
    """The entry's state-dict keys and shapes, or None when it cannot be built."""
    import torch

    from .modeling import skip_init

    factory = _factory(entry)
    if factory is None:
        return None
    # Any failure only means this candidate is not the one: matching never fails because of it.
    try:
        with torch.device("meta"):
            model = factory()
    except Exception:
        try:
            # Builders that compute with real tensors (RegNet) cannot run on meta; skip_init
            # leaves the CPU memory untouched, so this costs little more.
            with skip_init():
                model = factory()
        except Exception:
            return None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --- loading any format ----------------------------------------------------------------------------


def load_any(path: Path, *, ref: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pth``/``.pt``/``.bin``, ``.safetensors`` or ``.h5``/``.hdf5`` file, safely."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "h5":
        return load_h5(path)
    from .weights import load_state_dict

    state = load_state_dict(path, ref=ref)
    if fmt == "safetensors":
        header, _ = read_safetensors_header(path)
        order = _safetensors_order(list(state), _safetensors_metadata(header))
        state = {k: state[k] for k in order}
    return state


def load_h5(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an HDF5 file (ptm's layout or any tree of numeric datasets), bit for bit."""
    path = Path(path)
    h5py = _import_h5py(f"reading {path}")
    state: dict[str, torch.Tensor] = {}
    with _open_h5(path, h5py) as handle:
        for name, dataset in _h5_datasets(handle, h5py):
            key = _h5_key(name, dataset)
            if key in state:
                raise _damaged(path, f"two datasets are both named {key!r}")
            state[key] = _h5_tensor(path, name, dataset)
    if not state:
        raise IncompatibleWeights(f"{path} holds no numeric datasets, so there are no weights to load")
    return state


def _h5_tensor(path: Path, name: str, dataset: Any) -> torch.Tensor:
    import numpy as np
    import torch

    dtype = _h5_dtype(dataset)
    if dtype is None or dtype not in SUPPORTED_DTYPES or dataset.shape is None:
        raise WeightsError(f"{path}: dataset {name!r} holds {dtype or dataset.dtype}, which ptm cannot load")
    array = np.asarray(dataset[()])
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    raw = _H5_RAW.get(dtype)
    expected = raw or dtype
    if array.dtype.name != expected:
        raise _damaged(path, f"dataset {name!r} is tagged {dtype} but stores {array.dtype.name}")
    # np.ascontiguousarray would turn a 0-d array into 1-d; torch.from_numpy warns about read-only arrays.
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = array.copy(order="C")
    if array.size == 0:
        # numpy gives empty arrays zero strides, which torch would keep; use the usual ones.
        return torch.empty(array.shape, dtype=_torch_dtype(dtype))
    tensor = torch.from_numpy(array)
    return tensor.view(_torch_dtype(dtype)) if raw else tensor


# --- converting ---------------------------------------------------------------------------------------


def convert_file(src: Path, dst: Path, *, dtype: str | None = None, force: bool = False) -> ConvertReport:
    """Write ``src``'s tensors to ``dst`` in the format its suffix names, bit for bit unless ``dtype`` casts.

    ``dtype`` (bf16, fp16, fp32) casts floating tensors only. An existing
    ``dst`` is replaced only with ``force``; ``dst`` is written atomically.
    """
    src, dst = Path(src), Path(dst)
    _check_destination(dst, force=force)
    dst_format = _output_format(dst)
    target = _cast_target(dtype)
    # Fail on a missing package before reading a large file.
    if dst_format == "h5":
        _import_h5py(f"writing {dst}")
    elif dst_format == "safetensors":
        _import_safetensors(f"writing {dst}")
    src_format = detect_format(src)
    state = load_any(src)
    prepared = _prepare(state, dst_format, target)
    writer = _WRITERS[dst_format]
    _write_atomically(dst, lambda tmp: writer(prepared.tensors, tmp), force=force)
    return ConvertReport(
        src=src,
        dst=dst,
        src_format=src_format,
        dst_format=dst_format,
        tensors=len(prepared.tensors),
        bytes_written=dst.stat().st_size,
        dtype=target,
        cast=prepared.cast,
        made_contiguous=prepared.made_contiguous,
        compacted=prepared.compacted,
        aliases_kept=prepared.aliases_kept,
        duplicated=prepared.duplicated,
    )


@dataclass
class _Prepared:
    tensors: dict[str, torch.Tensor]
    cast: list[str] = field(default_factory=list)
    made_contiguous: list[str] = field(default_factory=list)
    compacted: list[str] = field(default_factory=list)
    aliases_kept: list[tuple[str, str]] = field(default_factory=list)
    duplicated: list[tuple[str, str]] = field(default_factory=list)


def _check_supported(state: Mapping[str, torch.Tensor]) -> None:
    for name, tensor in state.items():
        dtype = _dtype_name(tensor.dtype)
        if dtype not in SUPPORTED_DTYPES:
            raise WeightsError(
                f"tensor {name!r} is {dtype}, which ptm does not convert; it converts {', '.join(SUPPORTED_DTYPES)}"
            )


def _is_compact(tensor: torch.Tensor) -> bool:
    """Contiguous, at the start of its storage and as large as it: saved alone, it writes no extra bytes."""
    return bool(
        tensor.is_contiguous()
        and tensor.storage_offset() == 0
        and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    )


def _prepare(state: Mapping[str, torch.Tensor], dst_format: str, target: str | None) -> _Prepared:
    """The tensors to write: cast, compact, with aliases kept (.pth) or split (others)."""
    _check_supported(state)
    cast_to = _torch_dtype(target) if target else None
    # Sharing is read from the tensors exactly as loaded, before anything below copies them.
    _, aliases = _sharing(state)
    out = _Prepared(tensors={})
    for name, tensor in state.items():
        original = aliases[name]
        if original is not None:
            _add_alias(out, name, original, dst_format)
            continue
        new = tensor
        if cast_to is not None and new.is_floating_point() and new.dtype != cast_to:
            new = new.to(cast_to)
            out.cast.append(name)
        if not new.is_contiguous():
            new = new.contiguous()
            out.made_contiguous.append(name)
        elif not _is_compact(new):
            new = new.clone()
            out.compacted.append(name)
        out.tensors[name] = new
    return out


def _add_alias(out: _Prepared, name: str, original: str, dst_format: str) -> None:
    if original in out.cast:
        out.cast.append(name)
    if dst_format == "pth":
        # The same tensor object twice: torch.save writes its storage once, and loading ties them again.
        out.tensors[name] = out.tensors[original]
        out.aliases_kept.append((name, original))
    else:
        # safetensors refuses tensors that share memory; HDF5 datasets cannot share either.
        out.tensors[name] = out.tensors[original].clone() if dst_format == "safetensors" else out.tensors[original]
        out.duplicated.append((name, original))


def _write_pth(tensors: dict[str, torch.Tensor], path: Path) -> None:
    import torch

    torch.save(dict(tensors), path)


def _write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    module = _import_safetensors(f"writing {path}")
    metadata = {"format": "pt", SAFETENSORS_ORDER_KEY: json.dumps(list(tensors))}
    module.save_file(tensors, str(path), metadata=metadata)


def h5_dataset_name(key: str) -> str:
    """The dataset name a state-dict key is stored under (see the module docstring); injective."""
    if key == "":
        return "%"
    name = key.replace("%", "%25").replace("/", "%2F").replace("\x00", "%00")
    if not name.strip("."):
        name = name.replace(".", "%2E")  # "." and ".." mean the group itself and its parent
    return name


def _h5_array(tensor: torch.Tensor) -> np.ndarray:
    import torch

    dtype = _dtype_name(tensor.dtype)
    raw = _H5_RAW.get(dtype)
    if raw is None:
        return tensor.numpy()
    # Same width, bits untouched: viewed back on reading through the ptm_dtype attribute.
    width = {"uint16": torch.int16, "uint8": torch.uint8}[raw]
    return tensor.view(width).numpy().view(raw)


def _write_h5(tensors: dict[str, torch.Tensor], path: Path) -> None:
    h5py = _import_h5py(f"writing {path}")
    with h5py.File(path, "w", track_order=True) as handle:
        handle.attrs["ptm_format"] = H5_FORMAT
        for key, tensor in tensors.items():
            dataset = handle.create_dataset(h5_dataset_name(key), data=_h5_array(tensor))
            dataset.attrs[H5_KEY_ATTR] = key
            dataset.attrs[H5_DTYPE_ATTR] = _dtype_name(tensor.dtype)


_WRITERS: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "pth": _write_pth,
    "safetensors": _write_safetensors,
    "h5": _write_h5,
}


def _exists_error(dst: Path) -> OutputError:
    return OutputError(f"{dst} already exists; use --force to overwrite it")


def _check_destination(dst: Path, *, force: bool) -> None:
    if dst.is_dir():
        raise UsageError(f"{dst} is a folder; give the name of the file to write")
    if not (dst.parent if str(dst.parent) else Path(".")).is_dir():
        raise OutputError(f"cannot write {dst}: the folder {dst.parent} does not exist")
    if dst.exists() and not force:
        raise _exists_error(dst)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, dst: Path, *, force: bool) -> None:
    """Move the finished file into place; without ``force`` never replace a file that appeared meanwhile."""
    if force:
        os.replace(tmp, dst)
        return
    try:
        os.link(tmp, dst)  # fails if dst exists: no window between the check and the rename
    except FileExistsError:
        raise _exists_error(dst) from None
    except OSError:  # a file system without hard links
        if dst.exists():
            raise _exists_error(dst) from None
        os.replace(tmp, dst)


def _write_atomically(dst: Path, write: Callable[[Path], None], *, force: bool) -> None:
    """Run ``write`` on a temporary file beside ``dst`` and rename it into place only once it is complete."""
    directory = dst.parent if str(dst.parent) else Path(".")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=directory)
    except OSError as exc:
        raise OutputError(f"cannot write in {directory} ({exc.strerror}); check its permissions") from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        _fsync(tmp)
        os.chmod(tmp, FILE_MODE)  # mkstemp makes files only their owner can read
        _publish(tmp, dst, force=force)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OutputError(f"cannot write {dst} ({reason}); check the folder's permissions and free space") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
