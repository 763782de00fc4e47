"""The cache's pins and stamps store, ``ptm-pins.json``: read whatever is there, written whole under a lock.

The format and what pins and stamps mean are described in :mod:`ptm_cli.cache.weights`,
which is the only user of this module. A missing, unreadable or damaged
store reads as empty; an update re-reads and merges under the store's lock
and replaces the file atomically.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..runtime import fsutil
from .download import say

PINS_FILE = "ptm-pins.json"
PINS_FORMAT = "ptm-pins/1"

_FULL_HEX = re.compile(r"[0-9a-f]{64}")


def empty_store() -> dict[str, Any]:
    return {"format": PINS_FORMAT, "pins": {}, "stamps": {}}


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and _FULL_HEX.fullmatch(value) is not None


def _valid_pin(value: Any) -> bool:
    return isinstance(value, dict) and _is_digest(value.get("sha256"))


def _valid_stamp(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and all(type(value.get(k)) is int for k in ("size", "mtime_ns", "ino"))
        and _is_digest(value.get("sha256"))
    )


def load_store(directory: Path) -> dict[str, Any]:
    """The pins file's contents; missing, unreadable or damaged reads as empty."""
    try:
        raw = json.loads((directory / PINS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return empty_store()
    store = empty_store()
    if not isinstance(raw, dict):
        return store
    for section, valid in (("pins", _valid_pin), ("stamps", _valid_stamp)):
        items = raw.get(section)
        if isinstance(items, dict):
            store[section] = {k: v for k, v in items.items() if isinstance(k, str) and valid(v)}
    return store


def update_store(directory: Path, change: Callable[[dict[str, Any]], None]) -> bool:
    """Apply ``change`` to the pins file: re-read and merged under its lock, replaced atomically.

    Returns False when the cache cannot be written (a read-only shared cache
    still loads; it just re-hashes every time).
    """
    target = directory / PINS_FILE
    try:
        with fsutil.locked(target, lambda: say(f"waiting for another ptm process to finish with {target.name}...")):
            store = load_store(directory)
            change(store)
            text = json.dumps(store, indent=1, sort_keys=True) + "\n"
            fsutil.write_atomic(target, text.encode("utf-8"), replace=True)
    except OSError:
        return False
    return True


def stamp_of(st: os.stat_result, digest: str) -> dict[str, Any]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "sha256": digest}


def stamp_matches(stamp: Mapping[str, Any] | None, st: os.stat_result) -> bool:
    if not stamp:
        return False
    return (stamp["size"], stamp["mtime_ns"], stamp["ino"]) == (st.st_size, st.st_mtime_ns, st.st_ino)
