"""``ptm embed -o INDEX``: writing an index, bringing one up to date, and making one from a batch job.

An index has one row per path (the first time a run names a path; a path
named twice is embedded once). A fresh index lists its rows in input order.
``--update`` keeps the rows of files that have not changed (same size and
modification time, or else the same sha256), drops the rows of files that
are gone, and embeds the rest; the new index holds the kept rows in their
old order, then the embedded ones in input order. A failed input has a row
with its error and no vector, and the next ``--update`` tries it again.

Paths are kept as the user wrote them; a relative path is looked up from
the current folder, so run ``--update`` from where the index was made (or
give absolute paths).

The index is staged beside its path and replaces it in one rename when the
last row is in (:class:`~ptm_cli.vectors.indexfile.IndexWriter`): an
interrupted run (Ctrl-C, a full disk, a crash) leaves the old index as it was.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import PtmError, UsageError
from .base import Outcome

if TYPE_CHECKING:
    import numpy as np

    from ..images.inputs import ImageInput
    from ..vectors.indexfile import IndexMeta, Row, VectorIndex
    from ._embedder import Embedder, Embedding, FileFacts

RunEmbeddings = Callable[[list["ImageInput"]], Generator["Embedding", None, None]]


def write_index(
    path: Path,
    embedder: Embedder,
    inputs: list[ImageInput],
    *,
    update: bool,
    dtype: str | None,
    replace: bool,
    run: RunEmbeddings,
    on_note: Callable[[str], None] | None = None,
) -> Iterator[Outcome]:
    """Embed ``inputs`` into the index at ``path``; one outcome per input, in input order."""
    from ..vectors.indexfile import IndexWriter, open_index
    from ._embedder import index_meta, to_record

    old = open_index(path) if update and path.exists() else None
    meta = index_meta(embedder, dtype=dtype or (old.meta.dtype if old is not None else "float32"))
    if old is not None:
        old.meta.check_matches(meta, what="this command", path=path)
        if old.meta.dtype != meta.dtype:
            raise UsageError(f"{path} stores {old.meta.dtype}; --update keeps it (drop --dtype, or write a new index)")
    plan = _Plan(old, inputs)
    with IndexWriter(path, meta, len(plan.kept) + plan.new_rows, replace=replace) as writer:
        if old is not None:
            for row in _kept_rows(old, plan):
                writer.add(row)
            if on_note is not None:
                on_note(
                    f"{path}: {len(plan.unchanged)} unchanged, {len(plan.to_run)} to embed, "
                    f"{plan.gone} gone ({'its row' if plan.gone == 1 else 'their rows'} dropped)"
                )
        written: set[str] = set()
        repeated: dict[str, dict[str, Any]] = {}
        results = run(plan.to_run)
        try:
            for item in inputs:
                facts = plan.unchanged.get(item.name)
                if facts is not None:
                    yield Outcome(_unchanged_record(item.name, facts, meta))
                    continue
                if item.name in written:  # the same path named again: one row, and its record again
                    yield Outcome(repeated[item.name])
                    continue
                result = next(results)
                assert result.input == item.name
                written.add(item.name)
                writer.add(_row(result, meta.dtype))
                record = to_record(result, embedder, with_vector=False)
                repeated[item.name] = record
                yield Outcome(record)
        finally:
            results.close()
        writer.commit()
    if on_note is not None:
        rows = len(plan.kept) + plan.new_rows
        on_note(f"wrote {path}: {rows} row{'' if rows == 1 else 's'} of {meta.describe()}")


class _Plan:
    """Which old rows stay, which inputs are unchanged, which run, for an update (or a fresh index)."""

    def __init__(self, old: VectorIndex | None, inputs: list[ImageInput]):
        self.kept: list[int] = []  # old rows to keep, in old order
        self.touched: dict[int, int] = {}  # kept rows whose file has a new mtime but the same content
        self.unchanged: dict[str, FileFacts] = {}
        self.gone = 0
        named = {item.name: item for item in inputs}
        self.to_run = list(_first_of_each(inputs))
        if old is None:
            self.new_rows = len(self.to_run)
            return
        paths = old.paths()
        sha = old.rows.column("sha256").to_pylist()
        size = old.rows.column("bytes").to_pylist()
        mtime = old.rows.column("mtime_ns").to_pylist()
        seen: set[str] = set()
        for row, name in enumerate(paths):
            if name in seen:
                continue
            seen.add(name)
            item = named.get(name)
            if item is None:
                if name != "-" and os.path.lexists(name):
                    self.kept.append(row)
                else:
                    self.gone += 1
                continue
            if not old.valid[row] or item.path is None or sha[row] is None:
                continue  # failed last time, or stdin: embed again
            facts = _same_file(item.path, sha[row], size[row], mtime[row])
            if facts is not None:
                self.kept.append(row)
                self.unchanged[name] = facts
                if facts.mtime_ns != mtime[row]:
                    self.touched[row] = facts.mtime_ns or 0
        self.to_run = [item for item in self.to_run if item.name not in self.unchanged]
        self.new_rows = len(self.to_run)


def _first_of_each(inputs: Iterable[ImageInput]) -> Iterator[ImageInput]:
    seen: set[str] = set()
    for item in inputs:
        if item.name not in seen:
            seen.add(item.name)
            yield item


def _same_file(path: Path, sha256: str, size: int | None, mtime_ns: int | None) -> FileFacts | None:
    """The file's facts when its content is what the index holds (by size and time, else by hash); else None."""
    from ._embedder import FileFacts

    try:
        info = os.stat(path)
    except OSError:
        return None
    if info.st_size != size:
        return None
    if info.st_mtime_ns == mtime_ns:
        return FileFacts(sha256, info.st_size, mtime_ns)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError:
        return None
    return FileFacts(sha256, info.st_size, info.st_mtime_ns) if digest.hexdigest() == sha256 else None


