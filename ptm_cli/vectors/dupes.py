"""Near-duplicate vectors: every pair above a threshold, exactly, and the groups the pairs make.

This module owns ``ptm dupes``'s arithmetic. :func:`similar_pairs` walks the upper triangle of
the index's self-similarity matrix block by block; :func:`group_rows` joins the pairs (and rows
known to be byte-identical) into groups with a union-find.

Why it is built this way:

* exact, not approximate: a near-duplicate report that misses pairs is worse than a slow one, and
  the blocked product is the same arithmetic faiss's exact range search does, with half the work:
  the matrix is symmetric, so block ``i`` meets only blocks ``j >= i`` (and in a diagonal block
  only the rows above the column count);
* bounded memory whatever N: an outer block of valid rows (float32, copied once), an inner block
  re-read for each outer block (one pass over the chunks per outer block: cheap for a memory
  map, a re-read for Parquet), and one block of scores reused for every product; the pairs are
  taken out of it a slab of rows at a time, and only from rows whose maximum reaches the
  threshold (comparing the whole block instead cost a quarter of the product). About 100 MiB
  at the default sizes (4096-row blocks);
* invalid rows are dropped when a block is gathered, so they cost nothing later;
* a pair comes out as ``(lower row, higher row, score)``; pairs are never stored here, and the
  union-find keeps only one parent and one best score per row that appears in a pair.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from .search import Chunks, check_chunk

# Rows of the square blocks: a 4096 x 4096 float32 score block is 64 MiB; its product (512-d) took
# 120 ms on 2 cores, the maximum of each row that finds the rows with pairs 3 ms.
BLOCK_ROWS = 4096
# Cap on a block's own bytes (float32), for wide vectors.
BLOCK_BYTES = 32 << 20
# Rows of a score block whose pairs are extracted together: bounds the index arrays when a low
# threshold makes most scores pairs (256 x 4096 scores: at most a million pairs at a time).
SLAB_ROWS = 256

PairBlock = tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]


def block_rows_for(dimension: int) -> int:
    """The default rows of a block for vectors of ``dimension`` items."""
    return max(256, min(BLOCK_ROWS, BLOCK_BYTES // (4 * max(1, dimension))))


def _gathered(chunks: Chunks, rows: int, skip: int = 0) -> Iterator[tuple[int, NDArray[np.int64], NDArray[np.float32]]]:
    """The valid rows of one pass over ``chunks``, regrouped into float32 blocks of ``rows`` rows.

    Yields ``(position, row numbers, matrix)`` where ``position`` counts the valid rows before the
    block in the pass; the first ``skip`` valid rows are passed over without being copied. The
    matrix and the row numbers are views of buffers reused for the next block.
    """
    buffer: NDArray[np.float32] | None = None
    numbers = np.empty(rows, dtype=np.int64)
    filled = 0  # rows in the buffer
    start = 0  # position of the buffer's first row
    seen = 0  # valid rows before the current chunk
    dimension = -1
    for chunk in chunks():
        first, matrix, valid = chunk
        if dimension < 0 and matrix.ndim == 2:
            dimension = matrix.shape[1]
        check_chunk(chunk, dimension, "the index's first vectors have")
        picked = None if valid is None or valid.all() else np.flatnonzero(valid)
        count = matrix.shape[0] if picked is None else picked.size
        begin = max(0, skip - seen)  # the first of this chunk's valid rows to use
        while begin < count:
            if buffer is None:
                buffer = np.empty((rows, dimension), dtype=np.float32)
            if filled == 0:
                start = seen + begin
            take = min(count - begin, rows - filled)
            if picked is None:
                np.copyto(buffer[filled : filled + take], matrix[begin : begin + take], casting="same_kind")
                numbers[filled : filled + take] = np.arange(first + begin, first + begin + take)
            else:
                chosen = picked[begin : begin + take]
                np.copyto(buffer[filled : filled + take], matrix[chosen], casting="same_kind")
                numbers[filled : filled + take] = chosen + first
            filled += take
            begin += take
            if filled == rows:
                yield start, numbers, buffer
                filled = 0
        seen += count
    if filled and buffer is not None:
        yield start, numbers[:filled], buffer[:filled]


def _dimension(chunks: Chunks) -> int | None:
    """The vectors' dimension, from the first chunk of a pass (None when there is none)."""
    for _, matrix, _ in chunks():
        if matrix.ndim == 2:
            return int(matrix.shape[1])
        break
    return None


