"""safetensors files: the header read by hand (no package needed), the data through the safetensors package.

A safetensors file is an 8-byte little-endian header length, a JSON header
(one entry per tensor: dtype, shape, data_offsets; plus ``__metadata__``)
and the data. safetensors keeps no key order (it lays tensors out by dtype
and name), so ptm records the state dict's order in the metadata
(``ptm_key_order``) when it writes one, and follows it when reading.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import WeightsError, first_line
from .filetypes import cannot_read, damaged, import_safetensors

if TYPE_CHECKING:
    import torch

ORDER_KEY = "ptm_key_order"  # metadata: a JSON list of the keys in state-dict order
METADATA_KEY = "__metadata__"
# safetensors refuses headers over 100 MB; a larger length means the file is not safetensors.
MAX_HEADER = 100_000_000
# safetensors' dtype codes (its spec) in torch's spelling.
DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2": "float8_e5m2",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
}


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and where its data section starts; reads nothing else."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            prefix = stream.read(8)
            if len(prefix) < 8:
                raise damaged(path, "shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER or length > size - 8:
                raise damaged(path, f"its header length {length} does not fit the file")
            raw = stream.read(length)
    except OSError as exc:
        raise cannot_read(path, exc) from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise damaged(path, "its header is not valid JSON") from None
    except RecursionError:  # "[[[[..." nested deeper than the parser's stack
        raise damaged(path, "its header is nested too deeply to be a safetensors header") from None
    if not isinstance(header, dict):
        raise damaged(path, "its header is not a JSON object")
    return header, 8 + length


def split_metadata(header: dict[str, Any]) -> dict[str, Any]:
    """Remove and return the header's ``__metadata__`` (empty when absent or malformed)."""
    metadata = header.pop(METADATA_KEY, None)
    return metadata if isinstance(metadata, dict) else {}


def entry(path: Path, name: str, raw: Any) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, validated."""
    if not isinstance(raw, dict):
        raise damaged(path, f"header entry {name!r} is not an object")
    code, shape, offsets = raw.get("dtype"), raw.get("shape"), raw.get("data_offsets")
    if not isinstance(code, str):
        raise damaged(path, f"{name!r} has no dtype")
    if code not in DTYPES:
        raise damaged(path, f"{name!r} has dtype {code[:20]!r}, which is not a safetensors dtype ptm knows")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise damaged(path, f"{name!r} has an invalid shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise damaged(path, f"{name!r} has invalid data_offsets")
    return DTYPES[code], tuple(shape), offsets[0], offsets[1]


def check_layout(path: Path, spans: list[tuple[str, int, int]]) -> None:
    """Refuse tensors whose byte ranges ``(name, begin, end)`` overlap: each tensor owns its bytes."""
    previous: tuple[str, int, int] | None = None
    for name, begin, end in sorted(spans, key=lambda span: (span[1], span[2])):
        if previous is not None and begin < previous[2] and end > begin:
            raise damaged(path, f"the data of {previous[0]!r} and {name!r} overlap")
        if end > begin:
            previous = name, begin, end


def ordered(names: list[str], metadata: Mapping[str, Any]) -> list[str]:
    """``names`` in the order ptm wrote them (the state dict's), when the file says so."""
    try:
        recorded = json.loads(metadata[ORDER_KEY])
    except (KeyError, TypeError, ValueError):
        return names
    if not isinstance(recorded, list) or sorted(recorded) != sorted(names):
        return names
    return recorded


def load(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, in the recorded order (needs the safetensors package)."""
    path = Path(path)
    module = import_safetensors(f"loading {path}")
    import safetensors

    safetensor_error: type[Exception] = getattr(safetensors, "SafetensorError", ValueError)
    try:
        state = module.load_file(str(path), device="cpu")
    except (safetensor_error, ValueError, RuntimeError) as exc:
        raise damaged(path, first_line(exc, 120)) from None
    except OSError as exc:
        raise cannot_read(path, exc) from None
    header, _ = read_header(path)
    order = ordered(list(state), split_metadata(header))
    return {k: state[k] for k in order}


def save(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    module = import_safetensors(f"writing {path}")
    if METADATA_KEY in tensors:
        raise WeightsError(
            f"a tensor is named {METADATA_KEY!r}, which safetensors reserves for its header; "
            "rename it, or convert to .pth or .h5 instead"
        )
    metadata = {"format": "pt", ORDER_KEY: json.dumps(list(tensors))}
    module.save_file(dict(tensors), str(path), metadata=metadata)
