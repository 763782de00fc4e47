"""Large activations reuse the process's memory while a model runs, instead of fresh pages each time.

glibc gives every allocation over its mmap threshold (32 MiB at most) pages of
its own and hands them back to the kernel when freed. A CycleGAN generator's
full-resolution activations are 256 bytes per pixel, a quarter of a gigabyte
per megapixel, so every layer of every tile asks the kernel for a fresh
zeroed mapping and takes a page fault per 4 KiB: measured on 2 cores, a
megapixel forward pass spent 4.2-4.8 s of 13-14 s CPU in the kernel.

:func:`reused_heap` makes glibc serve large blocks from its heap while the
block runs (``M_MMAP_MAX`` 0) and keeps up to ``tuning.heap_keep`` bytes of
freed memory at the heap's top instead of returning it, so the next layer and
the next tile reuse pages already mapped. On leaving the last block the
process goes back to mapping large blocks (at glibc's largest threshold, which
its dynamic rule reaches anyway). What is free then stays mapped for the next
block while it is no more than ``tuning.heap_keep`` (a classifier's next call
starts without faulting its activations in again, and skips a trim that costs
7-8 ms); beyond that, ``malloc_trim`` returns all of it, so a long-lived
``ptm serve`` does not keep a translation's peak, and :func:`release` returns
the rest once the server has been idle a while. Elsewhere than glibc (musl,
macOS, a preloaded jemalloc) it changes nothing. Importing this module imports
neither ctypes nor torch.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..settings import tuning

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
# What a block leaves behind: glibc's largest dynamic mmap threshold on 64-bit, its trim
# threshold (twice that, as glibc's own rule sets it), and its default mapping count.
AFTER_MMAP_THRESHOLD = 32 << 20
AFTER_TRIM_THRESHOLD = 64 << 20
AFTER_MMAP_MAX = 65536

_lock = threading.Lock()
_depth = 0
_kept = False  # the last block left its freed memory mapped (see release)


@functools.cache
def glibc() -> Any:
    """The C library's handle when it is glibc (with mallopt and malloc_trim), else None."""
    try:
        if os.confstr("CS_GNU_LIBC_VERSION") is None:
            return None
    except (ValueError, OSError, AttributeError):
        return None
    import ctypes

    names = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in names]

    try:
        library = ctypes.CDLL(None)
        library.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        library.malloc_trim.argtypes = [ctypes.c_size_t]
        if hasattr(library, "mallinfo2"):  # glibc 2.33 and newer
            library.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return None
    return library


def free_bytes(library: Any) -> int | None:
    """Bytes the C library holds free in its heaps (``mallinfo2``, glibc 2.33 and newer), or None."""
    function = getattr(library, "mallinfo2", None)
    return None if function is None else int(function().fordblks)


def active() -> bool:
    """Whether large blocks come from the reused heap right now."""
    return _depth > 0


@contextmanager
def reused_heap() -> Iterator[None]:
    """Serve large allocations from glibc's heap, and keep freed ones, while the block runs.

    Nested and concurrent blocks share one setting: it is made when the first
    enters and undone when the last leaves. ``tuning.reuse_heap = False`` or a
    C library other than glibc makes it a no-op.
    """
    global _depth, _kept
    library = glibc() if tuning.reuse_heap else None
    if library is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            library.mallopt(M_MMAP_MAX, 0)
            library.mallopt(M_TRIM_THRESHOLD, min(tuning.heap_keep, 2**31 - 1))
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                library.mallopt(M_MMAP_MAX, AFTER_MMAP_MAX)
                library.mallopt(M_MMAP_THRESHOLD, AFTER_MMAP_THRESHOLD)
                free = free_bytes(library)
                _kept = free is not None and free <= tuning.heap_keep
                if not _kept:
                    library.mallopt(M_TRIM_THRESHOLD, AFTER_TRIM_THRESHOLD)
                    library.malloc_trim(0)
                # else the trim threshold stays at heap_keep: what is free stays mapped for the next block


def release() -> bool:
    """Give back what the last block kept mapped, and trim as glibc usually does; True if there was any.

    For a long-lived process between runs (the warm server, once it has been
    idle a while). A no-op while a block runs, after a block that kept
    nothing, and elsewhere than glibc.
    """
    global _kept
    library = glibc()
    if library is None:
        return False
    with _lock:
        if _depth > 0 or not _kept:
            return False
        library.mallopt(M_TRIM_THRESHOLD, AFTER_TRIM_THRESHOLD)
        library.malloc_trim(0)
        _kept = False
        return True
