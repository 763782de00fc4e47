"""``ptm similar`` and ``ptm dupes``: nearest neighbours and near-duplicate groups over an index of vectors.

A query is an image (embedded now with the index's own model, weights and
preprocessing) or a path the index already holds (its stored vector; no
model is loaded when every query is one). Exact search streams the index
chunk by chunk (:mod:`ptm_cli.vectors.search`); ``approximate`` builds a
faiss index beside it once (:mod:`ptm_cli.vectors.ann`) and reuses it while
the index file is unchanged.

Duplicates: rows with the same sha256 are exact copies; then every pair of
rows whose cosine is at least the threshold (:mod:`ptm_cli.vectors.dupes`),
joined into groups. In each group the picture with the most pixels (then the
largest file) is marked as the one to keep. Nothing is deleted or moved.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import PtmError, UsageError

if TYPE_CHECKING:
    import numpy as np

    from ..images.inputs import ImageInput
    from ..vectors.indexfile import IndexMeta, VectorIndex
    from ..vectors.search import Chunks
    from ._embedder import Embedder

MAX_K = 10_000


@dataclass(frozen=True)
class Runtime:
    """How query images are embedded: the device, precision and pipeline of ``ptm embed``.

    ``model`` and ``weights`` (None: the index's) must name what made the index;
    ``weights`` may give the path of the index's local weights file as seen from here.
    """

    model: str | None = None
    weights: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 8
    workers: int = 2
    trust_repo: bool = False
    on_note: Callable[[str], None] | None = None
    on_image: Callable[[str, Any], None] | None = None


def embedder_for(meta: IndexMeta, runtime: Runtime) -> Embedder:
    """An embedder that makes vectors like the index's: its model, weights, preprocessing and normalisation."""
    from ..cache.naming import local_weights_file_spelling
    from .base import HUB_PREFIX, ModelOptions
    from .embed import TASK

    if runtime.model is not None and runtime.model != meta.model:
        raise UsageError(
            f"the index holds vectors of {meta.describe()}; queries embedded with {runtime.model} would not be "
            f"comparable with them: drop -m (queries are embedded with {meta.model})"
        )
    hub = meta.model.startswith(HUB_PREFIX)
    weights = runtime.weights or ("DEFAULT" if hub else meta.weights)
    if (
        not hub
        and weights != meta.weights
        and not (local_weights_file_spelling(meta.weights) and local_weights_file_spelling(weights))
    ):
        raise UsageError(
            f"the index holds vectors of {meta.describe()}; queries embedded with -w {weights} would not be "
            f"comparable with them: drop -w, or give the path of the index's own weights file"
        )
    options = ModelOptions(
        model=meta.model,
        weights=weights,
        device=runtime.device,
        precision=runtime.precision,
        resize=meta.resize,
        crop=meta.crop,
        trust_repo=runtime.trust_repo,
        hub_args=meta.hub_args(),
    )
    embedder: Embedder = TASK.plan(options).load(progress=runtime.on_note is not None)
    embedder.normalise = True  # what check_comparable lets through
    if embedder.dimension != meta.dimension:
        raise UsageError(
            f"{meta.model} ({meta.weights}) now gives {embedder.dimension} numbers, but the index holds "
            f"{meta.dimension}; its weights file has changed since the index was made: rebuild the index"
        )
    return embedder


def query_vectors(
    index: VectorIndex, queries: list[ImageInput], runtime: Runtime
) -> tuple[list[np.ndarray | PtmError], list[int | None]]:
    """Each query's unit vector (or the error that stopped it), and its own row when the index holds it."""
    import numpy as np

    rows: dict[str, int] = {}
    for row, path in enumerate(index.paths()):
        if index.valid[row]:
            rows.setdefault(path, row)
    own = [rows.get(item.name) if item.data is None else None for item in queries]
    vectors: list[np.ndarray | PtmError] = [np.zeros(0)] * len(queries)
    known = [i for i, row in enumerate(own) if row is not None]
    if known:
        stored = index.vectors([own[i] for i in known if own[i] is not None])  # type: ignore[misc]
        for position, vector in zip(known, stored, strict=True):
            vectors[position] = vector
    images = [queries[i] for i, row in enumerate(own) if row is None]
    if images:
        from ._embedder import embed_images

        embedder = embedder_for(index.meta, runtime)
        on_image = runtime.on_image
        results = embed_images(
            images,
            embedder,
            batch_size=runtime.batch_size,
            workers=runtime.workers,
            on_note=runtime.on_note,
            on_image=None if on_image is None else lambda item, image: on_image(item.name, image),
        )
        positions = iter(i for i, row in enumerate(own) if row is None)
        for position, result in zip(positions, results, strict=True):
            vectors[position] = result.error if result.error is not None else result.vector  # type: ignore[assignment]
    return vectors, own


def check_comparable(index: VectorIndex) -> None:
    """Searches compare unit vectors (a dot product is then the cosine): an index of raw vectors is refused."""
    if not index.meta.normalised:
        raise UsageError(
            f"{index.path} holds raw vectors (--raw), whose dot products are not cosines; ptm similar and ptm dupes "
            "need an index written without --raw"
        )


def similar(
    index: VectorIndex,
    queries: list[ImageInput],
    *,
    k: int,
    runtime: Runtime,
    approximate: str | None = None,
) -> Iterator[dict[str, Any]]:
    """One record per query, in order: ``{query, neighbours: [{path, score}]}`` or ``{query, error}``."""
    import numpy as np

    if not 1 <= k <= MAX_K:
        raise UsageError(f"-k must be between 1 and {MAX_K}")
    check_comparable(index)
    vectors, own = query_vectors(index, queries, runtime)
    good = [i for i, v in enumerate(vectors) if not isinstance(v, PtmError)]
    paths = index.paths()
    results: dict[int, list[dict[str, Any]]] = {}
    if good:
        matrix = np.stack([np.asarray(vectors[i], dtype=np.float32) for i in good])
        scores, rows = _search(index, matrix, k, [own[i] for i in good], approximate, runtime.on_note)
        for position, score_row, found in zip(good, scores, rows, strict=True):
            results[position] = [_neighbour(paths[int(r)], float(s)) for s, r in zip(score_row, found, strict=True)]
    for position, item in enumerate(queries):
        vector = vectors[position]
        if isinstance(vector, PtmError):
            yield {"query": item.name, "error": vector.record()}
        else:
            yield {"query": item.name, "neighbours": results[position]}


def _neighbour(path: str, score: float) -> dict[str, Any]:
    """A neighbour's record: its score as a cosine (float16 vectors can round a copy's to just over 1)."""
    found: dict[str, Any] = {"path": path, "score": round(min(1.0, max(-1.0, score)), 6)}
    if path != "-" and not os.path.lexists(path):
        found["missing"] = True  # the index still has its row; `ptm embed --update` drops it
    return found


def _search(
    index: VectorIndex,
    queries: np.ndarray,
    k: int,
    own: list[int | None],
    approximate: str | None,
    on_note: Callable[[str], None] | None,
) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    from ..vectors import search

    if approximate is None:
        return search.nearest(index.chunks, queries, k, exclude=own)
    found = approximate_index(index, approximate, on_note)
    scores, rows = ann_search(found, queries, k + 1)
    kept_scores, kept_rows = [], []
    for score_row, row_row, mine in zip(scores, rows, own, strict=True):
        keep = row_row != (-1 if mine is None else mine)
        kept_scores.append(score_row[keep][:k])
        kept_rows.append(row_row[keep][:k])
    width = min((len(r) for r in kept_rows), default=0)
    return np.stack([s[:width] for s in kept_scores]), np.stack([r[:width] for r in kept_rows])


def ann_search(found: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from ..vectors import ann

    return ann.search(found, queries, k)


def approximate_index(index: VectorIndex, kind: str, on_note: Callable[[str], None] | None) -> Any:
    """The faiss index of ``kind`` beside the index file: loaded when it is current, else built and saved."""
    from ..vectors import ann
    from ..vectors.indexfile import identity

    path = ann_path(index.path, kind)
    stamp = identity(index.path)
    trusted = _ours(path)
    found = ann.load(path, stamp) if trusted else None
    if found is not None:
        return found
    if not trusted and on_note is not None:
        on_note(f"{path.name} is another user's or writable by others; building a faiss index in memory instead")
    if on_note is not None:
        on_note(f"building a {kind} index of {int(index.valid.sum())} vectors (once; it is kept in {path.name})")
    built = ann.build(index.chunks, index.meta.dimension, len(index), kind=kind)
    if not trusted:
        return built
    try:
        ann.save(built, path, stamp)
    except UsageError as exc:
        if on_note is not None:
            on_note(f"{exc}; searching without keeping it")
    return built


def _ours(path: Path) -> bool:
    """Whether a faiss file there (and its sidecar) may be read: absent, or this user's and writable by no one else.

    faiss parses its files in C++ without checks against hostile input, so a file another user
    could have planted beside a shared index is neither read nor replaced.
    """
    from ..vectors.ann import sidecar_path

    for candidate in (path, sidecar_path(path)):
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            continue
        except OSError:
            return False
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
            return False
    return True


def ann_path(index_path: Path, kind: str) -> Path:
    """Where the faiss index of ``kind`` for an index file is kept: beside it."""
    return index_path.with_name(f"{index_path.name}.{kind}.faiss")


# --- near-duplicates ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    path: str
    bytes: int | None
    sha256: str | None


def duplicate_groups(members: list[Member], chunks: Chunks, threshold: float) -> Iterator[dict[str, Any]]:
    """The groups of near-duplicates among ``members`` (row order), as records with the one to keep marked."""
    from ..vectors.dupes import group_rows, similar_pairs

    if not -1.0 <= threshold <= 1.0:
        raise UsageError("--threshold is a cosine: between -1 and 1 (0.95 finds near-copies)")
    same: dict[str, list[int]] = {}
    for row, member in enumerate(members):
        if member.sha256:
            same.setdefault(member.sha256, []).append(row)
    copies = [rows for rows in same.values() if len(rows) > 1]
    groups = group_rows(len(members), similar_pairs(chunks, threshold), same=copies)
    sha_of = [member.sha256 for member in members]
    for number, group in enumerate(groups, start=1):
        files = []
        for row in group.rows:
            member = members[row]
            width, height = _size_of(member.path)
            files.append(
                {
                    "path": member.path,
                    "width": width,
                    "height": height,
                    "bytes": member.bytes,
                    "score": round(float(group.best.get(row, 1.0)), 6),
                    "exact_copy": bool(member.sha256) and len(same.get(sha_of[row] or "", ())) > 1,
                }
            )
        keep = max(range(len(files)), key=lambda i: (_pixels(files[i]), files[i]["bytes"] or 0, -i))
        for i, entry in enumerate(files):
            entry["keep"] = i == keep
        yield {"group": number, "size": len(files), "files": files}


def _pixels(entry: Mapping[str, Any]) -> int:
    return int(entry["width"] or 0) * int(entry["height"] or 0)


def _size_of(path: str) -> tuple[int | None, int | None]:
    """An image's width and height from its header (None when it cannot be read now)."""
    from ..images.decode import image_size

    return image_size(Path(path))


def index_members(index: VectorIndex) -> list[Member]:
    sizes = index.rows.column("bytes").to_pylist()
    sha = index.rows.column("sha256").to_pylist()
    return [Member(path, size, digest) for path, size, digest in zip(index.paths(), sizes, sha, strict=True)]


def embedded_members(
    inputs: Iterable[ImageInput], embedder: Embedder, runtime: Runtime
) -> tuple[list[Member], Chunks, list[dict[str, Any]]]:
    """Images embedded now (``ptm dupes IMAGES``): members, their vectors as a chunk source, and error records."""
    import numpy as np

    from ..vectors.search import array_chunks
    from ._embedder import embed_images

    members: list[Member] = []
    vectors: list[np.ndarray] = []
    valid: list[bool] = []
    errors: list[dict[str, Any]] = []
    for result in embed_images(
        inputs, embedder, batch_size=runtime.batch_size, workers=runtime.workers, on_note=runtime.on_note
    ):
        facts = result.facts
        members.append(Member(result.input, facts.bytes if facts else None, facts.sha256 if facts else None))
        if result.error is not None or result.vector is None:
            errors.append({"input": result.input, "error": (result.error or UsageError("no vector")).record()})
            vectors.append(np.zeros(embedder.dimension, np.float32))
            valid.append(False)
        else:
            vectors.append(result.vector.astype(np.float32))
            valid.append(True)
    matrix = np.stack(vectors) if vectors else np.zeros((0, embedder.dimension), np.float32)
    return members, array_chunks(matrix, np.asarray(valid, dtype=bool)), errors


# --- the results page ------------------------------------------------------------------------------------------


class SimilarView:
    """How ``ptm similar``'s records look on a results page: the query, then its neighbours with their scores."""

    name = "similar"
    title = "Similar images"

    def report_view(self, record: Mapping[str, Any]) -> dict[str, Any]:
        neighbours = record.get("neighbours") or []
        return {
            "lines": [f"{len(neighbours)} nearest by cosine"],
            "gallery": [{"name": n["path"], "caption": f"{n['score']:.4f}  {n['path']}"} for n in neighbours],
        }


class DupesView:
    """How ``ptm dupes``'s groups look on a results page: side by side, the one to keep outlined."""

    name = "dupes"
    title = "Near-duplicates"

    def report_view(self, record: Mapping[str, Any]) -> dict[str, Any]:
        from ..output.records import human_size

        gallery = []
        for entry in record.get("files") or []:
            size = f"{entry['width']}x{entry['height']}" if entry.get("width") else "size unknown"
            weight = human_size(entry["bytes"]) if entry.get("bytes") is not None else ""
            how = "exact copy" if entry.get("exact_copy") else f"{entry['score']:.4f}"
            keep = "keep  " if entry.get("keep") else ""
            gallery.append(
                {
                    "name": entry["path"],
                    "caption": f"{keep}{size}  {weight}  {how}  {entry['path']}",
                    "keep": entry["keep"],
                }
            )
        return {"lines": [f"{record.get('size')} pictures"], "gallery": gallery}


def picture(path: str) -> Any:
    """The image at ``path`` for a thumbnail, or None when it cannot be read now.

    Only a regular file is read: the paths come from an index, which may name a FIFO (that would
    block the page forever) or a device.
    """
    from ..images.decode import load_image

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        return load_image(Path(path), name=path)
    except (PtmError, OSError):
        return None
