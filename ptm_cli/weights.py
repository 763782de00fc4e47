"""The weights cache: where catalog weights files live, how they arrive, and whether they are the right ones.

Layout
    The cache is ``PTM_CACHE_DIR`` when set, else torch's own checkpoint folder
    ``$TORCH_HOME/hub/checkpoints`` (see :mod:`ptm_cli.settings`), so files
    torchvision already downloaded are reused and vice versa. A weights file
    lives there under its catalog ``file_name``.

Pins and stamps (``ptm-pins.json`` in the cache folder)
    ``{"format": "ptm-pins/1", "pins": {KEY: {"sha256", "file_name", "ref"}},
    "stamps": {FILE_NAME: {"size", "mtime_ns", "ino", "sha256"}}}``.

    * A *pin* is the full sha256 of an upstream file whose catalog entry gives
      only a prefix (torchvision's 8 hex digits) or no hash at all. It is
      recorded the first time the file verifies (trust on first use) and checked
      ever after. Pins are keyed by the entry's URL (``ref:MODEL:WEIGHTS`` when
      it has none) because they describe the upstream file, not the local copy:
      removing the local file keeps its pin unless asked otherwise.
    * A *stamp* records that the local file with this size, mtime and inode had
      this sha256, so loading a 170 MB file does not re-hash it every time. A
      file whose stat no longer matches its stamp is re-hashed. ``verify``
      always re-hashes and drops the stamp of a file that does not match.

    The pins file is re-read and merged under a lock and replaced atomically, so
    concurrent writers never corrupt it (with no lock an update may be lost,
    which only costs a later re-hash). A damaged pins file reads as empty.

Downloads
    Through :mod:`ptm_cli.download` (streamed, hashed, retried, atomic), under a
    per-file lock so parallel processes download once; correctness never
    depends on the lock. ``PTM_WEIGHTS_MIRROR`` replaces the catalog URL by
    ``MIRROR/file_name``; a ``file://`` mirror (a shared folder) is allowed even
    with ``PTM_OFFLINE=1``, since it is not the network.

Mismatch policy
    A cached file whose sha256 differs from the expected one is never deleted
    behind the user's back (it may be a file they put there): ptm raises
    ``HashMismatch`` naming the file and the command that removes it.

Loading
    :func:`load_weights` reads the verified file through
    :func:`ptm_cli.tensorio.load_state_dict`, which never runs code.

Importing this module imports neither torch nor rich.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import fsutil, settings
from .download import digest_ok, download, say, short
from .errors import DamagedWeights, HashMismatch, OfflineError, WeightsError
from .tensorio import load_state_dict

if TYPE_CHECKING:
    import torch

    from .catalog import Entry

PINS_FILE = "ptm-pins.json"
PINS_FORMAT = "ptm-pins/1"
# A temporary file untouched this long (and not under a held lock) is an orphan.
ORPHAN_AGE = 3600.0

_FULL_HEX = re.compile(r"[0-9a-f]{64}")


# --- where things live --------------------------------------------------------


def cache_dir() -> Path:
    """The folder weights files are kept in (created only when something is written)."""
    return settings.cache_dir()


def cached_path(entry: Entry) -> Path:
    """Where ``entry``'s file lives in the cache, whether or not it is there."""
    name = entry.file_name
    if not name:
        raise WeightsError(f"{entry.ref} has neither a url nor a file_name in its catalog entry; add one of them")
    if "/" in name or os.sep in name or name.startswith("."):
        raise WeightsError(f"{entry.ref}: file_name {name!r} must be a plain file name; fix its catalog entry")
    return cache_dir() / name


def is_cached(entry: Entry) -> bool:
    """Whether ``entry``'s file is in the cache (not checked against its hash)."""
    if not entry.file_name or "/" in entry.file_name or entry.file_name.startswith("."):
        return False
    return (cache_dir() / entry.file_name).is_file()


def download_url(entry: Entry) -> str | None:
    """The URL ``entry`` is fetched from: ``PTM_WEIGHTS_MIRROR/file_name`` when a mirror is set."""
    mirror = settings.weights_mirror()
    if mirror and entry.file_name:
        return f"{mirror}/{entry.file_name}"
    return entry.url


def is_cache_bookkeeping(name: str) -> bool:
    """The cache's own files: the pins store, locks and partial downloads (never weights)."""
    return name.startswith(".") or name.endswith((fsutil.PART_SUFFIX, fsutil.LOCK_SUFFIX)) or name == PINS_FILE


# --- small helpers ----------------------------------------------------------------


def _cache_write_error(directory: Path, exc: OSError) -> WeightsError:
    reason = exc.strerror or type(exc).__name__
    return WeightsError(
        f"cannot write to the weights cache {directory} ({reason}); "
        "set PTM_CACHE_DIR to a folder you can write to, with enough free space"
    )


