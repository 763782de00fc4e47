"""HDF5 weights files (needs h5py): ptm's own layout, and numeric datasets written by other tools.

Layout (``ptm-h5/1``)
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

What is refused before any data is read
    HDF5 can make a file read bytes it does not hold: external links, soft
    links (which can loop), hard links that make a group its own ancestor,
    datasets whose raw data lives in another file (external storage) or is
    assembled from other files (virtual datasets), and datasets whose bytes
    were never written (read back as the fill value, so a tiny file can
    declare gigabytes). Compressed (chunked) datasets may not declare more than
    ``MAX_INFLATION`` times the bytes they store. Every dataset is checked from
    its metadata alone, all of them before the first is read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import IncompatibleWeights, UnsafeWeights, WeightsError
from .filetypes import SUPPORTED_DTYPES, cannot_read, damaged, dtype_name, import_h5py, product, torch_dtype

if TYPE_CHECKING:
    import numpy as np
    import torch

FORMAT = "ptm-h5/1"
KEY_ATTR = "ptm_key"
DTYPE_ATTR = "ptm_dtype"
# dtypes numpy lacks, stored as unsigned integers of the same width.
RAW_DTYPES = {"bfloat16": "uint16", "float8_e4m3fn": "uint8", "float8_e5m2": "uint8"}
# A compressed dataset may declare at most this many times the bytes it stores (gzip of real
# weights saves a few percent; only long runs of one value compress further)...
MAX_INFLATION = 100
# ...unless what it declares is this small anyway.
INFLATION_FLOOR = 1 << 20
MAX_DEPTH = 64  # group nesting; real files use a handful of levels


@contextlib.contextmanager
def open_file(path: Path, h5py: Any) -> Iterator[Any]:
    try:
        handle = h5py.File(path, "r")
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise cannot_read(path, exc) from None
    except OSError as exc:
        raise damaged(path, f"not a readable HDF5 file: {exc}") from None
    with handle:
        yield handle


def datasets(group: Any, h5py: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, dataset) for every dataset under ``group``, in the group's own order.

    Only hard links are followed, and each group once: an external or soft
    link, or a group that contains itself, is refused (``UnsafeWeights``).
    """
    yield from _walk(group, h5py, prefix, {_address(group, h5py)})


def _address(item: Any, h5py: Any) -> tuple[int, int]:
    info = h5py.h5o.get_info(item.id)
    return int(info.fileno), int(info.addr)


def _walk(group: Any, h5py: Any, prefix: str, ancestors: set[tuple[int, int]]) -> Iterator[tuple[str, Any]]:
    if len(ancestors) > MAX_DEPTH:
        raise UnsafeWeights(f"{group.file.filename}: groups are nested more than {MAX_DEPTH} deep")
    for name in group:
        path = f"{prefix}{name}"
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise _outside(group, path, f"is a link to {link.filename!r}, another file")
        if isinstance(link, h5py.SoftLink):
            raise _outside(group, path, f"is a soft link to {link.path!r}")
        item = group.get(name)
        if isinstance(item, h5py.Dataset):
            yield path, item
        elif isinstance(item, h5py.Group):
            address = _address(item, h5py)
            if address in ancestors:
                raise _outside(group, path, "is a link back to a group that contains it (a loop)")
            yield from _walk(item, h5py, f"{path}/", ancestors | {address})


def _outside(group: Any, name: str, what: str) -> UnsafeWeights:
    return UnsafeWeights(
        f"{group.file.filename}: {name!r} {what}; ptm reads only datasets stored in the file itself, "
        "so save the tensors into one plain file"
    )


def check_dataset(path: Path, name: str, dataset: Any) -> int:
    """The bytes ``dataset`` declares, after checking from its metadata that they are all inside the file.

    Refuses (``UnsafeWeights``) external and virtual storage, data that was
    never written, and compressed data that would inflate beyond
    ``MAX_INFLATION`` times its size; reads none of the data.
    """
    if dataset.is_virtual:
        raise _outside(dataset, name, "is a virtual dataset, made of data from other files")
    if dataset.external:
        files = ", ".join(repr(str(entry[0])) for entry in dataset.external)
        raise _outside(dataset, name, f"keeps its data in another file ({files})")
    declared = 0 if dataset.shape is None else product(tuple(dataset.shape)) * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    if dataset.chunks is None:
        if stored < declared:
            raise UnsafeWeights(
                f"{path}: dataset {name!r} declares {declared} bytes but the file stores {stored} of them; "
                "ptm does not make up the rest"
            )
    elif declared > max(INFLATION_FLOOR, stored * MAX_INFLATION):
        raise UnsafeWeights(
            f"{path}: dataset {name!r} would inflate from {stored} stored bytes to {declared}, more than "
            f"{MAX_INFLATION} times; ptm refuses it rather than fill memory (a compression bomb or sparse data)"
        )
    return declared


