"""``ptm doctor``: does this environment work, and if not, why not?

:func:`collect` gathers one report (a dict of plain JSON types) about Python,
the platform, package versions, whether torch, torchvision and Pillow import,
the CPU and its vector features, torch's threads, CUDA, MPS, the weights cache,
the torch.hub cache, the weights files there, and the settings that change
ptm's behaviour. :func:`rows` flattens it into ``section / key / value`` rows
for a table.

Every probe is isolated: one that fails records ``"error: Type: message"`` in
its own field and the others still run, because a doctor that crashes on the
broken part of an environment is no use. Secrets are never reported:
``GITHUB_TOKEN`` appears only as set or not set, and credentials in URLs
(mirror, proxies) are masked.

``ok`` means ptm can run: torch, torchvision and Pillow import, click and rich
are installed, the settings and catalog parse, and weights can be stored (the
cache folder is writable, or creatable) - or ``PTM_OFFLINE=1`` with files
already in the cache. Things that only make some runs fail (little free disk,
an empty cache while offline) are ``warnings``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from .. import settings
from ..errors import first_line
from ..output.records import human_size
from ..version import __version__

T = TypeVar("T")

PACKAGES = ("torch", "torchvision", "Pillow", "click", "rich")
# The modules that must import for ptm to run at all (import name -> distribution, for messages).
REQUIRED_IMPORTS = {"torch": "torch", "torchvision": "torchvision", "PIL": "Pillow"}
# Every variable ptm reads, from the one place that reads them.
SETTINGS = tuple(v.name for v in settings.VARIABLES if v.kind != "secret")
# Settings whose value is a secret: reported only as "set" or "not set".
SECRET_SETTINGS = tuple(v.name for v in settings.VARIABLES if v.kind == "secret")
# Settings that may hold a URL with a password or a token in it.
URL_SETTINGS = tuple(v.name for v in settings.VARIABLES if v.kind == "url")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx")
AMX_FLAGS = ("amx_tile", "amx_bf16", "amx_int8")
CPUINFO = Path("/proc/cpuinfo")
LOW_DISK_BYTES = 1 << 30  # less than one weights file of the big models plus headroom
BYTE_KEYS = frozenset({"size", "free", "total_memory"})


# --- probing --------------------------------------------------------------------------------------------


def _error(exc: BaseException) -> str:
    if not str(exc).strip():
        return f"error: {type(exc).__name__}"
    return f"error: {type(exc).__name__}: {first_line(exc, 200)}"


def is_error(value: Any) -> bool:
    """Whether a report field holds a failed probe's error string."""
    return isinstance(value, str) and value.startswith("error: ")


def _probe(func: Callable[[], T]) -> T | str:
    """Run one probe; its failure becomes an error string in its own field."""
    try:
        return func()
    except Exception as exc:  # a doctor must survive the very breakage it reports
        return _error(exc)


# --- sections -------------------------------------------------------------------------------------------


def _python() -> dict[str, Any]:
    return {
        "version": _probe(platform.python_version),
        "implementation": _probe(platform.python_implementation),
        "executable": sys.executable or None,
    }


def _platform() -> dict[str, Any]:
    return {
        "system": _probe(platform.system),
        "release": _probe(platform.release),
        "machine": _probe(platform.machine),
        "description": _probe(platform.platform),
    }


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _ptm() -> dict[str, Any]:
    return {
        "version": __version__,
        "installed_version": _probe(lambda: _distribution_version("ptm")),
        "location": str(Path(__file__).resolve().parent.parent),
        "fused_resize": _probe(_fused_resize),
    }


def _fused_resize() -> bool:
    from ..images.transforms import fused_available

    return fused_available()


def _packages() -> dict[str, Any]:
    return {name: _probe(lambda name=name: _distribution_version(name)) for name in PACKAGES}  # type: ignore[misc]


def _import(name: str) -> bool:
    importlib.import_module(name)
    return True


def _imports() -> dict[str, Any]:
    # Importing torchvision also proves that its compiled operators match this torch.
    return {name: _probe(lambda name=name: _import(name)) for name in REQUIRED_IMPORTS}  # type: ignore[misc]


def _read_cpuinfo() -> str | None:
    try:
        return CPUINFO.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None  # no /proc: macOS, Windows


