"""What a weights file holds, tensor by tensor, without reading its data.

One :class:`TensorInfo` per tensor: shape, dtype, strides, storage offset,
contiguity and which tensors share a storage, plus totals.

* torch files are loaded ``weights_only`` and memory-mapped, so tensors are
  views on the mapped file and their storages are exactly the ones
  ``torch.save`` wrote: tensors whose ``untyped_storage().data_ptr()`` is
  equal share a storage. A state dict is named as a model sees it (a
  ``{"state_dict": ...}`` wrapper unwrapped, a DataParallel ``module.`` prefix
  stripped); any other object (a bare tensor, a list or dict of tensors) has
  every tensor named by its path (``""``, ``[0]``, ``a.b``).
* safetensors files are inspected from their JSON header alone. Every tensor
  is its own contiguous storage (the format forbids sharing); its
  ``storage_offset`` is its place in the data section in elements.
* HDF5 files need h5py; every dataset is a contiguous tensor of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import IncompatibleWeights, UsageError, WeightsError
from . import h5, safetensors_io, torchfile
from .filetypes import (
    ITEMSIZE,
    contiguous_strides,
    damaged,
    detect_format,
    dtype_name,
    import_h5py,
    is_floating,
    product,
)

if TYPE_CHECKING:
    import torch


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
        return is_floating(self.dtype)


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


def sharing(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, str], dict[str, str | None]]:
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
    members: dict[str, list[str]] = {}
    for info in infos:
        members.setdefault(info.storage, []).append(info.name)
    return [replace(info, shares_with=[n for n in members[info.storage] if n != info.name]) for info in infos]


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


def _torch_tensors(path: Path) -> dict[str, torch.Tensor]:
    obj = torchfile.read_object(path)
    try:
        return torchfile.as_state_dict(obj, path)
    except IncompatibleWeights:
        pass
    # Not a state dict: a bare tensor, or tensors in lists and dicts; name each by its path.
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in torchfile.iter_tensors(obj):
        tensors.setdefault(name, tensor)
    if not tensors:
        raise IncompatibleWeights(f"{path} holds {torchfile.describe(obj)} and no tensors at all")
    return tensors


def _inspect_torch(path: Path) -> Inspection:
    # Memory-mapped: the tensors are views on the file, nothing is copied or read but the pickle.
    state = _torch_tensors(path)
    labels, aliases = sharing(state)
    infos = [
        TensorInfo(
            name=name,
            shape=tuple(t.shape),
            dtype=dtype_name(t.dtype),
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


def _inspect_safetensors(path: Path) -> Inspection:
    header, data_start = safetensors_io.read_header(path)
    metadata = safetensors_io.split_metadata(header)
    file_size = path.stat().st_size
    infos = []
    spans: list[tuple[str, int, int]] = []
    data_end = 0
    for index, name in enumerate(safetensors_io.ordered(list(header), metadata)):
        dtype, shape, begin, end = safetensors_io.entry(path, name, header[name])
        numel = product(shape)
        itemsize = ITEMSIZE[dtype]
        if end - begin != numel * itemsize:
            raise damaged(path, f"{name!r} takes {end - begin} bytes but its shape and dtype need {numel * itemsize}")
        data_end = max(data_end, end)
        spans.append((name, begin, end))
        infos.append(
            TensorInfo(
                name=name,
                shape=shape,
                dtype=dtype,
                numel=numel,
                nbytes=end - begin,
                stride=contiguous_strides(shape),
                storage_offset=begin // itemsize,
                is_contiguous=True,
                storage=f"s{index}",
                storage_nbytes=end - begin,
            )
        )
    safetensors_io.check_layout(path, spans)
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
        metadata={str(k): str(v) for k, v in metadata.items() if k != safetensors_io.ORDER_KEY},
        warnings=warnings,
    )


def _inspect_h5(path: Path) -> Inspection:
    h5py = import_h5py(f"reading {path}")
    infos: list[TensorInfo] = []
    warnings: list[str] = []
    with h5.open_file(path, h5py) as handle:
        for name, dataset in h5.datasets(handle, h5py):
            dtype = h5.dtype_of(dataset)
            if dtype is None or dataset.shape is None:
                warnings.append(f"dataset {name!r} holds no numbers ({dataset.dtype}) and is left out")
                continue
            h5.check_dataset(path, name, dataset)
            shape = tuple(int(s) for s in dataset.shape)
            numel = product(shape)
            nbytes = numel * ITEMSIZE.get(dtype, dataset.dtype.itemsize)
            infos.append(
                TensorInfo(
                    name=h5.key_of(name, dataset),
                    shape=shape,
                    dtype=dtype,
                    numel=numel,
                    nbytes=nbytes,
                    stride=contiguous_strides(shape),
                    storage_offset=0,
                    is_contiguous=True,
                    storage=f"s{len(infos)}",
                    storage_nbytes=nbytes,
                )
            )
    return Inspection(path=path, format="h5", file_size=path.stat().st_size, tensors=infos, warnings=warnings)
