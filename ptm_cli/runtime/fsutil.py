"""Files written whole or not at all, their modes, and advisory locks.

Every file ptm creates (weights in the cache, the pins store, converted
weights, translated images) is written through :class:`StagedFile`: a
temporary file beside the destination, flushed and fsynced, then moved into
place with one rename. A crash, a full disk or Ctrl-C never leaves a partial
file under the real name, and each writer has its own temporary file, so
concurrent writers never corrupt each other.

Modes: a new file gets the mode an ordinary ``open()`` would give it (0666
less the umask); a file that replaces another keeps the old one's mode.

Publishing (:func:`publish`) never replaces anything but a regular file: a
directory, a symlink, a device or a FIFO in the way is refused, so
``--force`` can never turn ``/dev/null`` into a regular file. Without
``replace`` the rename cannot overwrite a file that appeared meanwhile (a
hard link is made instead, which fails if the name exists).

Locks are ``flock`` on ``NAME.lock`` beside the file; a lock that cannot be had
(a read-only folder, a network file system without locks) is skipped, because
correctness never depends on it, only the wasted work of a second download.

Importing this module imports nothing beyond the standard library.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, TracebackType
from typing import IO

from .. import settings

fcntl: ModuleType | None
try:  # POSIX only; elsewhere locks are no-ops, which correctness allows
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None

PART_SUFFIX = ".part"
LOCK_SUFFIX = ".lock"
_UMASK_LOCK = threading.Lock()


def folder_of(path: Path) -> Path:
    """The folder a relative or absolute file name lives in (``.`` for a bare name)."""
    return path.parent if str(path.parent) else Path(".")


def current_umask() -> int:
    """The process umask, read without changing it where the system allows."""
    # This thread's: a warm server runs each client's command in a thread with the client's umask.
    with contextlib.suppress(OSError, ValueError), open("/proc/thread-self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file."""
    return 0o666 & ~current_umask()


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable; not every platform can open a folder."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_regular_or_absent(path: Path) -> bool:
    """Whether ``path`` is a regular file (not through a symlink) or nothing at all."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return True
    return stat.S_ISREG(mode)


def is_stream_target(path: Path) -> bool:
    """A character device or FIFO: written through, never replaced (``-o /dev/null``, ``-o >(gzip)``)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


class NotReplaceable(OSError):
    """Something other than a regular file is where a file was to be published."""


def publish(tmp: Path, dest: Path, *, replace: bool) -> None:
    """Move the finished ``tmp`` to ``dest``.

    ``replace=False`` raises ``FileExistsError`` when ``dest`` exists, with no
    window between check and rename. ``replace=True`` replaces a regular file
    only; anything else raises :class:`NotReplaceable`.
    """
    if not is_regular_or_absent(dest):
        raise NotReplaceable(f"{dest} is not a regular file")
    if replace:
        os.replace(tmp, dest)
        return
    try:
        os.link(tmp, dest)  # fails if dest exists
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        if os.path.lexists(dest):
            raise FileExistsError(f"{dest} exists") from None
        os.replace(tmp, dest)
        return
    os.unlink(tmp)


class StagedFile:
    """A temporary file beside ``dest`` that becomes ``dest`` only when committed.

    Use as a context manager; leaving the block without :meth:`commit`
    (an error, Ctrl-C) deletes the temporary file. ``stream`` is open for
    binary writing; :meth:`finish` flushes, fsyncs and sets the mode.
    """

    def __init__(self, dest: Path):
        self.dest = Path(dest)
        fd, name = tempfile.mkstemp(dir=folder_of(self.dest), prefix=f".{self.dest.name}.", suffix=PART_SUFFIX)
        self.path = Path(name)
        self.stream: IO[bytes] = os.fdopen(fd, "wb")
        self.committed = False
        self.stat: os.stat_result | None = None

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not self.stream.closed:
            with contextlib.suppress(OSError):
                self.stream.close()
        if not self.committed:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def finish(self, mode: int | None = None) -> os.stat_result:
        """Flush to disk and close; returns the file's stat (a rename keeps size, mtime and inode)."""
        if not self.stream.closed:
            self.stream.flush()
            fd = self.stream.fileno()
        else:
            fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fchmod(fd, self._mode() if mode is None else mode)
            os.fsync(fd)
            self.stat = os.fstat(fd)
        finally:
            if self.stream.closed:
                os.close(fd)
            else:
                self.stream.close()
        return self.stat

    def _mode(self) -> int:
        # A replaced file keeps its mode; a new one gets what open() would give it.
        try:
            st = os.lstat(self.dest)
        except OSError:
            return new_file_mode()
        return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else new_file_mode()

    def commit(self, *, replace: bool = True) -> None:
        publish(self.path, self.dest, replace=replace)
        self.committed = True
        fsync_dir(folder_of(self.dest))


def write_atomic(dest: Path, data: bytes, *, replace: bool) -> None:
    """Write ``data`` to ``dest`` whole or not at all (see :func:`publish` for ``replace``)."""
    with StagedFile(dest) as staged:
        staged.stream.write(data)
        staged.finish()
        staged.commit(replace=replace)


def write_atomic_with(dest: Path, write: Callable[[Path], None], *, replace: bool) -> None:
    """Let ``write(path)`` fill a temporary file (for writers that want a path), then publish it."""
    with StagedFile(dest) as staged:
        staged.stream.close()
        write(staged.path)
        staged.finish()
        staged.commit(replace=replace)


# --- locks ----------------------------------------------------------------------------------------


def lock_path(target: Path) -> Path:
    return target.with_name(target.name + LOCK_SUFFIX)


def _acquire(fd: int, announce: Callable[[], None] | None) -> None:
    """An exclusive flock on ``fd``; ``announce()`` runs once if the wait lasts."""
    assert fcntl is not None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    notice = None
    if announce is not None:
        notice = threading.Timer(settings.tuning.lock_wait_notice, announce)
        notice.daemon = True
        notice.start()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        if notice is not None:
            notice.cancel()


@contextlib.contextmanager
def locked(target: Path, announce: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold ``{target}.lock`` for the block; a lock that cannot be had is skipped, never fatal."""
    if not settings.tuning.locking or fcntl is None:
        yield
        return
    try:
        fd = os.open(lock_path(target), os.O_RDWR | os.O_CREAT, new_file_mode())
    except OSError:
        yield  # an unwritable folder: whatever follows reports that better than a lock can
        return
    try:
        with contextlib.suppress(OSError):  # e.g. ENOLCK on a network file system: go on unlocked
            _acquire(fd, announce)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def lock_is_held(target: Path) -> bool:
    """Whether some process holds ``target``'s lock right now."""
    if fcntl is None:
        return False
    try:
        fd = os.open(lock_path(target), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False
