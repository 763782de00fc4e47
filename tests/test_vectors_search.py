"""Exact search, near-duplicate pairs and groups, and the faiss indexes, against brute-force references.

Every exact result is compared with a reference that scores the whole matrix at once with numpy
and sorts it with the same rule (score descending, then lower row). The data are small and
random with planted near-duplicates; chunk and block sizes are chosen to cut across them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from ptm_cli.errors import MissingDependency, UsageError
from ptm_cli.vectors import dupes, search
from ptm_cli.vectors.dupes import Group, group_rows, similar_pairs
from ptm_cli.vectors.search import Chunk, Chunks, array_chunks, chunk_rows, nearest


def unit_rows(rng: np.random.Generator, rows: int, dimension: int) -> NDArray[np.float32]:
    x = rng.standard_normal((rows, dimension)).astype(np.float32)
    out: NDArray[np.float32] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def reference_nearest(
    matrix: NDArray[np.float32] | NDArray[np.float16],
    valid: NDArray[np.bool_] | None,
    queries: NDArray[np.float32],
    k: int,
    exclude: Sequence[int | None] | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The whole score matrix at once, each query's valid rows sorted by (score desc, row asc)."""
    scores = queries @ matrix.astype(np.float32).T
    keep = np.ones(matrix.shape[0], bool) if valid is None else valid
    per_query = []
    for q in range(queries.shape[0]):
        rows = np.flatnonzero(keep)
        if exclude is not None and exclude[q] is not None:
            rows = rows[rows != exclude[q]]
        order = np.lexsort((rows, -scores[q, rows]))[:k]
        per_query.append((scores[q, rows[order]], rows[order]))
    found = min(len(rows) for _, rows in per_query)
    return (
        np.array([s[:found] for s, _ in per_query], dtype=np.float32).reshape(len(per_query), found),
        np.array([r[:found] for _, r in per_query], dtype=np.int64).reshape(len(per_query), found),
    )


def assert_same_results(
    got: tuple[NDArray[np.float32], NDArray[np.int64]], want: tuple[NDArray[np.float32], NDArray[np.int64]]
) -> None:
    assert got[0].dtype == np.float32 and got[1].dtype == np.int64
    assert got[1].shape == want[1].shape
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def data() -> tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.float32]]:
    rng = np.random.default_rng(7)
    matrix = unit_rows(rng, 2500, 24)
    valid = rng.random(2500) > 0.1
    queries = unit_rows(rng, 9, 24)
    return matrix, valid, queries


# --- nearest ------------------------------------------------------------------------------------------


