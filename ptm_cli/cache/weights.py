"""The weights cache: where catalog weights files live, how they arrive, and whether they are the right ones.

Layout
    The cache is ``PTM_CACHE_DIR`` when set, else torch's own checkpoint folder
    ``$TORCH_HOME/hub/checkpoints`` (see :mod:`ptm_cli.settings`), so files
    torchvision already downloaded are reused and vice versa. A weights file
    lives there under its catalog ``file_name``.

Pins and stamps (``ptm-pins.json`` in the cache folder, kept by :mod:`ptm_cli.cache.pins`)
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
    Through :mod:`ptm_cli.cache.download` (streamed, hashed, retried, atomic), under a
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
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import settings
from ..errors import DamagedWeights, HashMismatch, OfflineError, WeightsError
from ..runtime import fsutil
from ..tensorio import load_state_dict
from .download import digest_ok, download, say, short
from .pins import PINS_FILE
from .pins import load_store as _load_store
from .pins import stamp_matches as _stamp_matches
from .pins import stamp_of as _stamp_of
from .pins import update_store as _update_store

if TYPE_CHECKING:
    import torch

    from .catalog import Entry

# A temporary file untouched this long (and not under a held lock) is an orphan.
ORPHAN_AGE = 3600.0

# --- where things live --------------------------------------------------------


def cache_dir() -> Path:
    """The folder weights files are kept in (created only when something is written)."""
    return settings.cache_dir()


def file_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a weights file's name in the cache (None when it can).

    A name from a catalog URL must stay one plain file in the cache folder and
    never be one of the cache's own files: with ``ptm-pins.json``, a lock or a
    partial file's name, ``ptm weights rm`` would delete the pins store.
    """
    if not name or "/" in name or "\\" in name or os.sep in name or "\x00" in name or name.startswith("."):
        return "must be a plain file name"
    if is_cache_bookkeeping(name) or name.lower() == PINS_FILE:
        return f"is reserved for the cache's own files ({PINS_FILE}, *{fsutil.LOCK_SUFFIX}, *{fsutil.PART_SUFFIX})"
    return None


def cached_path(entry: Entry) -> Path:
    """Where ``entry``'s file lives in the cache, whether or not it is there."""
    name = entry.file_name
    if not name:
        raise WeightsError(f"{entry.ref} has neither a url nor a file_name in its catalog entry; add one of them")
    problem = file_name_problem(name)
    if problem:
        raise WeightsError(f"{entry.ref}: its file name {name!r} {problem}; give its catalog entry another file_name")
    return cache_dir() / name


def is_cached(entry: Entry) -> bool:
    """Whether ``entry``'s file is in the cache (not checked against its hash)."""
    if not entry.file_name or file_name_problem(entry.file_name):
        return False
    return (cache_dir() / entry.file_name).is_file()


def max_download_bytes(entry: Entry) -> int:
    """The largest body a download of ``entry`` may have: a multiple of its catalog size, else a fixed cap."""
    tuning = settings.tuning
    if entry.size_mb and entry.size_mb > 0:
        return int(entry.size_mb * (1 << 20) * tuning.download_size_factor) + tuning.download_size_slack
    return tuning.max_download_bytes


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


def _gone(path: Path) -> WeightsError:
    return WeightsError(
        f"{path} was removed while ptm was using it (by `ptm weights rm` or another process); "
        "run the command again to download it afresh"
    )


def _hash_cached(path: Path) -> tuple[str, os.stat_result | None]:
    try:
        return _hash_file(path)
    except FileNotFoundError:
        raise _gone(path) from None
    except OSError as exc:
        raise WeightsError(f"cannot read {path} ({exc.strerror}); check its permissions") from None


def _not_a_file(path: Path) -> WeightsError:
    kind = "a folder" if path.is_dir() else "not a regular file"
    return WeightsError(
        f"{path} is {kind}, where the weights cache keeps a weights file; remove it and run the command again"
    )


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


def forget_pin_advice(entry: Entry) -> str:
    return (
        f"if the file really changed upstream (or a bad first download was pinned), "
        f"run `ptm weights rm {entry.ref} --forget-pin` and download it again"
    )


def _mismatch_in_cache(entry: Entry, path: Path, digest: str, expected: str, pinned: bool) -> HashMismatch:
    if pinned:
        return HashMismatch(
            f"{path} has sha256 {short(digest)} but {entry.ref} expects {short(expected)} (pinned when it was "
            f"first verified); {forget_pin_advice(entry)}"
        )
    return HashMismatch(
        f"{path} has sha256 {short(digest)} but {entry.ref} expects {short(expected)} (from the catalog); "
        f"run `ptm weights rm {entry.ref}` and try again to download it afresh, "
        f"or `ptm weights import {entry.ref} FILE` with a good copy"
    )


def _accept_cached(entry: Entry, path: Path) -> Path:
    """Return ``path`` if it holds ``entry``'s file (stamp or fresh hash), else raise HashMismatch."""
    store = _load_store(path.parent)
    full, claim = _expected(entry, store)
    expected = full or claim
    stamp = store["stamps"].get(path.name)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise _gone(path) from None
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


