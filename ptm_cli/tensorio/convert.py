"""Converting weights files between ``.pth``, ``.safetensors`` and ``.h5``, bit for bit.

Any readable format goes to ``.pth`` (a plain dict saved with ``torch.save``),
``.safetensors`` or ``.h5``, optionally casting floating tensors only
(``dtype="bf16"|"fp16"|"fp32"``). Every tensor written is compact:
contiguous, at offset 0 and no larger than its storage, so a transposed
tensor is made contiguous and a slice of a larger storage is copied out
(``torch.save`` would otherwise write the whole storage). True aliases (the
same view under two names: tied weights) stay one storage in ``.pth``;
safetensors cannot share, so each alias is written as a copy of its own, and
in HDF5 each name is its own dataset. The file is written to a temporary file
beside the destination and renamed into place, so a failed conversion leaves
no partial file, and an existing file is kept unless ``force``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EXIT_USAGE, OutputError, PtmError, UsageError, WeightsError, first_line
from ..runtime import fsutil
from . import h5, safetensors_io
from .filetypes import (
    SUPPORTED_DTYPES,
    cast_target,
    detect_format,
    dtype_name,
    import_h5py,
    import_safetensors,
    output_format,
    torch_dtype,
)
from .inspection import sharing
from .reading import load_state_dict

if TYPE_CHECKING:
    import torch


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


@dataclass
class _Prepared:
    tensors: dict[str, torch.Tensor]
    cast: list[str] = field(default_factory=list)
    made_contiguous: list[str] = field(default_factory=list)
    compacted: list[str] = field(default_factory=list)
    aliases_kept: list[tuple[str, str]] = field(default_factory=list)
    duplicated: list[tuple[str, str]] = field(default_factory=list)


def _write_pth(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    import torch

    torch.save(dict(tensors), path)


_WRITERS: dict[str, Callable[[Mapping[str, Any], Path], None]] = {
    "pth": _write_pth,
    "safetensors": safetensors_io.save,
    "h5": h5.save,
}


def convert_file(src: Path, dst: Path, *, dtype: str | None = None, force: bool = False) -> ConvertReport:
    """Write ``src``'s tensors to ``dst`` in the format its suffix names, bit for bit unless ``dtype`` casts.

    ``dtype`` (bf16, fp16, fp32) casts floating tensors only. An existing
    ``dst`` (a regular file) is replaced only with ``force``.
    """
    src, dst = Path(src), Path(dst)
    _check_destination(dst, force=force)
    dst_format = output_format(dst)
    target = cast_target(dtype)
    # Fail on a missing package before reading a large file.
    if dst_format == "h5":
        import_h5py(f"writing {dst}")
    elif dst_format == "safetensors":
        import_safetensors(f"writing {dst}")
    src_format = detect_format(src)
    state = load_state_dict(src)
    prepared = _prepare(state, dst_format, target)
    writer = _WRITERS[dst_format]

    def write(tmp: Path) -> None:
        try:
            writer(prepared.tensors, tmp)
        except PtmError:
            raise
        except Exception as exc:  # torch.save and safetensors report a full disk as RuntimeError/their own
            raise _write_failure(tmp, exc) from None

    try:
        fsutil.write_atomic_with(dst, write, replace=force)
    except FileExistsError:
        raise _exists_error(dst) from None
    except fsutil.NotReplaceable:
        raise _not_written(f"{dst} is not a regular file, so ptm will not replace it; choose another name") from None
    except OSError as exc:
        reason = exc.strerror or first_line(exc, 120)
        raise _not_written(f"cannot write {dst} ({reason}); check the folder's permissions and free space") from None
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


def _not_written(message: str) -> OutputError:
    """convert writes one file; when it cannot, nothing was done: exit 2, not an input's exit 1."""
    error = OutputError(message)
    error.exit_code = EXIT_USAGE
    return error


def _write_failure(tmp: Path, exc: BaseException) -> OSError:
    """What a writer's failure was, as an OSError: a full file system is named as such.

    Checked while the partial file still takes its space; writers that wrap
    the system's error (torch.save: "unexpected pos", h5py: a page of text)
    would otherwise hide it.
    """
    with contextlib.suppress(OSError):
        stats = os.statvfs(fsutil.folder_of(tmp))
        if stats.f_bavail == 0:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if isinstance(exc, OSError) and exc.strerror:
        return exc
    return OSError(errno.EIO, first_line(exc, 120))


def _exists_error(dst: Path) -> OutputError:
    return _not_written(f"{dst} already exists; use --force to overwrite it")


def _check_destination(dst: Path, *, force: bool) -> None:
    if dst.is_dir():
        raise UsageError(f"{dst} is a folder; give the name of the file to write")
    if not fsutil.is_regular_or_absent(dst):
        # A device, pipe, socket or link: never replaced, and a weights file needs a real file to seek in.
        raise _not_written(
            f"{dst} is not a regular file (a link, device or pipe), so ptm will not write over it; choose another name"
        )
    if not fsutil.folder_of(dst).is_dir():
        raise _not_written(f"cannot write {dst}: the folder {dst.parent} does not exist")
    if dst.exists() and not force:
        raise _exists_error(dst)


def _check_supported(state: Mapping[str, torch.Tensor]) -> None:
    for name, tensor in state.items():
        dtype = dtype_name(tensor.dtype)
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
    cast_to = torch_dtype(target) if target else None
    # Sharing is read from the tensors exactly as loaded, before anything below copies them.
    _, aliases = sharing(state)
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
