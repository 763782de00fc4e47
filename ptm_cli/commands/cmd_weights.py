"""``ptm weights``: the cache (list, download, verify, import, path, rm, prune) and weights files (inspect, convert)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import EXIT_INPUT_FAILED, EXIT_OK
from . import completion
from .common import CONTEXT, note, stdout_is_data, writer
from .options import format_option


@click.group(context_settings=CONTEXT)
def weights() -> None:
    """Manage the weights cache (list, download, verify, import, path, rm, prune) and weights files (inspect, convert).

    The cache is PTM_CACHE_DIR, else torch's own checkpoint directory
    ($TORCH_HOME/hub/checkpoints), so files torchvision downloaded are reused.
    NAME is a model (its default weights) or MODEL:WEIGHTS.
    """


def _entry(name: str, weights_name: str | None) -> Any:
    from ..cache.naming import catalog_entry

    return catalog_entry(name, weights_name)


weights_option = click.option(
    "-w",
    "--weights",
    "weights_name",
    shell_complete=completion.weights,
    help="Weights variant (default: the model's default).",
)
name_argument = click.argument("name", shell_complete=completion.models())


@weights.command("list", context_settings=CONTEXT)
@format_option
def weights_list(fmt: str | None) -> int:
    """Files in the cache, their size, and whether they were verified."""
    from ..cache.catalog import Catalog
    from ..cache.weights import list_cached

    with stdout_is_data() as out, writer(out, fmt, columns=["file", "size_mib", "verified", "entries"]) as records:
        for item in list_cached(Catalog.load().entries()):
            records.write(
                {
                    "file": item.path.name,
                    "size_mib": round(item.size / 2**20, 3),
                    "verified": item.verified,
                    "entries": " ".join(item.entries),
                }
            )
    return EXIT_OK


@weights.command("download", context_settings=CONTEXT)
@name_argument
@weights_option
def weights_download(name: str, weights_name: str | None) -> int:
    """Download and verify NAME's weights; print the file's path."""
    from ..nets.architectures import ensure_weights

    entry = _entry(name, weights_name)
    with stdout_is_data() as out:
        path = ensure_weights(entry, progress=True)
        out.write(f"{path}\n")
    return EXIT_OK


@weights.command("verify", context_settings=CONTEXT)
@click.argument("name", required=False)
@weights_option
@format_option
def weights_verify(name: str | None, weights_name: str | None, fmt: str | None) -> int:
    """Re-hash cached files (NAME's, or every cached one); exit 1 on any mismatch."""
    from ..cache.catalog import Catalog
    from ..cache.weights import is_cached, verify

    if name is not None:
        entries = [_entry(name, weights_name)]
    else:
        entries = [e for e in Catalog.load().entries() if is_cached(e)]
    bad = 0
    with stdout_is_data() as out, writer(out, fmt, columns=["entry", "file", "status", "sha256"]) as records:
        for entry in entries:
            result = verify(entry)
            bad += result.status in ("mismatch", "missing")
            records.write(
                {"entry": entry.ref, "file": str(result.path), "status": result.status, "sha256": result.digest}
            )
    if bad:
        note(f"{bad} file(s) failed verification; remove them with `ptm weights rm NAME` and download again")
        return EXIT_INPUT_FAILED
    return EXIT_OK


@weights.command("import", context_settings=CONTEXT)
@name_argument
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@weights_option
def weights_import(name: str, file: Path, weights_name: str | None) -> int:
    """Check FILE against NAME's hash and copy it into the cache (for offline machines)."""
    from ..nets.architectures import import_weights

    entry = _entry(name, weights_name)
    with stdout_is_data() as out:
        path = import_weights(entry, file)
        out.write(f"{path}\n")
    return EXIT_OK


@weights.command("path", context_settings=CONTEXT)
@name_argument
@weights_option
def weights_path(name: str, weights_name: str | None) -> int:
    """Print where NAME's weights live in the cache; exit 1 if not there yet."""
    from ..cache.weights import cached_path

    entry = _entry(name, weights_name)
    path = cached_path(entry)
    with stdout_is_data() as out:
        out.write(f"{path}\n")
    if not path.is_file():
        note(f"{entry.ref} is not downloaded yet; run `ptm weights download {entry.ref}`")
        return EXIT_INPUT_FAILED
    return EXIT_OK


@weights.command("rm", context_settings=CONTEXT)
@name_argument
@weights_option
@click.option(
    "--forget-pin",
    is_flag=True,
    help="Also forget the sha256 pinned at the first download, to accept a file that changed upstream.",
)
def weights_rm(name: str, weights_name: str | None, forget_pin: bool) -> int:
    """Delete NAME's weights file from the cache."""
    from ..cache.weights import remove

    entry = _entry(name, weights_name)
    if remove(entry, forget_pin=forget_pin):
        note(f"removed {entry.file_name}")
    else:
        note(f"{entry.file_name} was not in the cache")
    return EXIT_OK


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) if shape else "scalar"