def _attr_text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return None if value is None else str(value)


def key_of(path: str, dataset: Any) -> str:
    key = _attr_text(dataset.attrs.get(KEY_ATTR))
    return path.replace("/", ".") if key is None else key


def dtype_of(dataset: Any) -> str | None:
    """The torch dtype a dataset holds, or None when it holds no numbers (strings, compounds...)."""
    tagged = _attr_text(dataset.attrs.get(DTYPE_ATTR))
    if tagged:
        return tagged
    kind = dataset.dtype
    if kind.kind == "b":
        return "bool"
    if kind.kind in "iufc":
        return str(kind.name)
    return None


def load(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an HDF5 file (ptm's layout or any tree of numeric datasets), bit for bit.

    Every dataset's key, dtype, shape and storage are checked before the
    first byte of data is read.
    """
    path = Path(path)
    h5py = import_h5py(f"reading {path}")
    with open_file(path, h5py) as handle:
        found: dict[str, tuple[str, Any]] = {}
        for name, dataset in datasets(handle, h5py):
            key = key_of(name, dataset)
            if key in found:
                raise damaged(path, f"two datasets are both named {key!r}")
            dtype = dtype_of(dataset)
            if dtype is None or dtype not in SUPPORTED_DTYPES or dataset.shape is None:
                raise WeightsError(f"{path}: dataset {name!r} holds {dtype or dataset.dtype}, which ptm cannot load")
            check_dataset(path, name, dataset)
            found[key] = (name, dataset)
        if not found:
            raise IncompatibleWeights(f"{path} holds no numeric datasets, so there are no weights to load")
        return {key: _tensor(path, name, dataset) for key, (name, dataset) in found.items()}


def _tensor(path: Path, name: str, dataset: Any) -> torch.Tensor:
    import numpy as np
    import torch

    dtype = dtype_of(dataset) or ""
    try:
        array = np.asarray(dataset[()])
    except (OSError, ValueError) as exc:  # a filter that is missing or fails, data cut short
        raise damaged(path, f"dataset {name!r} cannot be read: {exc}") from None
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    raw = RAW_DTYPES.get(dtype)
    expected = raw or dtype
    if array.dtype.name != expected:
        raise damaged(path, f"dataset {name!r} is tagged {dtype} but stores {array.dtype.name}")
    # np.ascontiguousarray would turn a 0-d array into 1-d; torch.from_numpy warns about read-only arrays.
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = array.copy(order="C")
    if array.size == 0:
        # numpy gives empty arrays zero strides, which torch would keep; use the usual ones.
        return torch.empty(array.shape, dtype=torch_dtype(dtype))
    tensor = torch.from_numpy(array)
    return tensor.view(torch_dtype(dtype)) if raw else tensor


def dataset_name(key: str) -> str:
    """The dataset name a state-dict key is stored under (see the module docstring); injective."""
    if key == "":
        return "%"
    name = key.replace("%", "%25").replace("/", "%2F").replace("\x00", "%00")
    if not name.strip("."):
        name = name.replace(".", "%2E")  # "." and ".." mean the group itself and its parent
    return name


def _array(tensor: torch.Tensor) -> np.ndarray:
    import torch

    dtype = dtype_name(tensor.dtype)
    raw = RAW_DTYPES.get(dtype)
    if raw is None:
        return tensor.numpy()
    # Same width, bits untouched: viewed back on reading through the ptm_dtype attribute.
    width = {"uint16": torch.int16, "uint8": torch.uint8}[raw]
    return tensor.view(width).numpy().view(raw)


def save(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    h5py = import_h5py(f"writing {path}")
    with h5py.File(path, "w", track_order=True) as handle:
        handle.attrs["ptm_format"] = FORMAT
        for key, tensor in tensors.items():
            dataset = handle.create_dataset(dataset_name(key), data=_array(tensor))
            dataset.attrs[KEY_ATTR] = key
            dataset.attrs[DTYPE_ATTR] = dtype_name(tensor.dtype)