def _cpuinfo_fields(text: str) -> dict[str, str]:
    """The first processor's ``key : value`` lines."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the blank line ending the first processor's block
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _cpu_model(fields: dict[str, str] | None) -> str | None:
    if fields:
        for key in ("model name", "hardware", "cpu model", "processor"):
            value = fields.get(key)
            if value and not value.isdigit():  # x86's "processor" field is just an index
                return value
    return platform.processor() or None


def _cpu_flags(fields: dict[str, str] | None) -> dict[str, bool | None]:
    if not fields:
        return dict.fromkeys(CPU_FLAGS)  # unknown, not absent
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    found: dict[str, bool | None] = {name: name in flags for name in CPU_FLAGS if name != "amx"}
    found["amx"] = any(name in flags for name in AMX_FLAGS)
    return found


def _cpu_supports_bf16() -> bool:
    from ..nets.device import cpu_supports_bf16

    return cpu_supports_bf16()


def cpu_report() -> dict[str, Any]:
    """What `ptm doctor` reports about the CPU: model, cores, the flags that matter, native bf16."""
    text = _probe(_read_cpuinfo)
    fields = _probe(lambda: _cpuinfo_fields(text)) if isinstance(text, str) and not is_error(text) else None
    usable = fields if isinstance(fields, dict) else None
    report: dict[str, Any] = {
        "model": _probe(lambda: _cpu_model(usable)),
        "cores": _probe(os.cpu_count),
    }
    flags = _probe(lambda: _cpu_flags(usable))
    if isinstance(flags, dict):
        report.update(flags)
    else:
        report.update(dict.fromkeys(CPU_FLAGS, flags))
    report["bf16"] = _probe(_cpu_supports_bf16)
    return report


def _torch_info() -> dict[str, Any]:
    import torch

    return {
        "version": _probe(lambda: str(torch.__version__)),
        "threads": _probe(torch.get_num_threads),
        "interop_threads": _probe(torch.get_num_interop_threads),
        "mkldnn": _probe(lambda: bool(torch.backends.mkldnn.is_available())),  # type: ignore[no-untyped-call]
        "compiler": _probe(_cxx_compiler),
    }


def _cxx_compiler() -> str | None:
    """The C++ compiler torch.compile would build CPU kernels with ($CXX, else the usual names)."""
    named = settings.raw("CXX")
    for candidate in [named] if named else ["g++", "clang++", "c++"]:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def _cuda_devices() -> list[dict[str, Any]]:
    import torch

    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append({"index": index, "name": props.name, "total_memory": int(props.total_memory)})
    return devices


def _cuda() -> dict[str, Any]:
    import torch

    available = _probe(lambda: bool(torch.cuda.is_available()))
    return {
        "available": available,
        "version": _probe(lambda: torch.version.cuda),  # the CUDA this torch was built for; None: a CPU build
        "devices": _probe(_cuda_devices) if available is True else [],
    }


def _mps() -> dict[str, Any]:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return {
        "available": _probe(lambda: bool(backend is not None and backend.is_available())),
        "built": _probe(lambda: bool(backend is not None and backend.is_built())),
    }


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _can_write_in(directory: Path) -> bool:
    """Whether a file can really be created in ``directory`` (os.access alone lies for root and some mounts)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".ptm-doctor-", dir=directory)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def _folder_usage(directory: Path) -> tuple[int, int]:
    """(number of files, total bytes) under ``directory``."""
    count = total = 0

    def skip(_: OSError) -> None:  # an unreadable subfolder counts as empty rather than failing the probe
        return None

    for root, _, names in os.walk(directory, onerror=skip):
        for name in names:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                continue  # vanished, or a dangling link
            count += 1
    return count, total


def _cache() -> dict[str, Any]:
    from ..cache import weights

    path = weights.cache_dir()
    exists = path.is_dir()
    parent = _nearest_existing(path)
    usage = _probe(lambda: _folder_usage(path)) if exists else (0, 0)
    files, size = usage if isinstance(usage, tuple) else (usage, usage)
    return {
        "path": str(path),
        "exists": exists,
        # A missing folder only needs its nearest existing parent to be writable: ptm creates it on first use.
        "writable": _probe(lambda: _can_write_in(path if exists else parent)),
        "files": files,
        "size": size,
        "free": _probe(lambda: shutil.disk_usage(parent).free),
        "free_measured_at": str(parent),
    }


