"""Process-wide tuning while models run: memory reuse, OpenMP's pace, and its spin count, behind one switch.

Three things make ptm's runs faster, and each changes the whole process, not
just the call that asks for it:

* **the reused heap** (:func:`reused_heap`): glibc gives every allocation over
  its mmap threshold (32 MiB at most) pages of its own and hands them back to
  the kernel when freed. A CycleGAN generator's full-resolution activations
  are 256 bytes per pixel, so every layer of every tile asks the kernel for a
  fresh zeroed mapping and takes a page fault per 4 KiB: measured on 2 cores,
  a megapixel forward pass spent 4.2-4.8 s of 13-14 s CPU in the kernel.
  While a block runs, large blocks come from glibc's heap (``M_MMAP_MAX`` 0)
  and up to ``tuning.heap_keep`` bytes of freed memory stay at the heap's top,
  so the next layer and tile reuse pages already mapped. Leaving the last
  block, the process maps large blocks again; what is free stays mapped for
  the next block while it is no more than ``heap_keep`` (a classifier's next
  call then faults nothing in and skips a 7-8 ms trim), and beyond that
  ``malloc_trim`` returns all of it. :func:`release` gives back what was kept
  (a warm server idle for a while). Elsewhere than glibc it changes nothing.
* **the OpenMP pace keeper** (:class:`OpenMPPace`): libgomp lets a thread that
  reaches a barrier spin while the process holds no more OpenMP threads than
  cores, and sleep at once when it holds more. Spinning is faster on an idle
  machine (ResNet101 on 2 cores: 6 % in fp32, 11 to 17 % in bf16) and a
  collapse when other processes compete for the cores (2.5 to 7 times
  slower). The keeper holds one idle OpenMP team (so the threads sleep) until
  the passes show the process has the cores to itself, and takes it back when
  they show it has not.
* **libgomp's spin count** (:func:`prepare_openmp`): a thread that finished its
  share of a parallel region spins 300,000 rounds (about 5 ms on a 2-core
  EPYC) before it sleeps; between two forward passes that is a core taken
  from the threads decoding the next batch. ``GOMP_SPINCOUNT`` is read once,
  when libgomp loads, so it is set before torch is imported.

Library calls never switch these on by themselves: the ``ptm`` command, the
warm server and a batch worker call :func:`tune_process` at their start, and
a program that wants the same calls it once, before it imports torch. Until
then :func:`reused_heap` and :func:`pace_for` do nothing. Importing this
module imports neither ctypes nor torch.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..settings import OPENMP_SPIN_COUNT, tuning

if TYPE_CHECKING:
    import torch

_tuned = False


def tune_process() -> None:
    """Let ptm tune this process while its models run (see the module's text); call it once, early.

    Sets ``GOMP_SPINCOUNT`` when torch is not imported yet, and turns on the
    reused heap and the OpenMP pace keeper for every later run. There is no
    way back within the process: what it changes is the process's own.
    """
    global _tuned
    prepare_openmp()
    _tuned = True


def tuned() -> bool:
    """Whether :func:`tune_process` was called in this process."""
    return _tuned


# --- the spin count ---------------------------------------------------------------------------------


def prepare_openmp() -> None:
    """Set ``GOMP_SPINCOUNT`` to ``OPENMP_SPIN_COUNT`` for this process and its children.

    Only before torch is imported (libgomp reads it once, when it loads), and
    only when the user has chosen neither it nor ``OMP_WAIT_POLICY``. An empty
    ``GOMP_SPINCOUNT`` is no choice: libgomp would print "Invalid value" on
    every run, so it is replaced too.
    """
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return
    if os.environ.get("GOMP_SPINCOUNT", "").strip():
        return
    os.environ["GOMP_SPINCOUNT"] = str(OPENMP_SPIN_COUNT)


# --- the reused heap --------------------------------------------------------------------------------

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


def heap_active() -> bool:
    """Whether large blocks come from the reused heap right now."""
    return _depth > 0


@contextmanager
def reused_heap() -> Iterator[None]:
    """Serve large allocations from glibc's heap, and keep freed ones, while the block runs.

    Nested and concurrent blocks share one setting: it is made when the first
    enters and undone when the last leaves. A no-op until :func:`tune_process`,
    with ``tuning.reuse_heap = False``, or with a C library other than glibc.
    """
    global _depth, _kept
    library = glibc() if _tuned and tuning.reuse_heap else None
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


# --- OpenMP's pace ------------------------------------------------------------------------------------


def openmp_threads(device: torch.device | None) -> int | None:
    """How many OpenMP threads a model on ``device`` runs on: a CPU with more than one torch thread; else None.

    None also for a model whose forward passes are shared with other callers
    (the warm server's, which says no device): where they run is not the
    caller's to know.
    """
    import torch

    if device is None or device.type != "cpu" or torch.get_num_threads() < 2:
        return None
    return torch.get_num_threads()


def pace_for(device: torch.device | None, *, spinning: bool) -> OpenMPPace | None:
    """A pace keeper for a run on ``device``, starting as the last run ended; None when not tuned or not OpenMP."""
    threads = openmp_threads(device) if _tuned else None
    return None if threads is None else OpenMPPace(threads, spinning=spinning)


class OpenMPPace:
    """How torch's OpenMP threads wait at their barriers during a run: spinning, or asleep.

    A run starts asleep, with one idle thread holding an OpenMP team (decoding
    threads that run no torch operations hold none), or spinning when the last
    run ended so. After each forward pass the keeper looks at the share of the
    cores the process got: at least ``SPIN_FROM`` lets the threads spin (the
    holder ends), under ``SLEEP_BELOW`` puts them back to sleep. The answers
    are the same either way.
    """

    SPIN_FROM = 0.8  # idle machine, threads asleep: 0.86 to 0.89 measured
    SLEEP_BELOW = 0.7  # busy machine: 0.3 to 0.5 measured, spinning or not
    MIN_WALL_S = 0.05  # shorter passes are mostly Python and timer noise: not judged

    def __init__(self, cores: int, *, spinning: bool = False):
        self.cores = cores
        self._holder: threading.Thread | None = None
        self._release = threading.Event()
        if not spinning:
            self._sleep()

    @property
    def spinning(self) -> bool:
        return self._holder is None

    def judge(self, cpu_s: float, wall_s: float) -> None:
        """Record one forward pass: CPU seconds of the whole process against its wall seconds."""
        if wall_s < self.MIN_WALL_S:
            return
        share = cpu_s / (self.cores * wall_s)
        if self.spinning and share < self.SLEEP_BELOW:
            self._sleep()
        elif not self.spinning and share >= self.SPIN_FROM:
            self.close()

    def close(self) -> None:
        """End the holder thread (and with it its OpenMP team): back to libgomp's own way of waiting."""
        if self._holder is not None:
            self._release.set()
            self._holder.join()
            self._holder = None

    def _sleep(self) -> None:
        import torch

        def hold(ready: threading.Event, release: threading.Event) -> None:
            try:
                torch.ones(1 << 17).add_(1)  # large enough to run on OpenMP threads: this thread's team
            finally:
                ready.set()
            release.wait()

        ready = threading.Event()
        self._release = threading.Event()
        self._holder = threading.Thread(target=hold, args=(ready, self._release), name="ptm-openmp-team", daemon=True)
        self._holder.start()
        ready.wait()
