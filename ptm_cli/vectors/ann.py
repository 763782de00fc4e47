"""Approximate nearest-neighbour search with faiss, for indexes too big to scan at every query.

This module owns the faiss side of ``ptm similar``: building an HNSW graph or an IVF index from
a chunk source, keeping it on disk beside the vectors, and searching it with the same result
conventions as the exact :func:`ptm_cli.vectors.search.nearest`.

Why it is built this way:

* faiss is an optional extra (``pip install 'ptm[faiss]'``): it is imported inside the functions
  that need it, so the exact search and ``ptm dupes`` never load it, and its absence is a
  :class:`~ptm_cli.errors.MissingDependency` that says how to install it;
* only valid rows are added, each with its row number as its faiss id (``IndexIDMap2`` around
  HNSW, the IVF index's own ids), so results name rows of the index file directly;
* the settings lean towards recall rather than speed, since an exact scan is the alternative
  (about 0.1 s a query for 1,000,000 x 512 on 2 cores): HNSW ``M=32``, ``efConstruction=80``,
  ``efSearch=256``; IVF with about ``4*sqrt(N)`` lists trained on at most 100,000 rows, visiting
  a sixteenth of them (at least 32). On well-clustered vectors both reached a recall@10 of 1.0;
  on weakly clustered 100,000 x 128 vectors (noise twice the size of the cluster centres, a
  hard case) HNSW reached 0.92 and IVF 0.75: raise ``efSearch`` or ``nprobe`` for more;
* a saved index is a cache: a JSON sidecar records the identity of the vectors it was built from
  (a string the caller derives from the index file), so a stale one is detected and rebuilt.
  Files are written whole (temporary file, then rename), the sidecar last and removed first, so
  a crash never leaves a sidecar vouching for the wrong index; a damaged index file is a clear
  ptm error, not a crash.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from ..errors import MissingDependency, UsageError, first_line
from ..runtime.fsutil import write_atomic, write_atomic_with
from .search import Chunks, check_chunk, float32_pieces

KINDS = ("hnsw", "ivf")
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 256
IVF_TRAIN_ROWS = 100_000
IVF_NPROBE = 32  # at least; a sixteenth of the lists for a big index (see ivf_probes)
IVF_POINTS_PER_LIST = 39  # faiss's k-means wants at least this many training points per centroid
ADD_ROWS = 16_384  # rows converted and added at a time
SIDECAR_FORMAT = 1


class FaissIndex(Protocol):
    """What ptm uses of a faiss index (faiss's own index classes have it)."""

    @property
    def d(self) -> int:
        """The vectors' dimension."""

    @property
    def ntotal(self) -> int:
        """The number of vectors in the index."""

    def search(self, x: NDArray[np.float32], k: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """faiss's search: ``(scores [Q, k], ids [Q, k])``, ``-1`` where fewer than k were found."""


def _faiss() -> ModuleType:
    try:
        import faiss
    except ImportError:
        raise MissingDependency(
            "approximate search needs the faiss package; install it with `pip install 'ptm[faiss]'`"
        ) from None
    return faiss


def sidecar_path(path: Path) -> Path:
    """The JSON file beside a saved faiss index that says what it was built from."""
    return path.with_name(path.name + ".json")


def _add(index: object, chunks: Chunks, dimension: int) -> None:
    """Add every valid row of ``chunks`` to ``index`` with its row number as its id."""
    buffer = np.empty((ADD_ROWS, dimension), dtype=np.float32)
    for chunk in chunks():
        check_chunk(chunk, dimension, "the faiss index is built for")
        first, matrix, valid = chunk
        for offset, piece in float32_pieces(matrix, ADD_ROWS, buffer):
            ids = np.arange(first + offset, first + offset + piece.shape[0], dtype=np.int64)
            if valid is not None:
                keep = valid[offset : offset + piece.shape[0]]
                if not keep.all():
                    piece, ids = piece[keep], ids[keep]
            if ids.size:
                index.add_with_ids(np.ascontiguousarray(piece), ids)  # type: ignore[attr-defined]


def _training_sample(chunks: Chunks, dimension: int, row_count: int) -> NDArray[np.float32]:
    """At most :data:`IVF_TRAIN_ROWS` valid rows picked at random (fixed seed) in one pass."""
    size = min(row_count, IVF_TRAIN_ROWS)
    wanted = np.zeros(0, dtype=np.int64)
    if size > 0:
        wanted = np.sort(np.random.default_rng(0).choice(row_count, size=size, replace=False))
    parts: list[NDArray[np.float32]] = []
    for chunk in chunks():
        check_chunk(chunk, dimension, "the faiss index is built for")
        first, matrix, valid = chunk
        lo, hi = np.searchsorted(wanted, [first, first + matrix.shape[0]])
        local = wanted[lo:hi] - first
        if valid is not None:
            local = local[valid[local]]
        if local.size:
            parts.append(np.asarray(matrix[local], dtype=np.float32))
    if not parts:
        return np.zeros((0, dimension), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(parts))


def ivf_lists(row_count: int, sample_rows: int) -> int:
    """An IVF index's list count: about ``4*sqrt(N)``, no more than the training sample supports."""
    return max(1, min(round(4 * math.sqrt(max(1, row_count))), sample_rows // IVF_POINTS_PER_LIST))


def ivf_probes(lists: int) -> int:
    """The lists an IVF search visits: a sixteenth of them, at least :data:`IVF_NPROBE`, at most all."""
    return min(lists, max(IVF_NPROBE, lists // 16))


def _tune(index: object, kind: str) -> None:
    """Set the search-time settings (they are in the file too; this applies the current ones)."""
    faiss = _faiss()
    inner = faiss.downcast_index(index.index) if kind == "hnsw" else faiss.downcast_index(index)  # type: ignore[attr-defined]
    if kind == "hnsw":
        inner.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        inner.nprobe = ivf_probes(int(inner.nlist))


def build(chunks: Chunks, dimension: int, row_count: int, *, kind: str = "hnsw") -> FaissIndex:
    """Build a faiss index of ``kind`` ("hnsw" or "ivf") over the valid rows of ``chunks``.

    ``row_count`` is the index's number of rows (valid or not): it sizes the IVF index and its
    training sample. Ids are row numbers. "hnsw" makes one pass, "ivf" two (a training sample,
    then the rows). Raises :class:`UsageError` for an unknown kind or an IVF index without any
    valid row, :class:`MissingDependency` without faiss.
    """
    if kind not in KINDS:
        raise UsageError(f"unknown approximate index kind {kind!r}; use one of {', '.join(KINDS)}")
    faiss = _faiss()
    if kind == "hnsw":
        graph = faiss.IndexHNSWFlat(dimension, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index = faiss.IndexIDMap2(graph)
    else:
        sample = _training_sample(chunks, dimension, row_count)
        if sample.shape[0] == 0:
            raise UsageError("the index has no valid vectors to train an IVF index on")
        quantizer = faiss.IndexFlatIP(dimension)
        index = faiss.IndexIVFFlat(
            quantizer, dimension, ivf_lists(row_count, sample.shape[0]), faiss.METRIC_INNER_PRODUCT
        )
        index.train(sample)
        del sample
    _add(index, chunks, dimension)
    _tune(index, kind)
    built: FaissIndex = index
    return built


def _kind(index: object) -> str:
    faiss = _faiss()
    if isinstance(index, faiss.IndexIDMap2) and isinstance(faiss.downcast_index(index.index), faiss.IndexHNSWFlat):
        return "hnsw"
    if isinstance(faiss.downcast_index(index), faiss.IndexIVFFlat):
        return "ivf"
    raise UsageError(f"ptm saves only the faiss indexes it builds, not a {type(index).__name__}")


def save(index: FaissIndex, path: Path, identity: str) -> None:
    """Write ``index`` to ``path`` and its sidecar ``path.json`` (identity, kind, dimension, rows, faiss version).

    Both files are written whole; the old sidecar goes first and the new one is written last, so
    no sidecar ever describes another index. Raises :class:`UsageError` when they cannot be written.
    """
    faiss = _faiss()
    kind = _kind(index)
    sidecar = sidecar_path(path)
    facts = {
        "format": SIDECAR_FORMAT,
        "identity": identity,
        "kind": kind,
        "dimension": int(index.d),
        "rows": int(index.ntotal),
        "faiss": str(faiss.__version__),
    }
    try:
        with contextlib.suppress(FileNotFoundError):
            sidecar.unlink()
        write_atomic_with(path, lambda tmp: faiss.write_index(index, str(tmp)), replace=True)
        write_atomic(sidecar, (json.dumps(facts, indent=2) + "\n").encode(), replace=True)
    except (OSError, RuntimeError) as exc:
        raise UsageError(f"cannot write the faiss index {path}: {first_line(exc)}") from exc


def load(path: Path, identity: str) -> FaissIndex | None:
    """The index saved at ``path`` for ``identity``; None when absent or stale (built from other vectors).

    Raises :class:`UsageError` when the sidecar vouches for the file but faiss cannot read it
    (truncated, corrupt) or it does not match the sidecar.
    """
    sidecar = sidecar_path(path)
    try:
        facts = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(facts, dict) or facts.get("format") != SIDECAR_FORMAT or facts.get("identity") != identity:
        return None
    if facts.get("kind") not in KINDS or not path.is_file():
        return None
    faiss = _faiss()
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise UsageError(
            f"the faiss index {path} is damaged ({_faiss_reason(exc)}); delete it and {sidecar.name} to rebuild it"
        ) from exc
    if _kind(index) != facts["kind"] or index.d != facts.get("dimension") or index.ntotal != facts.get("rows"):
        raise UsageError(f"the faiss index {path} does not match {sidecar.name}; delete both to rebuild it")
    _tune(index, str(facts["kind"]))
    loaded: FaissIndex = index
    return loaded


def _faiss_reason(exc: BaseException) -> str:
    """faiss's messages start with the C++ function's signature: keep what follows ``Error:``."""
    text = " ".join(str(exc).split())
    return first_line(ValueError(text.rpartition("Error: ")[2] or text), 120)


def search(index: FaissIndex, queries: NDArray[np.float32], k: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The approximate top-``k`` rows for each query, with :func:`~ptm_cli.vectors.search.nearest`'s conventions.

    Returns ``(scores [Q, k'], rows [Q, k'])``: ``k'`` is the fewest results any query got
    (faiss's ``-1`` fillers dropped), each query's sorted by score, ties by lower row. Raises
    :class:`UsageError` when the queries' dimension is not the index's.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2:
        raise ValueError(f"queries are [Q, dimension], not of shape {q.shape}")
    if q.shape[1] != index.d:
        raise UsageError(
            f"the queries have dimension {q.shape[1]} but the faiss index's vectors have dimension {index.d};"
            " use vectors from the same model"
        )
    take = min(k, int(index.ntotal))
    if take <= 0 or q.shape[0] == 0:
        return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
    scores, rows = index.search(q, take)
    found = int((rows >= 0).sum(axis=1).min())
    scores = np.asarray(scores[:, :found], dtype=np.float32)
    rows = np.asarray(rows[:, :found], dtype=np.int64)
    order = np.lexsort((rows, -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)


def recall_at_k(approx_rows: NDArray[np.int64], exact_rows: NDArray[np.int64]) -> float:
    """The mean fraction of each query's exact top-k rows that the approximate search found.

    Both are ``[Q, k]`` (the approximate one may have fewer columns); negative rows are ignored.
    Queries with no exact rows do not count; with none at all the recall is 1.0.
    """
    if approx_rows.shape[0] != exact_rows.shape[0]:
        raise ValueError(f"{approx_rows.shape[0]} approximate and {exact_rows.shape[0]} exact result rows")
    fractions = []
    for approx, exact in zip(approx_rows, exact_rows, strict=True):
        wanted = set(exact[exact >= 0].tolist())
        if wanted:
            fractions.append(len(wanted & set(approx.tolist())) / len(wanted))
    return float(np.mean(fractions)) if fractions else 1.0
