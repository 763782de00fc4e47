"""Exact search, near-duplicate pairs and faiss indexes on generated vectors, against faiss's own exact search.

Not a test: it writes clustered, L2-normalised float32 vectors (1,000 random centres plus noise,
with planted near-duplicates and exact copies, fixed seed) to an ``.npy`` file in a temporary
folder, maps it with ``np.load(mmap_mode="r")`` and measures, in one process:

a. one query with :func:`ptm_cli.vectors.search.nearest` over the memory map (median of several
   runs after a warm-up pass, so the file is in the page cache and mapped) against faiss's
   ``IndexFlatIP.search`` for the same query on the same vectors held in RAM; and the memory the
   search itself takes: the anonymous resident memory (``RssAnon``, sampled every 2 ms), since
   the mapped file's resident pages count in the process's RSS (``ru_maxrss``) too;
b. ``ptm dupes``'s arithmetic on the first ``--dupes-rows`` vectors: :func:`similar_pairs` plus
   :func:`group_rows` against faiss's exact ``range_search``, with the pair sets compared (and on a
   5,000-vector subset, both against a float64 numpy reference);
c. faiss HNSW and IVF through :mod:`ptm_cli.vectors.ann` on the first ``--ann-rows`` vectors:
   build time, query time and recall@10 against the exact search over ``--queries`` queries.

    .venv/bin/python scripts/bench_vectors.py                                  # 1,000,000 x 512, ~5-10 min on 2 cores
    .venv/bin/python scripts/bench_vectors.py --rows 100000 --dupes-rows 20000 --ann-rows 20000   # a quick check

Needs faiss-cpu. The load average is printed at the start and the end: another busy process on
the machine makes every figure slower, ratios less so (the two sides run alternately).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ptm_cli.vectors import ann
from ptm_cli.vectors.dupes import group_rows, similar_pairs
from ptm_cli.vectors.search import array_chunks, nearest

MIB = 1 << 20
T = TypeVar("T")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="vectors in the index (default 1,000,000)")
    parser.add_argument("--dim", type=int, default=512, help="their dimension (default 512)")
    parser.add_argument("--dupes-rows", type=int, default=100_000, help="vectors for the dupes comparison")
    parser.add_argument("--ann-rows", type=int, default=200_000, help="vectors for the faiss HNSW and IVF indexes")
    parser.add_argument("--queries", type=int, default=100, help="queries for recall@10 (default 100)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs of the one-query search (default 7)")
    parser.add_argument("--threshold", type=float, default=0.9, help="near-duplicate threshold (default 0.9)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the temporary .npy file")
    args = parser.parse_args(argv)
    args.dupes_rows = min(args.dupes_rows, args.rows)
    args.ann_rows = min(args.ann_rows, args.rows)
    return args


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB (RssAnon, RssFile, VmHWM...); 0 where there is none."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def generate(path: Path, rows: int, dimension: int, seed: int) -> int:
    """Write the vectors block by block (never all in memory); returns the number of planted near-duplicates."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dimension)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dimension))
    planted = 0
    block = 65_536
    for start in range(0, rows, block):
        n = min(block, rows - start)
        x = centres[rng.integers(0, 1000, n)] + 0.8 * rng.standard_normal((n, dimension), dtype=np.float32)
        # Near-duplicates close to their source (so any prefix keeps nearly all its pairs): one row in
        # 500 is a row up to 64 rows before it plus a little noise, one in 5 of them an exact copy; a
        # source that is itself a copy makes a chain.
        # (a row's norm is about 1.28 * sqrt(dimension); noise of 0.05-0.3 per item keeps the cosine above 0.95)
        count = n // 500 if n > 64 else 0
        noise = rng.uniform(0.05, 0.3, size=count).astype(np.float32)
        noise[: count // 5] = 0.0
        targets = np.sort(rng.choice(np.arange(64, n), size=count, replace=False)) if count else np.zeros(0, int)
        for target, level in zip(targets.tolist(), noise.tolist(), strict=True):
            source = target - int(rng.integers(1, 65))
            x[target] = x[source] + level * rng.standard_normal(dimension, dtype=np.float32)
        planted += count
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + n] = x
    out.flush()
    del out
    return planted


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def peak_anon_mib(run: Callable[[], T]) -> tuple[T, float, float]:
    """``(run()'s result, RssAnon before, highest RssAnon seen while it ran)``, in MiB, sampled every 2 ms."""
    before = status_kib("RssAnon")
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, status_kib("RssAnon"))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run()
    finally:
        done.set()
        sampler.join()
    peak = max(peak, status_kib("RssAnon"))
    return result, before / 1024, peak / 1024


def faiss_pairs(faiss: Any, matrix: NDArray[np.float32], threshold: float) -> tuple[float, set[tuple[int, int]]]:
    """faiss's exact range search on ``matrix`` against itself: (seconds of range_search, pairs i < j)."""
    index = faiss.IndexFlatIP(matrix.shape[1])
    index.add(np.ascontiguousarray(matrix))
    start = time.perf_counter()
    limits, _, ids = index.range_search(np.ascontiguousarray(matrix), threshold)
    seconds = time.perf_counter() - start
    queries = np.repeat(np.arange(matrix.shape[0]), np.diff(limits).astype(np.int64))
    upper = queries < ids
    return seconds, set(zip(queries[upper].tolist(), ids[upper].tolist(), strict=True))


