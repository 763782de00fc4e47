"""What ``-m`` and ``-w`` name: a catalog entry, a weights variant, or a weights file on disk.

``-w`` is read strictly: a variant name (``DEFAULT``, ``IMAGENET1K_V1``...)
always means the catalog's weights, even if a file of that name sits in the
working directory; a local file is a path, which is to say it contains a
path separator or ends in a weights suffix (``.pth``, ``.safetensors``...).
A name that is neither a known variant nor a path is refused with a message
that names both readings. Nothing here imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UnknownModel, UsageError
from .catalog import Catalog

if TYPE_CHECKING:
    from .catalog import Entry


def local_weights_file_spelling(value: str) -> bool:
    """Whether ``-w VALUE`` is spelled as a path (a separator, or a weights suffix) rather than a variant name."""
    from ..tensorio.filetypes import has_weights_suffix

    return os.sep in value or "/" in value or has_weights_suffix(value)


def local_weights_file(value: str) -> Path | None:
    """The file ``-w VALUE`` names, or None when VALUE is a variant name."""
    if not local_weights_file_spelling(value):
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        if path.is_dir():
            what = "is a folder"
        elif path.exists():
            what = "is a device or pipe, not a file ptm can seek in"
        else:
            what = "does not exist"
        raise UsageError(f"weights file {value} {what}; give the path of a .pth, .safetensors or .h5 file")
    return path


def resolve_entry(
    model: str, weights_option: str, *, task: str | None, catalog: Catalog | None = None
) -> tuple[Entry, Path | None]:
    """The catalog entry for ``-m``/``-w`` (``-m MODEL:WEIGHTS`` works too) and a local weights file, if any."""
    weights_file = local_weights_file(weights_option)
    named = None if weights_file or weights_option.upper() == "DEFAULT" else weights_option
    if ":" in model and named is not None:
        raise UsageError(f"-m {model} already names its weights; drop -w {weights_option}")
    try:
        entry = (catalog or Catalog.load()).resolve(model, named, task=task)
    except UnknownModel as exc:
        if named is not None and Path(named).is_file():
            raise UsageError(
                f"-w {named} is neither a weights variant of {model} nor a path; "
                f"for the file in this folder write -w ./{named}"
            ) from exc
        raise
    return entry, weights_file


def class_names(model: str, weights: str = "DEFAULT") -> list[str]:
    """The class names of a catalog model (placeholders left out), sorted; [] when it has no labels."""
    from .catalog import is_class, load_labels

    entry, _ = resolve_entry(model, weights, task=None)
    return sorted({label for label in load_labels(entry) or [] if is_class(label)})


def catalog_entry(name: str, weights_name: str | None = None) -> Entry:
    """The catalog entry ``NAME`` (its default weights) or ``MODEL:WEIGHTS`` names, for the cache commands."""
    return Catalog.load().resolve(name, weights_name)


def weights_file_or_cached(target: str) -> Path:
    """A weights FILE (anything spelled as a path), or the cached file of a catalog NAME.

    As with ``-w``, a name always means the catalog, even when a file of that
    name sits in the working directory; such a file is read only when no
    catalog entry has the name.
    """
    from . import weights

    local = local_weights_file(target)  # a path that does not exist fails here, naming it
    if local is not None:
        return local
    try:
        entry = catalog_entry(target)
    except UnknownModel:
        if Path(target).is_file():
            return Path(target)
        raise
    cached = weights.cached_path(entry)
    if not cached.is_file():
        raise UsageError(f"{target} is not downloaded yet; run `ptm weights download {target}` first")
    return cached
