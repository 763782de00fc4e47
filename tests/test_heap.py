"""ptm_cli.runtime.tuning: large activations reuse mapped pages while a model runs, and are returned after."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ptm_cli.runtime import tuning as heap
from ptm_cli.settings import tuning

pytestmark = pytest.mark.skipif(heap.glibc() is None, reason="the C library is not glibc")

# Runs in its own process: mallopt settings are process-wide, and page faults are counted per process.
PROBE = r"""
import json, resource, sys
import torch
from ptm_cli.runtime import tuning as heap
from ptm_cli.settings import tuning

heap.tune_process()  # as the ptm command does: without it a library call leaves the allocator alone
MIB = 1 << 20
tuning.reuse_heap = sys.argv[1] == "reuse"
if sys.argv[2] == "over the keep":  # as if more were free at the end than tuning.heap_keep allows
    heap.free_bytes = lambda library: tuning.heap_keep + 1

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()

def allocate_twice():
    # 256 MiB, then 192 MiB, each written through. The second is smaller, as the next layer's
    # activation often is: an aligned request for the very same size can need a few bytes more
    # than the freed block holds, and glibc then grows the heap instead.
    counts = []
    for mib in (256, 192):
        before = faults()
        block = torch.ones(mib * MIB // 4)
        counts.append(faults() - before)
        del block
    return counts

figures = {}
with heap.reused_heap():
    with heap.reused_heap():  # nested: leaving the inner block keeps the outer one's setting
        pass
    figures["active inside"] = heap.heap_active()
    figures["faults inside"] = allocate_twice()
    figures["rss inside"] = rss()
figures["active after"] = heap.heap_active()
figures["rss after"] = rss()
figures["faults after"] = allocate_twice()
print(json.dumps(figures))
"""

PAGES = (192 << 20) // 4096  # of the smaller block


def probe(mode: str, end: str = "over the keep") -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode, end], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout)


def transparent_huge_pages_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


def test_inside_a_block_freed_activations_are_reused_and_returned_after() -> None:
    figures = probe("reuse", end="over the keep")
    first, second = figures["faults inside"]  # type: ignore[misc]
    assert figures["active inside"] is True and figures["active after"] is False
    assert second < PAGES * 0.02, f"the second block faulted {second} pages in: it was not reused"
    # Leaving the last block with more free than tuning.heap_keep returns it to the system.
    assert figures["rss inside"] - figures["rss after"] >= 200 << 20  # type: ignore[operator]
    if not transparent_huge_pages_always():
        assert first > PAGES * 0.9  # the first block's pages are new, as they must be
        # After the block, large allocations are mapped and returned again, as before it.
        assert min(figures["faults after"]) > PAGES * 0.9  # type: ignore[call-overload]


# Five blocks, each running the same small convolution net on a 768x768 image (its 16-channel
# activations are 36 MiB each, over glibc's largest mmap threshold), as five classify calls do.
CALLS = r"""
import json, resource, sys
import torch
from ptm_cli.runtime import tuning as heap
from ptm_cli.settings import tuning

heap.tune_process()
tuning.heap_keep = int(sys.argv[1]) << 20
torch.manual_seed(0)
conv = torch.nn.Conv2d
net = torch.nn.Sequential(conv(3, 16, 3, padding=1), torch.nn.ReLU(), conv(16, 16, 3, padding=1),
                          conv(16, 3, 3, padding=1))
image = torch.rand(1, 3, 768, 768)

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def call():
    before = faults()
    with heap.reused_heap(), torch.inference_mode():
        net(image)
    return faults() - before

counts = [call() for _ in range(5)]
if len(sys.argv) > 2:  # then the idle server's release: what the runs kept goes back, once
    def rss():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    before = rss()
    released = [heap.release(), heap.release()]
    print(json.dumps({"released": released, "returned": before - rss(), "faults next": call()}))
else:
    print(json.dumps(counts))
"""


def five_calls(keep_mib: int) -> list[int]:
    """Pages each of five calls faulted in."""
    out = subprocess.run(
        [sys.executable, "-c", CALLS, str(keep_mib)], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_what_fits_the_keep_stays_mapped_for_the_next_block() -> None:
    # Without the keep every call faults its activations in afresh (as the 8 MiB case below does).
    # With it, most calls fault nothing in. Where each freed block lands decides how many: an
    # aligned request a few bytes larger than a freed block grows the heap once more, so a later
    # call now and then still faults one or two activations (36 MiB each) in.
    counts = five_calls(keep_mib=1024)  # the default: 1 GiB
    first, later = counts[0], counts[1:]
    assert sum(count < first * 0.02 for count in later) >= 2, f"pages faulted in by each call: {counts}"
    assert sum(later) < first * 1.5, f"pages faulted in by each call: {counts}"
    # Keeping less than a call frees: given back at the end of each, faulted in again by the next.
    counts = five_calls(keep_mib=8)
    if not transparent_huge_pages_always():
        assert counts[-1] > counts[0] * 0.5, f"pages faulted in by each call: {counts}"


@pytest.mark.skipif(transparent_huge_pages_always(), reason="huge pages by default fault far fewer pages")
def test_turned_off_every_large_block_faults_in_fresh_pages() -> None:
    figures = probe("off")
    assert figures["active inside"] is False
    assert min(figures["faults inside"]) > PAGES * 0.9  # type: ignore[call-overload]


@pytest.fixture
def tuned() -> None:
    """This process tuned as the ptm command tunes its own (the suite's CLI runs have done it too)."""
    heap.tune_process()


def test_concurrent_blocks_share_one_setting_undone_by_the_last(tuned: None) -> None:
    entered, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def other() -> None:
        with heap.reused_heap():
            entered.set()
            release.wait(10)
        seen.append(heap.heap_active())

    thread = threading.Thread(target=other)
    with heap.reused_heap():
        thread.start()
        assert entered.wait(10)
    assert heap.heap_active()  # the other thread's block still runs
    release.set()
    thread.join(10)
    assert seen == [False] and not heap.heap_active()


def test_elsewhere_than_glibc_it_changes_nothing(tuned: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "glibc", lambda: None)
    with heap.reused_heap():
        assert not heap.heap_active()


def test_turned_off_by_tuning(tuned: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "reuse_heap", False)
    with heap.reused_heap():
        assert not heap.heap_active()


def test_an_idle_server_gives_back_what_the_runs_kept() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CALLS, "1024", "release"], capture_output=True, text=True, timeout=120, check=True
    )
    figures = json.loads(out.stdout)
    assert figures["released"] == [True, False]  # the second call finds nothing kept
    assert figures["returned"] >= 30 << 20  # the 36 MiB activations, at least most of them
    if not transparent_huge_pages_always():
        assert figures["faults next"] > 5000  # so the next run faults its pages in afresh, as before the keep