def reference_pairs(matrix: NDArray[np.float32], threshold: float) -> set[tuple[int, int]]:
    exact = matrix.astype(np.float64) @ matrix.astype(np.float64).T
    i, j = np.nonzero(np.triu(exact >= threshold, 1))
    return set(zip(i.tolist(), j.tolist(), strict=True))


def describe_difference(matrix: NDArray[np.float32], ours: set[tuple[int, int]], theirs: set[tuple[int, int]]) -> str:
    if ours == theirs:
        return "identical"
    parts = []
    for name, extra in (("only ptm", ours - theirs), ("only faiss", theirs - ours)):
        if extra:
            scores = [float(matrix[i].astype(np.float64) @ matrix[j].astype(np.float64)) for i, j in sorted(extra)[:5]]
            parts.append(f"{name}: {len(extra)} (float64 scores {', '.join(f'{s:.8f}' for s in scores)})")
    return "; ".join(parts)


Row = tuple[str, str, str, str]


def bench_query(faiss: Any, matrix: NDArray[np.float32], args: argparse.Namespace) -> list[Row]:
    """(a) one query, exact: ptm over the memory map against faiss in RAM."""
    rows, dimension = matrix.shape
    chunks = array_chunks(matrix)
    rng = np.random.default_rng(args.seed + 1)
    query = np.asarray(matrix[[rows // 3]], dtype=np.float32)
    query = query + 0.05 * rng.standard_normal(query.shape).astype(np.float32) / np.sqrt(dimension)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    start = time.perf_counter()
    nearest(chunks, query, 10)  # warm-up: reads the file into the page cache and maps it
    warm_up = time.perf_counter() - start
    _, anon_before, anon_peak = peak_anon_mib(lambda: nearest(chunks, query, 10))
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mapped = status_kib("RssFile") / 1024
    index = faiss.IndexFlatIP(dimension)
    index.add(matrix)  # faiss copies the vectors into RAM
    threads = faiss.omp_get_max_threads()
    times: dict[str, list[float]] = {"ptm": [], "faiss": [], "faiss, 1 thread": []}
    for _ in range(args.repeat):  # alternately, so a change in the machine's load hits all three
        times["ptm"].append(seconds(lambda: nearest(chunks, query, 10)))
        times["faiss"].append(seconds(lambda: index.search(query, 10)))
        faiss.omp_set_num_threads(1)
        times["faiss, 1 thread"].append(seconds(lambda: index.search(query, 10)))
        faiss.omp_set_num_threads(threads)
    ours, theirs, single = (statistics.median(times[name]) for name in times)
    same_rows = np.array_equal(nearest(chunks, query, 10)[1], index.search(query, 10)[1])
    print(f"\n(a) one query, top 10 of {rows:,} x {dimension}:")
    print(f"  warm-up pass (page cache, mapping): {warm_up * 1000:.0f} ms")
    print(
        f"  ptm nearest (memory map): {ours * 1000:.1f} ms median of {args.repeat} (min {min(times['ptm']) * 1000:.1f})"
    )
    print(
        f"  faiss IndexFlatIP.search (in RAM, {threads} threads): {theirs * 1000:.1f} ms"
        f" (min {min(times['faiss']) * 1000:.1f})"
    )
    print(
        f"  faiss IndexFlatIP.search (in RAM, 1 thread): {single * 1000:.1f} ms"
        f" (min {min(times['faiss, 1 thread']) * 1000:.1f})"
    )
    print(
        f"  ratio ptm/faiss: {ours / theirs:.2f} ({ours / single:.2f} against faiss on 1 thread);"
        f" same rows: {same_rows}"
    )
    print(
        f"  anonymous memory (RssAnon) before a search {anon_before:.0f} MiB, peak during it {anon_peak:.0f} MiB"
        f" (+{anon_peak - anon_before:.0f} MiB)"
    )
    print(f"  mapped file pages resident (RssFile) {mapped:.0f} MiB; ru_maxrss {max_rss:.0f} MiB, which counts them")
    return [
        (
            f"one query, {rows:,} x {dimension}",
            f"{ours * 1000:.1f} ms",
            f"{theirs * 1000:.1f} ms",
            f"{ours / theirs:.2f}",
        ),
        ("one query, faiss on 1 thread", f"{ours * 1000:.1f} ms", f"{single * 1000:.1f} ms", f"{ours / single:.2f}"),
        ("one query: anonymous memory added", f"{anon_peak - anon_before:.0f} MiB", "-", "-"),
    ]


def bench_dupes(faiss: Any, matrix: NDArray[np.float32], args: argparse.Namespace) -> list[Row]:
    """(b) near-duplicates: ptm's blocked upper triangle against faiss's exact range search."""
    subset = matrix[: args.dupes_rows]
    start = time.perf_counter()
    pairs = list(similar_pairs(array_chunks(subset), args.threshold))
    groups = group_rows(subset.shape[0], pairs)
    ours = time.perf_counter() - start
    # Once more, for the memory: the pairs stream into group_rows without being kept.
    _, anon_before, anon_peak = peak_anon_mib(
        lambda: group_rows(subset.shape[0], similar_pairs(array_chunks(subset), args.threshold))
    )
    ours_set = {(i, j) for i, j, _ in pairs}
    theirs, theirs_set = faiss_pairs(faiss, subset, args.threshold)
    print(f"\n(b) near-duplicates of {subset.shape[0]:,} x {subset.shape[1]}, threshold {args.threshold}:")
    print(f"  ptm similar_pairs + group_rows: {ours:.1f} s, {len(ours_set):,} pairs, {len(groups):,} groups")
    print(f"  faiss IndexFlatIP.range_search: {theirs:.1f} s, {len(theirs_set):,} pairs")
    print(f"  ratio ptm/faiss: {ours / theirs:.2f}; pairs: {describe_difference(subset, ours_set, theirs_set)}")
    print(
        f"  anonymous memory (RssAnon) before ptm's dupes {anon_before:.0f} MiB, peak during it {anon_peak:.0f} MiB"
        f" (+{anon_peak - anon_before:.0f} MiB)"
    )
    small = np.ascontiguousarray(matrix[:5000])
    reference = reference_pairs(small, args.threshold)
    small_ours = {(i, j) for i, j, _ in similar_pairs(array_chunks(small), args.threshold)}
    _, small_faiss = faiss_pairs(faiss, small, args.threshold)
    print(
        f"  first {small.shape[0]:,} vectors against a float64 numpy reference ({len(reference)} pairs):"
        f" ptm {describe_difference(small, small_ours, reference)},"
        f" faiss {describe_difference(small, small_faiss, reference)}"
    )
    return [
        (f"dupes, {subset.shape[0]:,} x {subset.shape[1]}", f"{ours:.1f} s", f"{theirs:.1f} s", f"{ours / theirs:.2f}"),
        ("dupes: anonymous memory added", f"{anon_peak - anon_before:.0f} MiB", "-", "-"),
    ]


def bench_ann(matrix: NDArray[np.float32], args: argparse.Namespace) -> list[Row]:
    """(c) faiss HNSW and IVF through ptm_cli.vectors.ann: build, search, recall@10."""
    rows, dimension = args.ann_rows, matrix.shape[1]
    chunks = array_chunks(matrix[:rows])
    rng = np.random.default_rng(args.seed + 2)
    queries = np.asarray(matrix[np.sort(rng.choice(rows, size=args.queries, replace=False))], dtype=np.float32)
    queries = queries + 0.3 * rng.standard_normal(queries.shape).astype(np.float32) / np.sqrt(dimension)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    start = time.perf_counter()
    _, exact = nearest(chunks, queries, 10)
    exact_time = time.perf_counter() - start
    print(f"\n(c) faiss indexes on {rows:,} x {dimension}, {args.queries} queries, recall@10:")
    print(f"  exact nearest: {exact_time * 1000:.0f} ms for the {args.queries} queries")
    table = []
    for kind in ann.KINDS:
        start = time.perf_counter()
        built = ann.build(chunks, dimension, rows, kind=kind)
        build_time = time.perf_counter() - start
        start = time.perf_counter()
        _, approx = ann.search(built, queries, 10)
        search_time = time.perf_counter() - start
        recall = ann.recall_at_k(approx, exact)
        print(
            f"  {kind}: build {build_time:.1f} s, search {search_time * 1000:.1f} ms"
            f" ({search_time / args.queries * 1e6:.0f} us a query), recall@10 {recall:.3f}"
        )
        table.append(
            (
                f"{kind} on {rows:,}: build / {args.queries} queries / recall@10",
                f"{build_time:.1f} s / {search_time * 1000:.1f} ms / {recall:.3f}",
                f"exact: {exact_time * 1000:.0f} ms",
                "-",
            )
        )
    return table


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import faiss
    except ImportError:
        sys.exit("this benchmark needs faiss-cpu: pip install 'ptm[faiss]'")
    print(f"load average at start: {load_average()}")
    print(f"{os.cpu_count()} CPUs; faiss {faiss.__version__} with {faiss.omp_get_max_threads()} OpenMP threads")
    table: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ptm-bench-vectors-", dir=args.tmp) as folder:
        path = Path(folder) / "vectors.npy"
        start = time.perf_counter()
        planted = generate(path, args.rows, args.dim, args.seed)
        print(
            f"wrote {args.rows:,} x {args.dim} float32 ({path.stat().st_size / MIB:,.0f} MiB,"
            f" {planted} planted near-duplicates) in {time.perf_counter() - start:.1f} s"
        )
        matrix = np.load(path, mmap_mode="r")
        table += bench_query(faiss, matrix, args)
        table += bench_dupes(faiss, matrix, args)
        table += bench_ann(matrix, args)
        del matrix
    print(f"\nload average at end: {load_average()}\n")
    print("| measurement | ptm | faiss | ptm/faiss |")
    print("|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
