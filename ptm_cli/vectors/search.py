"""Exact nearest-neighbour search over an index of vectors that may be far larger than memory.

This module owns the chunk protocol the vector package streams an index through, and the exact
top-k search on it. A chunk source is a zero-argument callable that returns a fresh iterator of
``(first row, matrix, valid mask)`` chunks, so a search can make one pass (this module) or
several (:mod:`.dupes`) over a memory map or a Parquet file without ever holding the index.

Why the search is shaped the way it is:

* float32 chunks are used in place (a read-only memory-map slice is fine, no copy); float16
  chunks are converted to float32 a bounded piece at a time;
* a few queries (up to :data:`FEW_QUERIES`, ``ptm similar`` with one image is the usual case)
  are scored with row-by-row dot products (``np.vecdot``) over sub-pieces of a chunk handed to a
  small thread pool. That runs at memory speed, and it degrades gracefully when another process
  holds a core: a stalled thread just takes fewer sub-pieces. OpenBLAS's matrix-vector product
  was half as fast per thread, and its static split over threads three to four times slower on
  a busy 2-core machine;
* many queries are scored with one BLAS matrix product per piece of a chunk and block of
  queries, where the arithmetic, not the memory, is the cost;
* the running top-k is ``[Q, k]`` scores and rows. A piece is only looked at further when its
  best score for a query could enter that query's top-k (its maximum against the current k-th
  score), so once the top-k has settled, a piece costs its dot products plus one ``max``;
* ties are broken by the lower row number, exactly: ``np.argpartition`` is free to pick any of
  several equal scores at the boundary, so a query whose boundary score is shared is redone
  with an explicit rule;
* memory is O(chunk + Q*k): the score block of a piece is bounded (:data:`SCORE_BYTES`), the
  queries are taken in blocks when there are many.

Nothing here imports torch or faiss.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from functools import partial

import numpy as np
from numpy.typing import NDArray

from ..errors import UsageError

# (first row number, matrix [n, D] float32 or float16, valid mask [n] or None = all rows valid).
Chunk = tuple[int, NDArray[np.float32] | NDArray[np.float16], NDArray[np.bool_] | None]
# A zero-argument callable returning a fresh iterator of chunks: each call is one pass.
Chunks = Callable[[], Iterator[Chunk]]

# A chunk of this many bytes is big enough that the per-chunk Python work is noise next to the
# product, small enough to stay in the last-level cache's neighbourhood (measured: 16k-32k rows
# of 512 float32 were the fastest on a 2-core EPYC; 64k and more were 30% slower).
CHUNK_BYTES = 32 << 20
# The most float32 bytes of one piece a product reads (a larger chunk is taken in pieces).
PIECE_BYTES = 64 << 20
# The most bytes of one score block (pieces rows x queries block), and of the float16 -> float32 buffer.
SCORE_BYTES = 16 << 20
CONVERT_BYTES = 16 << 20
# The most queries multiplied together; more are taken in blocks of this many.
QUERY_BLOCK = 4096
# Up to this many queries, a chunk is scored by row-by-row dot products (np.vecdot) spread over
# threads, SUB_ROWS rows a task; more queries go through one BLAS matrix product per piece.
FEW_QUERIES = 16
SUB_ROWS = 2048
MAX_THREADS = 8

_NO_ROW = np.iinfo(np.int64).max  # the row of an empty top-k slot: after every real row


def chunk_rows(dimension: int, itemsize: int = 4) -> int:
    """The rows of a chunk of about :data:`CHUNK_BYTES` for vectors of ``dimension`` items of ``itemsize`` bytes."""
    rows = CHUNK_BYTES // max(1, dimension * itemsize)
    return max(1024, rows - rows % 1024) if rows >= 1024 else max(1, rows)


def array_chunks(
    matrix: NDArray[np.float32] | NDArray[np.float16],
    valid: NDArray[np.bool_] | None = None,
    *,
    rows: int | None = None,
) -> Chunks:
    """A chunk source over an in-memory or memory-mapped ``[N, D]`` matrix (views, never copies).

    ``valid`` is the ``[N]`` mask of rows to use (None: all); ``rows`` the rows of a chunk
    (default :func:`chunk_rows` for the matrix's dimension and item size).
    """
    if matrix.ndim != 2:
        raise ValueError(f"a vector matrix is [rows, dimension], not of shape {matrix.shape}")
    if valid is not None and valid.shape != (matrix.shape[0],):
        raise ValueError(f"the valid mask has shape {valid.shape}, the matrix {matrix.shape[0]} rows")
    step = rows if rows is not None else chunk_rows(matrix.shape[1], matrix.dtype.itemsize)
    if step < 1:
        raise ValueError(f"a chunk needs at least one row, not {step}")

    def chunks() -> Iterator[Chunk]:
        for start in range(0, matrix.shape[0], step):
            yield start, matrix[start : start + step], None if valid is None else valid[start : start + step]

    return chunks


def check_chunk(chunk: Chunk, dimension: int, expected: str = "the queries have") -> None:
    """Raise :class:`UsageError` unless ``chunk`` is a ``[n, dimension]`` matrix with a fitting mask.

    ``expected`` starts the message about a wrong dimension ("the queries have dimension 512 but...").
    """
    _, matrix, valid = chunk
    if matrix.ndim != 2:
        raise UsageError(f"the index holds a block of shape {matrix.shape}, not [rows, dimension]")
    if matrix.shape[1] != dimension:
        raise UsageError(
            f"{expected} dimension {dimension} but the index's vectors have dimension {matrix.shape[1]};"
            " use vectors from the same model"
        )
    if valid is not None and valid.shape != (matrix.shape[0],):
        raise UsageError(f"the index's valid mask has shape {valid.shape} for a block of {matrix.shape[0]} rows")


def float32_pieces(
    matrix: NDArray[np.float32] | NDArray[np.float16], rows: int, buffer: NDArray[np.float32] | None
) -> Iterator[tuple[int, NDArray[np.float32]]]:
    """``(offset, float32 piece)`` for consecutive pieces of at most ``rows`` rows of ``matrix``.

    Float32 pieces are views of ``matrix``; others are converted into ``buffer`` (reused, so a
    piece is valid only until the next one is asked for).
    """
    for offset in range(0, matrix.shape[0], rows):
        piece = matrix[offset : offset + rows]
        if piece.dtype == np.float32:
            yield offset, piece  # type: ignore[misc]
        else:
            assert buffer is not None
            out = buffer[: piece.shape[0]]
            np.copyto(out, piece, casting="same_kind")
            yield offset, out


def _piece_rows(dimension: int, queries: int, itemsize: int) -> int:
    """Rows of a piece: bounded by the piece's bytes, its score block's, and (converted) the buffer's."""
    limit = min(PIECE_BYTES // (4 * dimension), SCORE_BYTES // (4 * max(1, queries)))
    if itemsize != 4:
        limit = min(limit, CONVERT_BYTES // (4 * dimension))
    return max(256, limit)


def nearest(
    chunks: Chunks,
    queries: NDArray[np.float32],
    k: int,
    *,
    exclude: Sequence[int | None] | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The exact top-``k`` rows by inner product for each query, in one pass over ``chunks``.

    ``queries`` is ``[Q, D]`` (normalised by the caller: then the inner product is the cosine).
    ``exclude[q]``, when given and not None, is a row left out for query ``q`` (the query's own
    row). Invalid rows (the chunks' masks) never appear; a NaN score counts as minus infinity.

    Returns ``(scores [Q, k'] float32, rows [Q, k'] int64)`` with ``k' = min(k, rows every query
    can get)``: the valid rows less the excluded one. Each query's results are sorted by score,
    highest first, ties by lower row number. Raises :class:`UsageError` when the queries' dimension
    is not the index's.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2:
        raise ValueError(f"queries are [Q, dimension], not of shape {q.shape}")
    count, dimension = q.shape
    if k <= 0 or count == 0:
        return np.zeros((count, 0), np.float32), np.zeros((count, 0), np.int64)
    excluded = np.full(count, -1, dtype=np.int64)
    if exclude is not None:
        if len(exclude) != count:
            raise ValueError(f"exclude has {len(exclude)} entries for {count} queries")
        for index, row in enumerate(exclude):
            if row is not None:
                excluded[index] = row
    best_scores = np.full((count, k), -np.inf, dtype=np.float32)
    best_rows = np.full((count, k), _NO_ROW, dtype=np.int64)
    few = count <= FEW_QUERIES
    workers = _workers() if few else 1
    with ThreadPoolExecutor(workers, thread_name_prefix="ptm-search") if workers > 1 else nullcontext() as pool:
        for chunk in chunks():
            check_chunk(chunk, dimension)
            if few:
                _scan_few(chunk, q, excluded, best_scores, best_rows, pool)
            else:
                _scan_many(chunk, q, excluded, best_scores, best_rows)
    found = int((best_scores > -np.inf).sum(axis=1).min())
    return np.ascontiguousarray(best_scores[:, :found]), np.ascontiguousarray(best_rows[:, :found])


def _workers() -> int:
    """Threads for the few-queries scan: the cores this process may use, at most :data:`MAX_THREADS`."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every CPU counts
    cores = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cores))


def _scan_few(
    chunk: Chunk,
    q: NDArray[np.float32],
    excluded: NDArray[np.int64],
    best_scores: NDArray[np.float32],
    best_rows: NDArray[np.int64],
    pool: ThreadPoolExecutor | None,
) -> None:
    """Score one chunk for a few queries: row-by-row dot products, sub-pieces spread over ``pool``.

    Each task converts its own sub-piece when the chunk is not float32, so a float16 index is
    converted in parallel and in bounded pieces (:data:`SUB_ROWS` rows per task).
    """
    first, matrix, valid = chunk
    rows = _piece_rows(q.shape[1], q.shape[0], 4)
    out = np.empty((q.shape[0], min(rows, matrix.shape[0])), dtype=np.float32)
    for offset in range(0, matrix.shape[0], rows):
        piece = matrix[offset : offset + rows]
        scores = out[:, : piece.shape[0]]

        task = partial(_dot_rows, piece, q, scores)
        if pool is None or piece.shape[0] <= SUB_ROWS:
            for start in range(0, piece.shape[0], SUB_ROWS):
                task(start)
        else:
            for _ in pool.map(task, range(0, piece.shape[0], SUB_ROWS)):
                pass
        invalid = None if valid is None else ~valid[offset : offset + piece.shape[0]]
        _merge(
            scores,
            first + offset,
            invalid if invalid is not None and invalid.any() else None,
            excluded,
            best_scores,
            best_rows,
        )


def _dot_rows(
    piece: NDArray[np.float32] | NDArray[np.float16], q: NDArray[np.float32], scores: NDArray[np.float32], start: int
) -> None:
    """``scores[:, start:start+SUB_ROWS]`` = each query's dot product with those rows of ``piece`` (converted)."""
    part = np.asarray(piece[start : start + SUB_ROWS], dtype=np.float32)
    for index in range(q.shape[0]):
        np.vecdot(part, q[index], out=scores[index, start : start + part.shape[0]])


def _scan_many(
    chunk: Chunk,
    q: NDArray[np.float32],
    excluded: NDArray[np.int64],
    best_scores: NDArray[np.float32],
    best_rows: NDArray[np.int64],
) -> None:
    """Score one chunk for many queries: one BLAS product per piece and block of queries."""
    first, matrix, valid = chunk
    count, dimension = q.shape
    rows = _piece_rows(dimension, min(count, QUERY_BLOCK), matrix.dtype.itemsize)
    buffer = None if matrix.dtype == np.float32 else np.empty((min(rows, matrix.shape[0]), dimension), np.float32)
    for offset, piece in float32_pieces(matrix, rows, buffer):
        invalid = None if valid is None else ~valid[offset : offset + piece.shape[0]]
        if invalid is not None and not invalid.any():
            invalid = None
        for start in range(0, count, QUERY_BLOCK):
            stop = min(count, start + QUERY_BLOCK)
            _merge(
                q[start:stop] @ piece.T,
                first + offset,
                invalid,
                excluded[start:stop],
                best_scores[start:stop],
                best_rows[start:stop],
            )


def _merge(
    scores: NDArray[np.float32],
    first: int,
    invalid: NDArray[np.bool_] | None,
    excluded: NDArray[np.int64],
    best_scores: NDArray[np.float32],
    best_rows: NDArray[np.int64],
) -> None:
    """Fold a score block ``[q, n]`` of rows ``first..first+n-1`` into the running top-k (views, in place)."""
    n = scores.shape[1]
    k = best_scores.shape[1]
    if invalid is not None:
        np.copyto(scores, -np.inf, where=invalid)
    mine = np.flatnonzero((excluded >= first) & (excluded < first + n))
    if mine.size:
        scores[mine, excluded[mine] - first] = -np.inf
    top = scores.max(axis=1)
    if np.isnan(top).any():
        np.copyto(scores, -np.inf, where=np.isnan(scores))
        top = scores.max(axis=1)
    threshold = best_scores[:, -1]
    live = (top > threshold) | ((top == threshold) & (first < best_rows[:, -1]))
    live &= top > -np.inf
    if not live.any():
        return
    which = np.flatnonzero(live)
    block = scores if which.size == scores.shape[0] else scores[which]
    take = min(k, n)
    if take < n:
        columns = np.argpartition(block, n - take, axis=1)[:, n - take :]
        picked = np.take_along_axis(block, columns, axis=1)
        _fix_ties(block, columns, picked)
    else:
        columns = np.broadcast_to(np.arange(n, dtype=np.int64), block.shape)
        picked = block
    merged_scores = np.concatenate([best_scores[which], picked], axis=1)
    merged_rows = np.concatenate([best_rows[which], columns + first], axis=1)
    order = np.lexsort((merged_rows, -merged_scores), axis=1)[:, :k]
    best_scores[which] = np.take_along_axis(merged_scores, order, axis=1)
    best_rows[which] = np.take_along_axis(merged_rows, order, axis=1)


def _fix_ties(block: NDArray[np.float32], columns: NDArray[np.intp], picked: NDArray[np.float32]) -> None:
    """Make each row's picked columns its top scores with ties at the boundary going to lower columns.

    ``np.argpartition`` picks any of several equal scores at the k-th place; where the k-th score
    is shared by more columns than there are places left, the places go to the lowest columns.
    """
    take = columns.shape[1]
    boundary = picked.min(axis=1)
    shared = (block >= boundary[:, None]).sum(axis=1) > take
    shared &= boundary > -np.inf  # fewer finite scores than places: all of them are picked anyway
    for row in np.flatnonzero(shared):
        above = np.flatnonzero(block[row] > boundary[row])
        level = np.flatnonzero(block[row] == boundary[row])[: take - above.size]
        columns[row] = np.concatenate([above, level])
        picked[row] = block[row, columns[row]]