def _hub() -> dict[str, Any]:
    from .. import hub

    return {
        "dir": _probe(lambda: str(hub.hub_dir())),
        "trusted_list": _probe(lambda: str(hub.trusted_list_path())),
        "trusted": _probe(lambda: sorted(hub.trusted_names())),
        "cached_repos": _probe(lambda: [p.name for p in hub.cached_repos()]),
    }


def _catalog() -> Any:
    from ..cache.catalog import Catalog

    return Catalog.load()


def _catalog_summary(catalog: Any) -> dict[str, Any]:
    from ..cache.catalog import user_catalog_paths

    if is_error(catalog):
        return {"entries": catalog, "user_files": _probe(lambda: [str(p) for p in user_catalog_paths()])}
    return {
        "entries": len(catalog.entries()),
        "user_files": _probe(lambda: [str(p) for p in user_catalog_paths()]),
    }


def _cached_weights(catalog: Any) -> list[dict[str, Any]]:
    from ..cache import weights

    # Without a catalog the files are still listed, just not tied to entries or marked verified.
    cached = weights.list_cached(None if is_error(catalog) else catalog.entries())
    return [{"name": f.name, "size": f.size, "verified": f.verified, "entries": list(f.entries)} for f in cached]


def _mask_url(value: str) -> str:
    """Credentials out of a URL: ``user:secret@`` becomes ``***@`` and a query (``?token=...``) ``?***``."""
    parts = urlsplit(value)
    if "@" in parts.netloc:
        parts = parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1])
    if parts.query:
        parts = parts._replace(query="***")
    return urlunsplit(parts)


def _settings() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in SETTINGS:
        raw = settings.raw(name) or (settings.raw(name.lower()) if name.endswith("_PROXY") else None)
        values[name] = _mask_url(raw) if raw and name in URL_SETTINGS else raw
    for name in SECRET_SETTINGS:
        # Only whether it is there: the value is a credential.
        values[name] = "set" if settings.raw(name) else "not set"
    values["offline"] = _probe(settings.offline)
    values["invalid"] = _probe(settings.check_all)
    return values


# --- diagnosis ------------------------------------------------------------------------------------------


def _section(report: dict[str, Any], name: str) -> dict[str, Any]:
    value = report.get(name)
    return value if isinstance(value, dict) else {}


def _import_problems(report: dict[str, Any]) -> Iterator[str]:
    imports = report.get("imports")
    if not isinstance(imports, dict):
        yield f"could not check the required imports ({imports})"
        return
    for module, dist in REQUIRED_IMPORTS.items():
        result = imports.get(module)
        if result is not True:
            yield f"{module} does not import ({result}); reinstall {dist} (`pip install --force-reinstall {dist}`)"
    packages = _section(report, "packages")
    for name in ("click", "rich"):
        if name in packages and packages[name] is None:
            yield f"{name} is not installed; the ptm command needs it (`pip install {name}`)"


def _settings_problems(report: dict[str, Any]) -> Iterator[str]:
    invalid = _section(report, "settings").get("invalid")
    yield from invalid if isinstance(invalid, list) else []
    entries = _section(report, "catalog").get("entries")
    if is_error(entries):
        yield f"the model catalog does not load ({entries}); fix or unset PTM_CATALOG"


def _cache_findings(report: dict[str, Any]) -> tuple[list[str], list[str]]:
    cache = report.get("cache")
    if not isinstance(cache, dict):
        return [f"could not inspect the weights cache ({cache})"], []
    problems: list[str] = []
    warnings: list[str] = []
    offline = _section(report, "settings").get("offline") is True
    has_files = isinstance(cache.get("files"), int) and cache["files"] > 0
    if cache.get("writable") is not True:
        what = "is not writable" if cache.get("exists") else "cannot be created"
        if offline and has_files:
            warnings.append(f"the weights cache {cache['path']} {what}; ptm can only use the files already there")
        else:
            problems.append(f"the weights cache {cache['path']} {what}; set PTM_CACHE_DIR to a folder you can write to")
    free = cache.get("free")
    if isinstance(free, int) and free < LOW_DISK_BYTES:
        warnings.append(f"only {human_size(free)} free for the weights cache; large models will not fit")
    if offline and not has_files:
        warnings.append("PTM_OFFLINE=1 and the weights cache is empty: only --weights-file models can run")
    return problems, warnings