def _ensure_writable_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cache_write_error(directory, exc) from None


def _hash_file(path: Path) -> tuple[str, os.stat_result | None]:
    """The sha256 of ``path`` and, if the file did not change while read, its stat (for a stamp)."""
    hasher = hashlib.sha256()
    with path.open("rb") as stream:
        before = os.fstat(stream.fileno())
        while chunk := stream.read(settings.tuning.chunk_size):
            hasher.update(chunk)
        after = os.fstat(stream.fileno())
    unchanged = (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
    return hasher.hexdigest(), after if unchanged else None


def _hash_cached(path: Path) -> tuple[str, os.stat_result | None]:
    try:
        return _hash_file(path)
    except OSError as exc:
        raise WeightsError(f"cannot read {path} ({exc.strerror}); check its permissions") from None


def _part_target(name: str) -> str | None:
    """The file a temporary ``.{target}.{random}.part`` file was being written for."""
    if not (name.startswith(".") and name.endswith(fsutil.PART_SUFFIX)):
        return None
    stem = name[1 : -len(fsutil.PART_SUFFIX)]
    target, dot, _ = stem.rpartition(".")
    return target if dot and target else None


def _locked(target: Path) -> Any:
    return fsutil.locked(target, lambda: say(f"waiting for another ptm process to finish with {target.name}..."))


# --- the pins file ---------------------------------------------------------------


def _pin_key(entry: Entry) -> str:
    return entry.url or f"ref:{entry.ref}"


def _empty_store() -> dict[str, Any]:
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


def _load_store(directory: Path) -> dict[str, Any]:
    """The pins file's contents; missing, unreadable or damaged reads as empty."""
    try:
        raw = json.loads((directory / PINS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return _empty_store()
    store = _empty_store()
    if not isinstance(raw, dict):
        return store
    for section, valid in (("pins", _valid_pin), ("stamps", _valid_stamp)):
        items = raw.get(section)
        if isinstance(items, dict):
            store[section] = {k: v for k, v in items.items() if isinstance(k, str) and valid(v)}
    return store


def _update_store(directory: Path, change: Callable[[dict[str, Any]], None]) -> bool:
    """Apply ``change`` to the pins file: re-read and merged under its lock, replaced atomically.

    Returns False when the cache cannot be written (a read-only shared cache
    still loads; it just re-hashes every time).
    """
    target = directory / PINS_FILE
    try:
        with _locked(target):
            store = _load_store(directory)
            change(store)
            text = json.dumps(store, indent=1, sort_keys=True) + "\n"
            fsutil.write_atomic(target, text.encode("utf-8"), replace=True)
    except OSError:
        return False
    return True


def _stamp_of(st: os.stat_result, digest: str) -> dict[str, Any]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "sha256": digest}


def _stamp_matches(stamp: Mapping[str, Any] | None, st: os.stat_result) -> bool:
    if not stamp:
        return False
    return (stamp["size"], stamp["mtime_ns"], stamp["ino"]) == (st.st_size, st.st_mtime_ns, st.st_ino)


def _expected(entry: Entry, store: Mapping[str, Any]) -> tuple[str | None, str]:
    claim = (entry.sha256 or "").lower()
    if entry.full_sha256:
        return claim, claim
    pin = store["pins"].get(_pin_key(entry))
    # A pin that contradicts the catalog's prefix is stale (the catalog moved on): ignore it.
    if pin and pin["sha256"].startswith(claim):
        return pin["sha256"], claim
    return None, claim


def expected_digest(entry: Entry) -> tuple[str | None, str]:
    """``(full, claim)``: the full sha256 known (catalog or pin) and the catalog's hash or prefix ('' if none)."""
    return _expected(entry, _load_store(cache_dir()))


def _record_verified(entry: Entry, path: Path, digest: str, st: os.stat_result | None) -> None:
    """Stamp ``path`` as having ``digest`` and pin the digest if the catalog lacks a full one."""
    pin = None if entry.full_sha256 else {"sha256": digest, "file_name": path.name, "ref": entry.ref}

    def change(store: dict[str, Any]) -> None:
        if st is not None:
            store["stamps"][path.name] = _stamp_of(st, digest)
        if pin is not None:
            store["pins"][_pin_key(entry)] = pin

    _update_store(path.parent, change)


def _drop_stamp(path: Path) -> None:
    if path.name in _load_store(path.parent)["stamps"]:
        _update_store(path.parent, lambda store: store["stamps"].pop(path.name, None))


# --- the cache's public operations ---------------------------------------------------------


def _import_advice(entry: Entry) -> str:
    mirror = (
        "check that PTM_WEIGHTS_MIRROR points to a server that has it"
        if settings.weights_mirror()
        else "set PTM_WEIGHTS_MIRROR to a server that has it"
    )
    return (
        "on a machine without internet, fetch the file elsewhere and run "
        f"`ptm weights import {entry.ref} FILE`, or {mirror}"
    )


def _mismatch_in_cache(entry: Entry, path: Path, digest: str, expected: str, pinned: bool) -> HashMismatch:
    source = "pinned when it was first verified" if pinned else "from the catalog"
    return HashMismatch(
        f"{path} has sha256 {short(digest)} but {entry.ref} expects {short(expected)} ({source}); "
        f"run `ptm weights rm {entry.ref}` and try again to download it afresh, "
        f"or `ptm weights import {entry.ref} FILE` with a good copy"
    )


def _accept_cached(entry: Entry, path: Path) -> Path:
    """Return ``path`` if it holds ``entry``'s file (stamp or fresh hash), else raise HashMismatch."""
    store = _load_store(path.parent)
    full, claim = _expected(entry, store)
    expected = full or claim
    stamp = store["stamps"].get(path.name)
    st = path.stat()
    if stamp is not None and _stamp_matches(stamp, st) and digest_ok(stamp["sha256"], expected):
        if full is None:  # the pin went missing (damaged pins file): restore it from the stamp
            _record_verified(entry, path, stamp["sha256"], None)
        return path
    digest, st_now = _hash_cached(path)
    if not digest_ok(digest, expected):
        _drop_stamp(path)
        raise _mismatch_in_cache(entry, path, digest, expected, pinned=full is not None and full != claim)
    _record_verified(entry, path, digest, st_now)
    return path


def ensure_weights(entry: Entry, *, progress: bool = True) -> Path:
    """The verified local file for ``entry``, downloading it first if it is not cached."""
    path = cached_path(entry)
    if path.is_file():
        return _accept_cached(entry, path)
    url = download_url(entry)
    if settings.offline() and not (url or "").startswith("file:"):
        raise OfflineError(
            f"{path.name} is not in the weights cache ({path}) and PTM_OFFLINE is set; run "
            f"`ptm weights import {entry.ref} FILE` with a copy of the file, or unset PTM_OFFLINE to download it"
        )
    if not url:
        raise WeightsError(
            f"{path.name} is not in the weights cache ({path}) and {entry.ref} has no download url; "
            f"run `ptm weights import {entry.ref} FILE` with a copy of the file"
        )
    _ensure_writable_dir(path.parent)
    with _locked(path):
        if path.is_file():  # another process finished the download while we waited
            return _accept_cached(entry, path)
        full, claim = expected_digest(entry)
        pinned = full is not None and full != claim
        fetched = download(
            url,
            path,
            expected=full or claim or None,
            expected_from="the sha256 pinned at its first download was" if pinned else "the catalog expects",
            progress=progress,
            advice=_import_advice(entry),
            write_error=_cache_write_error,
        )
        _record_verified(entry, path, fetched.sha256, fetched.stat)
    return path


def load_weights(entry: Entry, *, progress: bool = True) -> dict[str, torch.Tensor]:
    """``entry``'s tensors from its verified cached file (downloaded first if needed)."""
    path = ensure_weights(entry, progress=progress)
    try:
        return load_state_dict(path)
    except DamagedWeights as exc:
        raise DamagedWeights(
            f"{path} is damaged ({exc.detail}); delete it with `ptm weights rm {entry.ref}` and download it again",
            path=path,
            detail=exc.detail,
        ) from None


def import_weights(entry: Entry, src: Path) -> Path:
    """Copy a weights file obtained elsewhere into the cache, after checking its sha256."""
    src = Path(src).expanduser()
    if not src.is_file():
        raise WeightsError(f"cannot import {src}: there is no such file; check the path")
    dest = cached_path(entry)
    full, claim = expected_digest(entry)
    expected = full or claim
    if dest.is_file() and dest.samefile(src):
        return _accept_cached(entry, dest)
    _ensure_writable_dir(dest.parent)
    hasher = hashlib.sha256()
    with _locked(dest):
        try:
            staged = fsutil.StagedFile(dest)
        except OSError as exc:
            raise _cache_write_error(dest.parent, exc) from None
        with staged:
            try:
                source = src.open("rb")
            except OSError as exc:
                raise WeightsError(f"cannot read {src} ({exc.strerror}); check its permissions") from None
            with source:
                while True:
                    try:
                        chunk = source.read(settings.tuning.chunk_size)
                    except OSError as exc:
                        raise WeightsError(f"cannot read {src} ({exc.strerror}); check its permissions") from None
                    if not chunk:
                        break
                    try:
                        staged.stream.write(chunk)
                    except OSError as exc:
                        raise _cache_write_error(dest.parent, exc) from None
                    hasher.update(chunk)
            digest = hasher.hexdigest()
            if not digest_ok(digest, expected):
                raise HashMismatch(
                    f"{src} has sha256 {short(digest)} but {entry.ref} expects {short(expected)}; "
                    f"nothing was copied, so check that this is the right file for {entry.ref}"
                )
            try:
                st = staged.finish()
                staged.commit(replace=True)
            except OSError as exc:
                raise _cache_write_error(dest.parent, exc) from None
    _record_verified(entry, dest, digest, st)
    return dest


@dataclass(frozen=True)
class VerifyResult:
    """What ``verify`` found for one entry."""

    ref: str
    status: str  # "ok", "mismatch", "missing" or "unpinned" (no hash known to compare with)
    path: Path
    digest: str | None  # the file's sha256; None when missing
    expected: str | None  # the full sha256 or prefix it should have; None when none is known

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def verify(entry: Entry) -> VerifyResult:
    """Re-hash ``entry``'s cached file and compare it with the catalog hash or pin."""
    path = cached_path(entry)
    full, claim = expected_digest(entry)
    expected = full or claim or None
    if not path.is_file():
        return VerifyResult(entry.ref, "missing", path, None, expected)
    digest, st = _hash_cached(path)
    if expected is None:
        return VerifyResult(entry.ref, "unpinned", path, digest, None)
    if not digest_ok(digest, expected):
        # The stamp may still match the stat (bit rot, an edit that kept mtime): drop it so loads re-hash.
        _drop_stamp(path)
        return VerifyResult(entry.ref, "mismatch", path, digest, expected)
    _record_verified(entry, path, digest, st)
    return VerifyResult(entry.ref, "ok", path, digest, expected)


@dataclass(frozen=True)
class CachedFile:
    """One weights file in the cache."""

    name: str
    path: Path
    size: int
    entries: tuple[str, ...]  # refs (model:weights) of the catalog entries whose file this is
    verified: bool  # stamped as matching its expected sha256 and unchanged since (no hashing done)
    sha256: str | None  # from the stamp, when verified


def list_cached(entries: Iterable[Entry] | None = None) -> list[CachedFile]:
    """The weights files in the cache, with the entries pointing at them and whether they are verified."""
    directory = cache_dir()
    by_name: dict[str, list[Entry]] = {}
    for entry in entries or ():
        if entry.file_name:
            by_name.setdefault(entry.file_name, []).append(entry)
    store = _load_store(directory)
    try:
        children = sorted(directory.iterdir())
    except OSError:
        return []
    files = []
    for path in children:
        if is_cache_bookkeeping(path.name) or not path.is_file():
            continue
        st = path.stat()
        owners = by_name.get(path.name, [])
        stamp = store["stamps"].get(path.name)
        wanted = [full or claim for full, claim in (_expected(e, store) for e in owners)]
        verified = _stamp_matches(stamp, st) and all(digest_ok(stamp["sha256"], w) for w in wanted)
        files.append(
            CachedFile(
                name=path.name,
                path=path,
                size=st.st_size,
                entries=tuple(e.ref for e in owners),
                verified=verified,
                sha256=stamp["sha256"] if verified else None,
            )
        )
    return files


def remove(entry: Entry, *, forget_pin: bool = False) -> bool:
    """Delete ``entry``'s cached file and its stamp; True if a file was deleted.

    The pin stays (it describes the upstream file, and guards the next
    download) unless ``forget_pin`` is set, for when upstream really changed.
    """
    path = cached_path(entry)
    try:
        path.unlink()
        removed = True
    except FileNotFoundError:
        removed = False
    except OSError as exc:
        raise WeightsError(f"cannot delete {path} ({exc.strerror}); check the folder's permissions") from None
    key = _pin_key(entry)

    def change(store: dict[str, Any]) -> None:
        store["stamps"].pop(path.name, None)
        if forget_pin:
            store["pins"].pop(key, None)

    store = _load_store(path.parent)
    if path.name in store["stamps"] or (forget_pin and key in store["pins"]):
        _update_store(path.parent, change)
    return removed


def orphans(max_age: float = ORPHAN_AGE) -> list[Path]:
    """Temporary ``.part`` files whose writer is gone: untouched for ``max_age`` s and not under a held lock."""
    directory = cache_dir()
    try:
        children = sorted(directory.iterdir())
    except OSError:
        return []
    now = time.time()
    found = []
    for path in children:
        target = _part_target(path.name)
        if target is None:
            continue
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue  # finished (renamed) or removed meanwhile
        # An active download writes at least every timeout seconds, and holds its lock.
        if age >= max_age and not fsutil.lock_is_held(directory / target):
            found.append(path)
    return found


def prune(max_age: float = ORPHAN_AGE) -> list[Path]:
    """Delete ``orphans(max_age)``; return the files removed."""
    removed = []
    for path in orphans(max_age):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise WeightsError(f"cannot delete {path} ({exc.strerror}); check the folder's permissions") from None
        removed.append(path)
    return removed