Validator = Callable[[Path], None]
"""Raises a ``PtmError`` when a file is not usable weights for the entry (see ``ensure_weights``)."""


def fetch(entry: Entry, *, progress: bool = True, validate: Validator | None = None) -> Path:
    """The verified local file for ``entry``, downloading it first if it is not cached.

    When no full sha256 is known for the entry (neither in the catalog nor
    pinned), ``validate(path)`` sees a download before it is saved and pinned,
    so a first download that is an error page or a cut file cannot be pinned
    for good. The cache cannot build models itself; :mod:`ptm_cli.nets.architectures`
    passes a validator that checks the file's keys and shapes against the
    entry's architecture.
    """
    path = cached_path(entry)
    if path.is_file():
        return _accept_cached(entry, path)
    if os.path.lexists(path):
        raise _not_a_file(path)
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
            max_bytes=max_download_bytes(entry),
            check=validate if full is None else None,
            mismatch_advice=forget_pin_advice(entry) if pinned else None,
        )
        _record_verified(entry, path, fetched.sha256, fetched.stat)
    return path


def load_weights(entry: Entry, *, progress: bool = True, validate: Validator | None = None) -> dict[str, torch.Tensor]:
    """``entry``'s tensors from its verified cached file (downloaded first if needed)."""
    path = fetch(entry, progress=progress, validate=validate)
    try:
        return load_state_dict(path)
    except WeightsError as exc:
        if not os.path.lexists(path):
            raise _gone(path) from None
        if not isinstance(exc, DamagedWeights):
            raise
        raise DamagedWeights(
            f"{path} is damaged ({exc.detail}); delete it with `ptm weights rm {entry.ref}` and download it again",
            path=path,
            detail=exc.detail,
        ) from None


def _import_source_problem(src: Path) -> str | None:
    """Why ``src`` cannot be imported: it must be a file (or a pipe, which the size cap bounds)."""
    try:
        mode = os.stat(src).st_mode
    except FileNotFoundError:
        return "there is no such file; check the path"
    except OSError as exc:
        return f"{exc.strerror or exc}; check the path and its permissions"
    if stat.S_ISDIR(mode):
        return "it is a folder; give the path of a weights file"
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        return "it is a device or socket, not a weights file; give the path of a weights file"
    return None


def import_weights(entry: Entry, src: Path, *, validate: Validator | None = None) -> Path:
    """Copy a weights file obtained elsewhere into the cache, after checking its sha256.

    When no full sha256 is known, ``validate`` checks the copy before it is
    saved and pinned (as for a download); at most ``max_download_bytes`` are read.
    """
    src = Path(src).expanduser()
    problem = _import_source_problem(src)
    if problem:
        raise WeightsError(f"cannot import {src}: {problem}")
    dest = cached_path(entry)
    if os.path.lexists(dest) and not os.path.isfile(dest):
        raise _not_a_file(dest)
    full, claim = expected_digest(entry)
    expected = full or claim
    pinned = full is not None and full != claim
    limit = max_download_bytes(entry)
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
            copied = 0
            with source:
                while True:
                    try:
                        chunk = source.read(settings.tuning.chunk_size)
                    except OSError as exc:
                        raise WeightsError(f"cannot read {src} ({exc.strerror}); check its permissions") from None
                    if not chunk:
                        break
                    copied += len(chunk)
                    if copied > limit:
                        raise WeightsError(
                            f"cannot import {src}: it is larger than {limit:,} bytes, far more than "
                            f"{entry.ref}'s file should be; check that this is the right file"
                        )
                    try:
                        staged.stream.write(chunk)
                    except OSError as exc:
                        raise _cache_write_error(dest.parent, exc) from None
                    hasher.update(chunk)
            digest = hasher.hexdigest()
            if not digest_ok(digest, expected):
                advice = f"; or, {forget_pin_advice(entry).replace('download it again', 'import it again')}"
                raise HashMismatch(
                    f"{src} has sha256 {short(digest)} but {entry.ref} expects {short(expected)}"
                    f"{' (pinned when it was first verified)' if pinned else ''}; "
                    f"nothing was copied, so check that this is the right file for {entry.ref}"
                    f"{advice if pinned else ''}"
                )
            try:
                staged.stream.flush()
            except OSError as exc:
                raise _cache_write_error(dest.parent, exc) from None
            if validate is not None and full is None:
                validate(staged.path)
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
    """Files a finished or killed process left: ``.part`` files whose writer is gone, and idle ``.lock`` files.

    Either must be untouched for ``max_age`` s and its lock not held now. A
    lock file is only a name to ``flock``; one removed while a process waits
    on it costs at most a second download, never a wrong file.
    """
    directory = cache_dir()
    try:
        children = sorted(directory.iterdir())
    except OSError:
        return []
    now = time.time()
    found = []
    for path in children:
        target = _part_target(path.name)
        if target is None and path.name.endswith(fsutil.LOCK_SUFFIX) and not path.name.startswith("."):
            target = path.name[: -len(fsutil.LOCK_SUFFIX)]
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