@pytest.fixture(params=["few", "many"])
def scan(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of scoring a chunk: dot products on threads (few queries) and one BLAS product (many)."""
    monkeypatch.setattr(search, "FEW_QUERIES", 1000 if request.param == "few" else 0)
    if request.param == "few":
        monkeypatch.setattr(search, "SUB_ROWS", 100)  # several tasks per chunk
    scan: str = request.param
    return scan


@pytest.mark.parametrize("rows", [1, 7, 256, 1000, 2500, 10_000])
def test_nearest_equals_brute_force_across_chunk_boundaries(
    data: tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.float32]], rows: int, scan: str
) -> None:
    matrix, valid, queries = data
    for k in (1, 10, 37):
        assert_same_results(
            nearest(array_chunks(matrix, valid, rows=rows), queries, k), reference_nearest(matrix, valid, queries, k)
        )


def test_nearest_leaves_out_invalid_and_excluded_rows(
    data: tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.float32]], scan: str
) -> None:
    matrix, valid, _ = data
    own = [3, 400, 1999, 7]
    queries = matrix[own].copy()
    exclude: list[int | None] = [3, 400, None, 7]
    scores, rows = nearest(array_chunks(matrix, valid, rows=300), queries, 5, exclude=exclude)
    assert_same_results((scores, rows), reference_nearest(matrix, valid, queries, 5, exclude))
    assert valid[rows].all()
    assert 3 not in rows[0] and 400 not in rows[1]
    if valid[1999]:  # not excluded: a query that is a valid row finds itself first
        assert rows[2, 0] == 1999 and scores[2, 0] == pytest.approx(1.0, abs=1e-5)


def test_nearest_breaks_ties_by_the_lower_row(scan: str) -> None:
    # One-hot rows: every score is exactly 0 or 1, so most of them tie.
    dimension = 6
    matrix = np.eye(dimension, dtype=np.float32)[np.arange(200) % dimension]
    queries = np.eye(dimension, dtype=np.float32)[[0, 4]]
    scores, rows = nearest(array_chunks(matrix, rows=17), queries, 8)
    np.testing.assert_array_equal(rows[0], np.arange(0, 48, 6))
    np.testing.assert_array_equal(rows[1], np.arange(4, 52, 6))
    assert (scores == 1.0).all()
    for size, k in ((17, 50), (60, 3), (200, 5), (200, 40)):  # more tied scores in one chunk than places
        got = nearest(array_chunks(matrix, rows=size), queries, k)
        assert_same_results(got, reference_nearest(matrix, None, queries, k))


def test_nearest_reads_float16_chunks(
    data: tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.float32]], scan: str
) -> None:
    matrix, valid, queries = data
    half = matrix.astype(np.float16)
    got = nearest(array_chunks(half, valid, rows=700), queries, 12)
    assert_same_results(got, reference_nearest(half, valid, queries, 12))


def test_nearest_splits_chunks_and_query_blocks(
    data: tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.float32]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small limits force pieces within a chunk, several query blocks and a small float16 buffer."""
    matrix, valid, queries = data
    monkeypatch.setattr(search, "FEW_QUERIES", 0)
    monkeypatch.setattr(search, "QUERY_BLOCK", 4)
    monkeypatch.setattr(search, "SCORE_BYTES", 4 * 4 * 300)
    monkeypatch.setattr(search, "CONVERT_BYTES", 4 * 24 * 300)
    for stored in (matrix, matrix.astype(np.float16)):
        got = nearest(array_chunks(stored, valid, rows=2000), queries, 15)
        assert_same_results(got, reference_nearest(stored, valid, queries, 15))


def test_nearest_k_larger_than_the_valid_rows(scan: str) -> None:
    rng = np.random.default_rng(1)
    matrix = unit_rows(rng, 30, 8)
    valid = np.zeros(30, bool)
    valid[::3] = True  # 10 valid rows
    queries = unit_rows(rng, 3, 8)
    scores, rows = nearest(array_chunks(matrix, valid, rows=4), queries, 100)
    assert rows.shape == scores.shape == (3, 10)
    assert sorted(rows[0].tolist()) == list(range(0, 30, 3))
    _, rows = nearest(array_chunks(matrix, valid, rows=4), queries, 100, exclude=[0, None, 3])
    assert rows.shape == (3, 9)  # what every query can get: one query lost its own row
    assert_same_results(
        nearest(array_chunks(matrix, valid, rows=4), queries, 100, exclude=[0, None, 3]),
        reference_nearest(matrix, valid, queries, 100, [0, None, 3]),
    )
    none = nearest(array_chunks(matrix, np.zeros(30, bool)), queries, 5)
    assert none[0].shape == none[1].shape == (3, 0)
    assert nearest(array_chunks(matrix), queries, 0)[1].shape == (3, 0)


def test_nearest_refuses_queries_of_another_dimension(
    data: tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.float32]],
) -> None:
    matrix, valid, _ = data
    with pytest.raises(UsageError, match=r"dimension 16 .*dimension 24"):
        nearest(array_chunks(matrix, valid), np.ones((2, 16), np.float32), 3)


def test_nearest_treats_nan_scores_as_minus_infinity(scan: str) -> None:
    rng = np.random.default_rng(2)
    matrix = unit_rows(rng, 50, 8)
    matrix[[5, 20]] = np.nan
    queries = matrix[[5, 6]].copy()
    queries[0] = matrix[7]
    scores, rows = nearest(array_chunks(matrix, rows=16), queries, 60)
    assert rows.shape == (2, 48)
    assert not {5, 20} & set(rows.ravel().tolist())
    assert np.isfinite(scores).all()
    assert rows[0, 0] == 7 and rows[1, 0] == 6