def _kept_rows(old: VectorIndex, plan: _Plan) -> Iterator[Row]:
    """The old index's kept rows with their vectors, read chunk by chunk."""
    from ..vectors.indexfile import Row

    paths = old.paths()
    sha = old.rows.column("sha256").to_pylist()
    size = old.rows.column("bytes").to_pylist()
    mtime = old.rows.column("mtime_ns").to_pylist()
    errors = old.rows.column("error").to_pylist()
    wanted = iter(plan.kept)
    row = next(wanted, None)
    for start, block, valid in old.chunks():
        while row is not None and row < start + len(block):
            vector = block[row - start].copy() if valid is None or valid[row - start] else None
            if vector is not None:
                _check_vector(vector, old, paths[row])
            yield Row(paths[row], sha[row], size[row], plan.touched.get(row, mtime[row]), vector, errors[row])
            row = next(wanted, None)


def _check_vector(vector: np.ndarray, old: VectorIndex, path: str) -> None:
    """A vector kept from an old index must be one ptm could have written: finite, and of unit length if normalised."""
    import numpy as np

    if not np.isfinite(vector).all():
        raise UsageError(f"{old.path}: the row of {path} holds NaN or infinity; rebuild the index with --force")
    if old.meta.normalised and not 0.98 < float(np.linalg.norm(vector.astype(np.float32))) < 1.02:
        raise UsageError(
            f"{old.path}: the row of {path} is not of unit length as the index says; rebuild the index with --force"
        )


def _row(result: Embedding, dtype: str) -> Row:
    from ..vectors.indexfile import Row

    facts = result.facts
    error = None if result.error is None else f"{result.error.kind}: {result.error}"
    vector = None if result.vector is None else result.vector.astype(dtype)
    if facts is None:
        return Row(result.input, None, None, None, vector, error)
    return Row(result.input, facts.sha256, facts.bytes, facts.mtime_ns, vector, error)


def _unchanged_record(name: str, facts: FileFacts, meta: IndexMeta) -> dict[str, Any]:
    return {
        "input": name,
        "model": meta.model,
        "weights": meta.weights,
        "dimension": meta.dimension,
        "sha256": facts.sha256,
        "bytes": facts.bytes,
        "mtime_ns": facts.mtime_ns,
        "unchanged": True,
    }


# --- from a batch job ----------------------------------------------------------------------------------------


def index_from_records(
    records: Callable[[], Iterator[dict[str, Any]]], path: Path, job: Mapping[str, Any], *, replace: bool
) -> str:
    """The index ``ptm embed`` would have written, from a ``ptm batch embed`` job's records (two passes)."""
    import numpy as np

    from ..vectors.indexfile import IndexMeta, IndexWriter, Row, check_target

    check_target(path, replace=replace)
    names: set[str] = set()
    first_ok: dict[str, Any] | None = None
    for record in records():
        names.add(record["input"])
        if first_ok is None and "vector" in record:
            first_ok = record
    if first_ok is None:
        raise UsageError("the job has no vectors (every input failed, or its shards are missing); nothing to index")
    dtype = str(job.get("dtype") or "float32")
    resize, crop = _preprocessing(job)
    meta = IndexMeta(
        model=str(first_ok["model"]),
        weights=str(first_ok["weights"]),
        dimension=len(first_ok["vector"]),
        dtype=dtype,
        normalised=not job.get("raw"),
        resize=resize,
        crop=crop,
    )
    written: set[str] = set()
    with IndexWriter(path, meta, len(names), replace=replace) as writer:
        for record in records():
            name = record["input"]
            if name in written:
                continue
            written.add(name)
            vector, error = None, None
            if "error" in record:
                error = f"{record['error']['type']}: {record['error']['message']}"
            else:
                vector = np.asarray(record["vector"], dtype=np.float32).astype(dtype)
                if vector.shape != (meta.dimension,):
                    raise UsageError(f"{name}: a vector of {vector.shape[0]} numbers in a job of {meta.dimension}")
            writer.add(Row(name, record.get("sha256"), record.get("bytes"), record.get("mtime_ns"), vector, error))
        writer.commit()
    return f"wrote {path}: {len(names)} row{'' if len(names) == 1 else 's'} of {meta.describe()}"


def _preprocessing(job: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The resize and crop the job's workers used: its entry's, with the job's overrides."""
    from ..cache.naming import catalog_entry

    try:
        entry = catalog_entry(str(job["model"]))
    except (PtmError, KeyError):
        return job.get("resize"), job.get("crop")
    preprocess = entry.preprocess()
    return job.get("resize") or preprocess.resize, job.get("crop") or preprocess.crop