def diagnose(report: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(problems that stop ptm from running, warnings that only stop some runs)."""
    problems = [*_import_problems(report), *_settings_problems(report)]
    cache_problems, warnings = _cache_findings(report)
    torch_section = _section(report, "torch")
    if "compiler" in torch_section and torch_section["compiler"] is None:
        warnings.append("no C++ compiler found (install g++ or set CXX): classify --compile cannot run on the CPU")
    if _section(report, "ptm").get("fused_resize") is False:
        warnings.append(
            "ptm's C extension (the fused resize-and-crop) is not in use: classifiers preprocess through "
            "Pillow, with the same results, about 2 ms slower a photo; reinstall ptm where a C compiler "
            "is found (e.g. apt install gcc), or check it against this Pillow's version"
        )
    return problems + cache_problems, warnings


# --- the report -------------------------------------------------------------------------------------------


def _images() -> dict[str, Any]:
    from ..images.formats import support

    return support()


def collect() -> dict[str, Any]:
    """Everything ``ptm doctor`` reports, as plain JSON types; never raises for a broken environment."""
    sections: dict[str, Any] = {
        "python": _probe(_python),
        "platform": _probe(_platform),
        "ptm": _probe(_ptm),
        "packages": _probe(_packages),
        "imports": _probe(_imports),
    }
    torch_ok = isinstance(sections["imports"], dict) and sections["imports"].get("torch") is True
    skipped = "error: ImportError: torch does not import"
    sections["cpu"] = _probe(cpu_report)
    sections["torch"] = _probe(_torch_info) if torch_ok else skipped
    sections["cuda"] = _probe(_cuda) if torch_ok else skipped
    sections["mps"] = _probe(_mps) if torch_ok else skipped
    sections["images"] = _probe(_images)
    sections["cache"] = _probe(_cache)
    sections["hub"] = _probe(_hub)
    catalog = _probe(_catalog)
    sections["catalog"] = _probe(lambda: _catalog_summary(catalog))
    sections["weights"] = _probe(lambda: _cached_weights(catalog))
    sections["settings"] = _probe(_settings)
    found = _probe(lambda: diagnose(sections))
    # If diagnose itself failed, say so rather than claim all is well.
    problems, warnings = ([f"could not diagnose the report ({found})"], []) if isinstance(found, str) else found
    return {"ok": not problems, "problems": problems, "warnings": warnings, **sections}


def _text(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and key.rsplit(".", 1)[-1] in BYTE_KEYS:
        return human_size(value)
    if isinstance(value, list):
        return ", ".join(_text(key, v) for v in value) if value else "-"
    return str(value)


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(f"{prefix}.{key}" if prefix else str(key), inner)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for index, item in enumerate(value):
            yield from _flatten(f"{prefix}[{index}]", item)
    else:
        yield prefix, _text(prefix, value)


def _weight_rows(value: Any) -> Iterator[dict[str, str]]:
    if not isinstance(value, list):
        yield {"section": "weights", "key": "files", "value": _text("files", value)}
        return
    if not value:
        yield {"section": "weights", "key": "files", "value": "(none)"}
    for item in value:
        state = "verified" if item.get("verified") else "not verified"
        entries = ", ".join(item.get("entries") or []) or "no catalog entry"
        yield {
            "section": "weights",
            "key": str(item.get("name")),
            "value": f"{human_size(item.get('size') or 0)}, {state}, {entries}",
        }


def rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """The report as ``{"section", "key", "value"}`` rows (values as display text), summary first."""
    table = [{"section": "summary", "key": "ok", "value": _text("ok", report.get("ok"))}]
    for kind in ("problems", "warnings"):
        table.extend(
            {"section": kind, "key": str(i), "value": str(text)} for i, text in enumerate(report.get(kind) or [], 1)
        )
    for section, value in report.items():
        if section in ("ok", "problems", "warnings"):
            continue
        if section == "weights":
            table.extend(_weight_rows(value))
            continue
        flat = list(_flatten("", value)) if isinstance(value, dict) else [("", _text("", value))]
        table.extend({"section": section, "key": key or "-", "value": text} for key, text in flat)
    return table