def test_nearest_on_a_memory_mapped_npy_file(
    tmp_path: Path, data: tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.float32]]
) -> None:
    matrix, valid, queries = data
    np.save(tmp_path / "vectors.npy", matrix)
    mapped = np.load(tmp_path / "vectors.npy", mmap_mode="r")
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    got = nearest(array_chunks(mapped, valid, rows=512), queries, 10, exclude=[0] * len(queries))
    assert_same_results(got, reference_nearest(matrix, valid, queries, 10, [0] * len(queries)))


def test_memory_stays_bounded_by_chunks_and_blocks(tmp_path: Path) -> None:
    """A 49 MiB memory-mapped index is searched, and a 4.9 MiB part of it paired, with a few MiB of numpy memory."""
    import tracemalloc

    rng = np.random.default_rng(9)
    np.save(tmp_path / "big.npy", unit_rows(rng, 100_000, 128))
    mapped = np.load(tmp_path / "big.npy", mmap_mode="r")
    queries = unit_rows(rng, 3, 128)
    tracemalloc.start()
    try:
        nearest(array_chunks(mapped, rows=4096), queries, 10)  # 2 MiB chunks
        search_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        list(similar_pairs(array_chunks(mapped[:10_000], rows=4096), 0.9, block_rows=512))  # 1 MiB score blocks
        pairs_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert search_peak < 4 << 20, search_peak
    assert pairs_peak < 3 << 20, pairs_peak  # the 10,000 rows are 4.9 MiB


def test_chunk_rows_keep_chunks_near_32_mib() -> None:
    assert chunk_rows(512) * 512 * 4 == 32 << 20
    assert chunk_rows(512, 2) == 2 * chunk_rows(512)
    assert chunk_rows(10**7) >= 1


# --- similar_pairs and group_rows ------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted() -> tuple[NDArray[np.float32], NDArray[np.bool_], list[list[int]]]:
    """3,000 random 64-d unit vectors (no pair of them above 0.7) with planted groups of near-duplicates."""
    rng = np.random.default_rng(11)
    matrix = rng.standard_normal((3000, 64))
    groups: list[list[int]] = []
    free = rng.permutation(3000).tolist()
    for size in [2] * 60 + [3] * 20 + [5] * 4:
        members = sorted(free.pop() for _ in range(size))
        base = matrix[members[0]] / np.linalg.norm(matrix[members[0]])
        for member in members[1:]:
            noise = rng.standard_normal(64)
            matrix[member] = base + rng.uniform(0.0, 0.3) * noise / np.linalg.norm(noise)
        groups.append(members)
    matrix[groups[0][1]] = matrix[groups[0][0]]  # an exact copy
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    valid = rng.random(3000) > 0.05
    return matrix.astype(np.float32), valid, groups


THRESHOLD = 0.9


def reference_pairs(matrix: NDArray[np.float32], valid: NDArray[np.bool_] | None) -> dict[tuple[int, int], float]:
    exact = matrix.astype(np.float64) @ matrix.astype(np.float64).T
    # The threshold must sit in a gap of the scores, so float32 rounding cannot move a pair across it.
    assert not (np.abs(exact - THRESHOLD) < 1e-4).any()
    keep = np.ones(len(matrix), bool) if valid is None else valid
    i, j = np.nonzero(np.triu(exact >= THRESHOLD, 1) & keep[:, None] & keep[None, :])
    return {(int(a), int(b)): float(exact[a, b]) for a, b in zip(i, j, strict=True)}


@pytest.mark.parametrize("block_rows", [None, 1000, 777, 3000, 5000])
def test_similar_pairs_equal_brute_force(
    planted: tuple[NDArray[np.float32], NDArray[np.bool_], list[list[int]]], block_rows: int | None
) -> None:
    matrix, valid, _ = planted
    want = reference_pairs(matrix, valid)
    assert len(want) > 100
    got = list(similar_pairs(array_chunks(matrix, valid, rows=640), THRESHOLD, block_rows=block_rows))
    assert len(got) == len({(i, j) for i, j, _ in got}), "a pair came twice"
    assert {(i, j) for i, j, _ in got} == set(want)
    for i, j, score in got:
        assert i < j and score == pytest.approx(want[i, j], abs=1e-5)