def pair_blocks(chunks: Chunks, threshold: float, *, block_rows: int | None = None) -> Iterator[PairBlock]:
    """The pairs of :func:`similar_pairs` as arrays ``(lower rows, higher rows, scores)``, one block at a time."""
    if block_rows is not None and block_rows < 1:
        raise ValueError(f"a block needs at least one row, not {block_rows}")
    dimension = _dimension(chunks)
    if dimension is None:
        return
    size = block_rows or block_rows_for(dimension)
    level = np.float32(threshold)
    # One score block for the whole run, products written into (a view of) it: a fresh 64 MiB array
    # per product would cost page faults, and two of them alive at once.
    block: NDArray[np.float32] | None = None
    for outer_position, outer_numbers, outer in _gathered(chunks, size):
        for position, numbers, inner in _gathered(chunks, size, skip=outer_position):
            if block is None:  # the first product is the largest: a whole block (or the whole index) squared
                block = np.empty((outer.shape[0], inner.shape[0]), dtype=np.float32)
            scores = np.matmul(outer, inner.T, out=block[: outer.shape[0], : inner.shape[0]])
            diagonal = position == outer_position  # the same rows on both sides (same block size, same start)
            if diagonal:
                np.fill_diagonal(scores, -np.inf)  # a row with itself is no pair
            # Most rows of a block have no score above the threshold: look at the others only, a
            # slab of them at a time (a low threshold can put millions of pairs in one block).
            # (written as "not below" so that a row with a NaN score is looked at, not skipped whole)
            hits = np.flatnonzero(~(scores.max(axis=1) < level))
            for start in range(0, hits.size, SLAB_ROWS):
                slab = hits[start : start + SLAB_ROWS]
                found = scores[slab]
                i, j = np.nonzero(found >= level)
                values = found[i, j]
                i = slab[i]
                if diagonal:  # each pair is there twice: keep the one above the diagonal
                    upper = i < j
                    i, j, values = i[upper], j[upper], values[upper]
                if i.size:
                    rows_i, rows_j = outer_numbers[i], numbers[j]
                    yield np.minimum(rows_i, rows_j), np.maximum(rows_i, rows_j), values


def similar_pairs(
    chunks: Chunks, threshold: float, *, block_rows: int | None = None
) -> Iterator[tuple[int, int, float]]:
    """Every pair ``(i, j, score)`` of valid rows with ``i < j`` and inner product ``>= threshold``, exactly.

    Works through the upper triangle of the self-similarity matrix in blocks of ``block_rows``
    valid rows (default :func:`block_rows_for` the dimension), so memory stays bounded whatever
    the number of rows; it makes one pass over ``chunks`` per block. Scores are float32 inner
    products, compared with ``threshold`` rounded to float32. Pairs come block by block, not sorted.
    """
    for lower, higher, scores in pair_blocks(chunks, threshold, block_rows=block_rows):
        yield from zip(lower.tolist(), higher.tolist(), scores.tolist(), strict=True)


@dataclass(frozen=True)
class Group:
    """Rows that are near-duplicates of one another, through a chain of pairs if need be.

    ``rows`` ascending; ``best[row]`` is the row's highest score to another member among the pairs
    seen (1.0 for an exact copy).
    """

    rows: tuple[int, ...]
    best: dict[int, float] = field(hash=False)


def group_rows(
    row_count: int,
    pairs: Iterable[tuple[int, int, float]],
    same: Iterable[Sequence[int]] = (),
) -> list[Group]:
    """Join ``pairs`` (and the ``same`` groups of exact copies) into groups of two or more rows.

    A union-find over the rows that appear: ``a~b`` and ``b~c`` make one group ``{a, b, c}``. The
    pairs are consumed as they come, never stored; memory is one parent and one best score per
    row that appears. Groups come sorted by their smallest row. Raises ``ValueError`` for a row
    outside ``0..row_count-1``.
    """
    parent: dict[int, int] = {}
    best: dict[int, float] = {}

    def root(row: int) -> int:
        top = row
        while (up := parent.get(top, top)) != top:
            top = up
        while row != top:  # path compression
            parent[row], row = top, parent[row]
        return top

    def join(a: int, b: int) -> None:
        for row in (a, b):
            if not 0 <= row < row_count:
                raise ValueError(f"row {row} is outside the index's {row_count} rows")
        ra, rb = root(a), root(b)
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    def score(row: int, value: float) -> None:
        if value > best.get(row, -np.inf):
            best[row] = value

    for a, b, value in pairs:
        join(a, b)
        score(a, value)
        score(b, value)
    for copies in same:
        members = sorted(set(copies))
        for member in members[1:]:
            join(members[0], member)
        if len(members) > 1:
            for member in members:
                score(member, 1.0)
    members_of: dict[int, list[int]] = {}
    for row in parent:
        members_of.setdefault(root(row), []).append(row)
    groups = [sorted(rows) for rows in members_of.values() if len(rows) > 1]
    groups.sort(key=lambda rows: rows[0])
    return [Group(rows=tuple(rows), best={row: best[row] for row in rows}) for rows in groups]