def _stride_text(stride: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in stride) + ("," if len(stride) == 1 else "") + ")"


def tensor_rows(inspection: Any, *, as_text: bool) -> list[dict[str, Any]]:
    """One record per tensor: arrays for JSON, compact text for tables and CSV."""
    return [
        {
            "name": t.name,
            "shape": _shape_text(t.shape) if as_text else list(t.shape),
            "dtype": t.dtype,
            "numel": t.numel,
            "bytes": t.nbytes,
            "stride": _stride_text(t.stride) if as_text else list(t.stride),
            "offset": t.storage_offset,
            "contiguous": t.is_contiguous,
            "storage": t.storage,
            "shares_with": ", ".join(t.shares_with) if as_text else list(t.shares_with),
        }
        for t in inspection.tensors
    ]


def totals(inspection: Any) -> dict[str, Any]:
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


@weights.command("inspect", context_settings=CONTEXT)
@click.argument("target", metavar="FILE|NAME")
@format_option
def weights_inspect(target: str, fmt: str | None) -> int:
    """One row per tensor: shape, dtype, size, stride, storage offset, contiguity, sharing.

    Reads .pth/.pt (weights_only, memory-mapped; a state dict, a bare tensor,
    or tensors in lists and dicts), .safetensors (header only) and .h5 files;
    NAME inspects a cached catalog file. The totals and the catalog
    architecture the file fits go to stderr (or into the object printed with
    -f json). In json and jsonl, shape, stride and shares_with are arrays.

    \b
    Examples:
      ptm weights inspect resnet101-cd907fc2.pth
      ptm weights inspect alexnet -f csv > alexnet-tensors.csv
      ptm weights inspect model.pth -f jsonl | jq '.stride[0]'
    """
    from ..cache.catalog import Catalog
    from ..cache.naming import weights_file_or_cached
    from ..nets.architectures import match_architecture
    from ..output.records import default_format
    from ..tensorio.inspection import inspect_file

    inspection = inspect_file(weights_file_or_cached(target))
    summary = {**totals(inspection), "architecture": match_architecture(inspection, Catalog.load())}
    with stdout_is_data() as out:
        chosen = fmt or default_format(out)
        rows = tensor_rows(inspection, as_text=chosen not in ("json", "jsonl"))
        if chosen == "json":
            import json

            out.write(json.dumps({**summary, "tensors": rows}, indent=1) + "\n")
        else:
            columns = [
                "name",
                "shape",
                "dtype",
                "numel",
                "bytes",
                "stride",
                "offset",
                "contiguous",
                "storage",
                "shares_with",
            ]
            with writer(out, chosen, columns=columns) as records:
                for row in rows:
                    records.write(row)
    by_dtype = ", ".join(f"{k} {v:,} B" for k, v in summary["bytes_by_dtype"].items())
    note(
        f"{summary['tensors']} tensors, {summary['float_values']:,} floating-point values, "
        f"{summary['storages']} storages ({summary['storage_bytes']:,} bytes; {by_dtype}); "
        f"architecture: {summary['architecture'] or 'no match'}"
    )
    for warning in summary["warnings"]:
        note(f"warning: {warning}")
    return EXIT_OK


@weights.command("convert", context_settings=CONTEXT)
@click.argument("src", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dtype", type=click.Choice(("bf16", "fp16", "fp32")), help="Cast floating-point tensors.")
@click.option("--force", is_flag=True, help="Overwrite DST if it exists.")
@format_option
def weights_convert(src: Path, dst: Path, dtype: str | None, force: bool, fmt: str | None) -> int:
    """Convert a weights file between .pth, .safetensors and .h5 (by extension).

    Non-contiguous and shared tensors are written correctly; a round trip is
    bit-identical. .safetensors and .h5 files cannot run code when loaded.

    \b
    Examples:
      ptm weights convert resnet101-cd907fc2.pth resnet101.safetensors
      ptm weights convert model.pth model-half.h5 --dtype fp16
    """
    from ..tensorio.convert import convert_file

    columns = ["src", "dst", "tensors", "bytes_written", "dtype", "cast", "made_contiguous", "duplicated"]
    with stdout_is_data() as out:
        report = convert_file(src, dst, dtype=dtype, force=force)
        with writer(out, fmt, columns=columns) as records:
            records.write(
                {
                    "src": str(report.src),
                    "dst": str(report.dst),
                    "tensors": report.tensors,
                    "bytes_written": report.bytes_written,
                    "dtype": report.dtype,
                    "cast": len(report.cast),
                    "made_contiguous": len(report.made_contiguous),
                    "duplicated": len(report.duplicated),
                }
            )
    return EXIT_OK


@weights.command("prune", context_settings=CONTEXT)
def weights_prune() -> int:
    """Delete partial files left by interrupted downloads."""
    from ..cache.weights import prune

    removed = prune()
    for path in removed:
        note(f"removed {path.name}")
    if not removed:
        note("nothing to prune")
    return EXIT_OK