def test_similar_pairs_with_small_uneven_blocks_and_float16(
    planted: tuple[NDArray[np.float32], NDArray[np.bool_], list[list[int]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    matrix, valid, _ = planted
    monkeypatch.setattr(dupes, "SLAB_ROWS", 5)  # pairs taken out of a score block a few rows at a time
    few, mask = matrix[:700], valid[:700]
    want = set(reference_pairs(few, mask))
    got = {(i, j) for i, j, _ in similar_pairs(array_chunks(few, mask, rows=33), THRESHOLD, block_rows=61)}
    assert got == want
    # float16 vectors: the pairs of the float16 values, compared in float32.
    half = few.astype(np.float16)
    scores = half.astype(np.float32) @ half.astype(np.float32).T
    i, j = np.nonzero(np.triu(scores >= np.float32(THRESHOLD), 1) & mask[:, None] & mask[None, :])
    got_half = {(a, b) for a, b, _ in similar_pairs(array_chunks(half, mask, rows=100), THRESHOLD, block_rows=128)}
    assert got_half == set(zip(i.tolist(), j.tolist(), strict=True))


def test_similar_pairs_of_an_empty_or_all_invalid_index(monkeypatch: pytest.MonkeyPatch) -> None:
    empty: Chunks = lambda: iter(())  # noqa: E731
    assert list(similar_pairs(empty, 0.5)) == []
    matrix = np.full((10, 4), 0.5, np.float32)
    assert list(similar_pairs(array_chunks(matrix, np.zeros(10, bool)), 0.5)) == []
    monkeypatch.setattr(dupes, "SLAB_ROWS", 3)
    everything = list(similar_pairs(array_chunks(matrix, rows=4), 0.5, block_rows=6))
    assert sorted((i, j) for i, j, _ in everything) == [(i, j) for i in range(10) for j in range(i + 1, 10)]


def test_similar_pairs_skip_nan_scores_only() -> None:
    matrix = np.full((6, 4), 0.5, np.float32)
    matrix[2] = np.nan
    pairs = {(i, j) for i, j, _ in similar_pairs(array_chunks(matrix, rows=4), 0.5, block_rows=4)}
    assert pairs == {(i, j) for i in range(6) for j in range(i + 1, 6) if 2 not in (i, j)}


def test_similar_pairs_refuses_mixed_dimensions() -> None:
    def chunks() -> Iterator[Chunk]:
        yield 0, np.ones((3, 4), np.float32), None
        yield 3, np.ones((3, 5), np.float32), None

    with pytest.raises(UsageError, match="dimension"):
        list(similar_pairs(chunks, 0.5))


def test_group_rows_joins_chains_and_exact_copies() -> None:
    pairs = [(1, 2, 0.91), (2, 3, 0.95), (8, 9, 0.97), (1, 3, 0.90)]
    groups = group_rows(20, iter(pairs), same=[[15, 12], [4], [9, 17], [6, 6]])
    assert [g.rows for g in groups] == [(1, 2, 3), (8, 9, 17), (12, 15)]
    assert groups[0].best == {1: 0.91, 2: 0.95, 3: 0.95}
    assert groups[1].best == {8: 0.97, 9: 1.0, 17: 1.0}
    assert groups[2] == Group(rows=(12, 15), best={12: 1.0, 15: 1.0})
    assert group_rows(20, []) == []
    with pytest.raises(ValueError, match="outside"):
        group_rows(5, [(1, 5, 0.99)])


def test_pairs_and_groups_find_the_planted_near_duplicates(
    planted: tuple[NDArray[np.float32], NDArray[np.bool_], list[list[int]]],
) -> None:
    matrix, _, groups = planted
    found = group_rows(len(matrix), similar_pairs(array_chunks(matrix, rows=1000), THRESHOLD))
    assert [g.rows for g in found] == sorted(tuple(members) for members in groups)
    copy = next(g for g in found if g.rows == tuple(groups[0]))
    assert all(score == pytest.approx(1.0, abs=1e-6) for score in copy.best.values())


# --- faiss --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clustered() -> tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.float32], NDArray[np.int64]]:
    """20,000 x 64 vectors around 300 centres, 5% invalid; 100 queries and their exact top 10."""
    rng = np.random.default_rng(5)
    centres = unit_rows(rng, 300, 64)
    matrix = centres[rng.integers(0, 300, 20_000)] + 0.08 * rng.standard_normal((20_000, 64)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    valid = rng.random(20_000) > 0.05
    queries = matrix[rng.choice(20_000, 100, replace=False)] + 0.03 * rng.standard_normal((100, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    _, exact = nearest(array_chunks(matrix, valid), queries, 10)
    return matrix, valid, queries, exact


@pytest.fixture(scope="module", params=["hnsw", "ivf"])
def built(
    request: pytest.FixtureRequest,
    clustered: tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.float32], NDArray[np.int64]],
) -> tuple[str, object]:
    pytest.importorskip("faiss")
    from ptm_cli.vectors import ann

    matrix, valid, _, _ = clustered
    kind: str = request.param
    return kind, ann.build(array_chunks(matrix, valid, rows=3000), 64, len(matrix), kind=kind)


def test_ann_recall_is_high(
    built: tuple[str, object],
    clustered: tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.float32], NDArray[np.int64]],
) -> None:
    from ptm_cli.vectors import ann

    kind, index = built
    _, valid, queries, exact = clustered
    assert index.ntotal == int(valid.sum())  # type: ignore[attr-defined]
    scores, rows = ann.search(index, queries, 10)  # type: ignore[arg-type]
    assert rows.shape == scores.shape == (100, 10) and rows.dtype == np.int64
    assert valid[rows].all(), "an invalid row was indexed"
    assert (np.diff(scores, axis=1) <= 0).all()
    assert ann.recall_at_k(rows, exact) >= 0.9, kind


def test_ann_save_and_load(
    built: tuple[str, object],
    clustered: tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.float32], NDArray[np.int64]],
    tmp_path: Path,
) -> None:
    import json

    from ptm_cli.vectors import ann

    kind, index = built
    _, _, queries, _ = clustered
    path = tmp_path / f"vectors.{kind}.faiss"
    assert ann.load(path, "v1") is None  # absent
    ann.save(index, path, "v1")  # type: ignore[arg-type]
    facts = json.loads(ann.sidecar_path(path).read_text())
    assert facts["identity"] == "v1" and facts["kind"] == kind and facts["dimension"] == 64
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    loaded = ann.load(path, "v1")
    assert loaded is not None
    before, after = ann.search(index, queries, 10), ann.search(loaded, queries, 10)  # type: ignore[arg-type]
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    assert ann.load(path, "v2") is None  # stale: built from other vectors
    with pytest.raises(UsageError, match="dimension 32"):
        ann.search(loaded, np.ones((1, 32), np.float32), 3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="damaged"):
        ann.load(path, "v1")


def test_ann_refuses_an_unknown_kind_and_an_empty_ivf() -> None:
    pytest.importorskip("faiss")
    from ptm_cli.vectors import ann

    matrix = np.eye(4, dtype=np.float32)
    with pytest.raises(UsageError, match="unknown"):
        ann.build(array_chunks(matrix), 4, 4, kind="lsh")
    with pytest.raises(UsageError, match="no valid"):
        ann.build(array_chunks(matrix, np.zeros(4, bool)), 4, 4, kind="ivf")


def test_ann_without_faiss_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from ptm_cli.vectors import ann

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(MissingDependency, match=r"pip install 'ptm\[faiss\]'"):
        ann.build(array_chunks(np.eye(4, dtype=np.float32)), 4, 4)


def test_recall_at_k() -> None:
    from ptm_cli.vectors.ann import recall_at_k

    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(np.array([[1, 2, 9, 9], [8, 7, 0, 0]]), exact) == pytest.approx(0.5)
    assert recall_at_k(np.array([[4, 3], [-1, -1]]), exact) == pytest.approx(0.25)
