"""Index files: one row per image (its path, content hash, size, time, vector or error), written whole or not at all.

Two layouts, chosen by the file's extension:

- ``INDEX.parquet``: everything in one Parquet file. The vector column is a
  fixed-size list (float32, or float16 with ``--dtype float16``), stored
  uncompressed in row groups of about :data:`GROUP_BYTES`, so a search reads
  one row group at a time and its memory stays bounded whatever the index's
  size.
- ``INDEX.npy`` with ``INDEX.rows.parquet`` beside it: the vectors as one
  [N, D] NumPy array, which a search maps into memory instead of reading,
  and the other columns in the Parquet file. Best for large libraries.

The file's own metadata (:class:`IndexMeta`: model, weights, dimension,
dtype, normalised or raw, preprocessing) says what made the vectors, so a
query or an update with another model is refused. A failed image has a row
with its error and no vector (zeros in ``.npy``); searches skip it.

Writes go to a temporary file beside the index and replace it in one rename.
The ``.npy`` layout has two files: both are staged whole first, the vectors
are renamed into place, then the rows; the rows file records a fingerprint
of its vectors file, and a reader that finds the rename of the rows
unfinished (an interruption between the two renames) completes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BadIndex, MissingDependency, UsageError
from ..runtime import fsutil

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .search import Chunk

FORMAT = 1
META_KEY = b"ptm.index"
DTYPES = ("float32", "float16")
GROUP_BYTES = 32 << 20  # vectors per Parquet row group, and per chunk of a search
ROW_COLUMNS = ("path", "sha256", "bytes", "mtime_ns", "model", "weights", "dimension", "error", "path_exact")
_SAMPLE = 1 << 20  # bytes at each end of a .npy file that its fingerprint hashes


@dataclass(frozen=True)
class IndexMeta:
    """What made an index's vectors; two indexes (or an index and a query) agree only when these do."""

    model: str
    weights: str
    dimension: int
    dtype: str = "float32"
    normalised: bool = True
    resize: int | None = None
    crop: int | None = None
    # "hub_args": a hub: model's entry-point arguments (JSON); "vectors": the .npy layout's fingerprint
    extra: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        kind = "unit-length" if self.normalised else "raw"
        hub = self.hub_args()
        made = f"{self.model} ({' '.join(hub)})" if hub else f"{self.model} ({self.weights})"
        return f"{made}, {self.dimension} {kind} {self.dtype} numbers"

    def hub_args(self) -> tuple[str, ...]:
        """The ``--arg KEY=VALUE`` a hub: model was built with."""
        return tuple(json.loads(self.extra.get("hub_args", "[]")))

    def same_vectors(self) -> tuple[object, ...]:
        """The facts that decide the vectors (not how they are stored)."""
        hub = self.extra.get("hub_args")
        return (self.model, self.weights, self.dimension, self.normalised, self.resize, self.crop, hub)

    def check_matches(self, other: IndexMeta, *, what: str, path: Path) -> None:
        """UsageError naming both when ``other`` (a query, an update) would not make vectors like this index's."""
        if self.same_vectors() != other.same_vectors():
            raise UsageError(
                f"{path} holds vectors of {self.describe()}{_preprocess_text(self)}; {what} makes "
                f"{other.describe()}{_preprocess_text(other)}. Use the index's model and weights "
                f"(-m {self.model} -w {self.weights}), or write a new index"
            )

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True).encode()

    @staticmethod
    def from_json(data: bytes, path: Path) -> IndexMeta:
        try:
            raw = json.loads(data)
            if raw.pop("format") != FORMAT:
                raise BadIndex(f"{path} is an index of another format ({raw.get('format')}); rebuild it")
            meta = IndexMeta(**raw)
        except BadIndex:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise BadIndex(f"{path}: its index metadata is damaged ({exc}); rebuild it with ptm embed") from None
        if meta.dtype not in DTYPES or not isinstance(meta.dimension, int) or meta.dimension < 1:
            raise BadIndex(f"{path}: its index metadata is damaged (dtype {meta.dtype}, dimension {meta.dimension})")
        return meta


def _preprocess_text(meta: IndexMeta) -> str:
    steps = [f"resize {meta.resize}" if meta.resize else "", f"crop {meta.crop}" if meta.crop else ""]
    shown = ", ".join(step for step in steps if step)
    return f" ({shown})" if shown else ""


@dataclass(frozen=True)
class Row:
    """One image's row: where it was, what it held, and its vector or the error that stopped it."""

    path: str
    sha256: str | None
    bytes: int | None
    mtime_ns: int | None
    vector: np.ndarray | None = None
    error: str | None = None


def layout(path: Path) -> str:
    """``parquet`` or ``npy``, from the index's extension; UsageError for anything else."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".npy"):
        return suffix[1:]
    raise UsageError(f"{path}: an index is a .parquet file, or a .npy file with its rows beside it")


def rows_path(path: Path) -> Path:
    """The Parquet file beside a ``.npy`` index that holds its rows."""
    return path.with_name(path.stem + ".rows.parquet")


def check_target(path: Path, *, replace: bool, hint: str = "add --force to replace it") -> None:
    """Refuse, before any work, an index path that cannot be written: a folder, a link, a device, a missing folder."""
    kind = layout(path)
    for target in (path, rows_path(path)) if kind == "npy" else (path,):
        if target.is_dir():
            raise UsageError(f"{target} is a folder; give the name of the index file to write")
        if not fsutil.folder_of(target).is_dir():
            raise UsageError(f"{target}: the folder {target.parent} does not exist")
        if not fsutil.is_regular_or_absent(target):
            raise UsageError(f"{target} is not a regular file (a link, a device...), so ptm will not replace it")
    if path.exists() and not replace:
        raise UsageError(f"{path} already exists; {hint}")


def require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise MissingDependency("index files are Parquet: install pyarrow with `pip install 'ptm[parquet]'`") from None


# --- reading --------------------------------------------------------------------------------------------


class VectorIndex:
    """An index opened for reading: its metadata, its rows (without vectors), and its vectors chunk by chunk."""

    def __init__(self, path: Path, meta: IndexMeta, rows: pa.Table, matrix: np.ndarray | None, groups: list[int]):
        import numpy as np

        self.path = path
        self.meta = meta
        self.rows = rows
        self._matrix = matrix  # the .npy layout's memory map
        self._group_starts = groups  # the Parquet layout's first row of each row group
        self.valid = np.asarray(rows.column("error").is_null().to_numpy(zero_copy_only=False), dtype=bool)

    def __len__(self) -> int:
        return int(self.rows.num_rows)

    def paths(self) -> list[str]:
        """Each row's path as the user wrote it (exact bytes, for names that are not UTF-8)."""
        shown = self.rows.column("path").to_pylist()
        exact = self.rows.column("path_exact").to_pylist()
        return [os.fsdecode(raw) if raw is not None else text for text, raw in zip(shown, exact, strict=True)]

    def chunks(self) -> Iterator[Chunk]:
        """``(first row, vectors, valid)`` for the whole index, a bounded piece at a time."""
        if self._matrix is not None:
            step = max(1, GROUP_BYTES // (self.meta.dimension * self._matrix.itemsize))
            for start in range(0, len(self), step):
                yield start, self._matrix[start : start + step], self.valid[start : start + step]
            return
        import pyarrow.parquet as pq

        with pq.ParquetFile(self.path, memory_map=True) as source:
            for group, start in enumerate(self._group_starts):
                column = source.read_row_group(group, columns=["vector"]).column(0)
                vectors = _matrix_of(column, self.meta, self.path)
                yield start, vectors, self.valid[start : start + len(vectors)]

    def vectors(self, rows: Sequence[int]) -> np.ndarray:
        """The vectors of ``rows`` as float32 [len(rows), D] (a query by a path already in the index)."""
        import numpy as np

        out = np.zeros((len(rows), self.meta.dimension), dtype=np.float32)
        if self._matrix is not None:
            for i, row in enumerate(rows):
                out[i] = self._matrix[row]
            return out
        wanted = {row: i for i, row in enumerate(rows)}
        for start, block, _ in self.chunks():
            for row in [r for r in wanted if start <= r < start + len(block)]:
                out[wanted[row]] = block[row - start]
        return out


def open_index(path: Path) -> VectorIndex:
    """An index to read; BadIndex (a clear message) for a missing, damaged or foreign file."""
    require_pyarrow()
    kind = layout(path)
    if not path.is_file():
        raise BadIndex(f"{path}: no such index; make one with `ptm embed IMAGES -o {path}`")
    if kind == "parquet":
        meta, rows, groups = _read_parquet(path, with_vectors=True)
        return VectorIndex(path, meta, rows, None, groups)
    side = rows_path(path)
    _finish_interrupted_write(path, side)
    if not side.is_file():
        raise BadIndex(f"{path}: its rows file {side.name} is missing; rebuild the index with ptm embed")
    meta, rows, _ = _read_parquet(side, with_vectors=False)
    matrix = _open_npy(path, meta, len(rows))
    if meta.extra.get("vectors") != _fingerprint(path):
        raise BadIndex(
            f"{path} and {side.name} do not belong together (one was replaced or damaged); rebuild the index"
        )
    return VectorIndex(path, meta, rows, matrix, [])


def identity(path: Path) -> str:
    """A string that changes whenever ptm rewrites the index at ``path`` (for indexes derived from it)."""
    return _fingerprint(path)


def read_meta(path: Path) -> IndexMeta:
    """Only the metadata of an index (cheap: the Parquet footer)."""
    require_pyarrow()
    target = rows_path(path) if layout(path) == "npy" else path
    if layout(path) == "npy":
        _finish_interrupted_write(path, target)
    return _meta_of(_parquet_file(target), target)


def _parquet_file(path: Path) -> pq.ParquetFile:
    import pyarrow.parquet as pq

    try:
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4))
            tail = f.read(4)
    except OSError as exc:
        raise BadIndex(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if head != b"PAR1" or tail != b"PAR1":
        what = "is truncated or damaged" if head == b"PAR1" else "is not a Parquet file"
        raise BadIndex(f"{path} {what}; it is not an index ptm can read (rebuild it with ptm embed)")
    try:
        return pq.ParquetFile(path, memory_map=True)
    except (OSError, ValueError) as exc:
        raise BadIndex(f"{path} is damaged ({exc}); rebuild it with ptm embed") from None


def _meta_of(source: pq.ParquetFile, path: Path) -> IndexMeta:
    metadata = source.schema_arrow.metadata or {}
    if META_KEY not in metadata:
        raise BadIndex(f"{path} is a Parquet file but not a ptm index (no index metadata)")
    return IndexMeta.from_json(metadata[META_KEY], path)


def _read_parquet(path: Path, *, with_vectors: bool) -> tuple[IndexMeta, pa.Table, list[int]]:
    import pyarrow as pa

    source = _parquet_file(path)
    meta = _meta_of(source, path)
    schema = source.schema_arrow
    missing = [name for name in ROW_COLUMNS if name not in schema.names]
    if with_vectors:
        vector = schema.field("vector").type if "vector" in schema.names else None
        size = getattr(vector, "list_size", None)
        if size != meta.dimension:
            raise BadIndex(
                f"{path}: its vectors have {size} numbers but its metadata says {meta.dimension}; rebuild the index"
            )
        if str(getattr(vector, "value_type", "")) != ("halffloat" if meta.dtype == "float16" else "float"):
            raise BadIndex(f"{path}: its vector column is {vector}, not {meta.dtype}; rebuild the index")
    if missing:
        raise BadIndex(f"{path} lacks the columns {missing}; rebuild it with ptm embed")
    try:
        rows = source.read(columns=list(ROW_COLUMNS))
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise BadIndex(f"{path} is damaged ({exc}); rebuild it with ptm embed") from None
    starts, total = [], 0
    for group in range(source.num_row_groups):
        starts.append(total)
        total += source.metadata.row_group(group).num_rows
    return meta, rows, starts


def _matrix_of(column: pa.ChunkedArray, meta: IndexMeta, path: Path) -> np.ndarray:
    import numpy as np

    array = column.combine_chunks()
    values = array.values.to_numpy(zero_copy_only=False)
    if values.size != len(array) * meta.dimension:
        raise BadIndex(f"{path}: a row group's vectors do not fill its rows; rebuild the index")
    matrix: np.ndarray = values.reshape(len(array), meta.dimension)
    if array.null_count:
        matrix = np.where(np.isnan(matrix), np.zeros((), matrix.dtype), matrix)  # no vector: zeros, never NaN
    return matrix


def _open_npy(path: Path, meta: IndexMeta, rows: int) -> np.ndarray:
    import numpy as np

    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BadIndex(f"{path} is not a vectors file ptm can read ({exc}); rebuild it with ptm embed") from None
    if matrix.dtype != np.dtype(meta.dtype) or matrix.shape != (rows, meta.dimension):
        raise BadIndex(
            f"{path} holds {matrix.dtype} {tuple(matrix.shape)} but its rows file says {meta.dtype} "
            f"({rows}, {meta.dimension}); rebuild the index"
        )
    if not matrix.flags.c_contiguous:
        raise BadIndex(f"{path} is stored column by column; rebuild the index with ptm embed")
    loaded: np.ndarray = matrix
    return loaded


def _fingerprint(path: Path) -> str:
    """The size of a file and a hash of its first and last MiB: cheap, and different after any rewrite ptm makes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest.update(str(size).encode())
        digest.update(f.read(_SAMPLE))
        f.seek(max(0, size - _SAMPLE))
        digest.update(f.read(_SAMPLE))
    return digest.hexdigest()


def _staged_rows(side: Path) -> Path:
    return side.with_name(f".{side.name}.next")


def _finish_interrupted_write(path: Path, side: Path) -> None:
    """Complete a ``.npy`` write whose vectors were renamed into place but whose rows were not."""
    staged = _staged_rows(side)
    if not staged.is_file() or not path.is_file():
        return
    try:
        meta = _meta_of(_parquet_file(staged), staged)
    except BadIndex:
        return
    if meta.extra.get("vectors") == _fingerprint(path):
        try:
            os.replace(staged, side)
        except OSError as exc:  # a folder this user may read but not write
            raise BadIndex(
                f"{path}: its last write stopped before {side.name} was renamed into place, and it cannot be "
                f"finished here ({exc.strerror or exc}); run any ptm command on it where the folder is writable"
            ) from None
        fsutil.fsync_dir(fsutil.folder_of(side))


# --- writing ----------------------------------------------------------------------------------------------


def row_schema(meta: IndexMeta, *, with_vectors: bool) -> pa.Schema:
    import pyarrow as pa

    fields = [
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("bytes", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("model", pa.string()),
        ("weights", pa.string()),
        ("dimension", pa.int32()),
    ]
    if with_vectors:
        value = pa.float16() if meta.dtype == "float16" else pa.float32()
        fields.append(("vector", pa.list_(value, meta.dimension)))
    fields += [("error", pa.string()), ("path_exact", pa.binary())]
    return pa.schema(fields, metadata={META_KEY: meta.to_json()})


class IndexWriter:
    """Rows in, an index file out: staged beside ``path`` and published by :meth:`commit` (one rename)."""

    def __init__(self, path: Path, meta: IndexMeta, row_count: int, *, replace: bool):
        import numpy as np
        import pyarrow.parquet as pq

        require_pyarrow()
        self.path, self.meta, self.row_count, self.replace = path, meta, row_count, replace
        self.kind = layout(path)
        self.written = 0
        self._pending: list[Row] = []
        self._dtype = np.dtype(meta.dtype)
        self._group_rows = max(1, GROUP_BYTES // (meta.dimension * self._dtype.itemsize))
        self._vectors: fsutil.StagedFile | None = None
        self._matrix: np.memmap[Any, Any] | None = None
        if self.kind == "npy":
            self._vectors = fsutil.StagedFile(path)
            self._vectors.stream.close()
            self._matrix = np.lib.format.open_memmap(
                self._vectors.path, mode="w+", dtype=self._dtype, shape=(row_count, meta.dimension)
            )
            self._rows_file = fsutil.StagedFile(rows_path(path))
        else:
            self._rows_file = fsutil.StagedFile(path)
        self._rows_file.stream.close()
        self._schema = row_schema(meta, with_vectors=self.kind == "parquet")
        self._writer = pq.ParquetWriter(
            self._rows_file.path,
            self._schema,
            compression={name: ("none" if name == "vector" else "zstd") for name in self._schema.names},
            use_dictionary=["model", "weights"],
            write_statistics=["bytes", "mtime_ns", "dimension"],
        )

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is not None or not self._rows_file.committed:
            self.abort()

    def add(self, row: Row) -> None:
        """One row, in index order; a vector must already be the index's dimension and free of NaN."""
        if row.vector is not None and row.vector.shape != (self.meta.dimension,):
            raise ValueError(f"{row.path}: a vector of {row.vector.shape} in an index of {self.meta.dimension}")
        if self.written + len(self._pending) >= self.row_count:
            raise ValueError("more rows than the index was opened for")
        self._pending.append(row)
        if len(self._pending) >= self._group_rows:
            self._flush()

    def _flush(self) -> None:
        import numpy as np
        import pyarrow as pa

        rows, self._pending = self._pending, []
        if not rows:
            return
        dimension = self.meta.dimension
        block = np.zeros((len(rows), dimension), dtype=self._dtype)
        for i, row in enumerate(rows):
            if row.vector is not None:
                block[i] = row.vector
        shown, exact = zip(*(_path_columns(row.path) for row in rows), strict=True)
        columns: dict[str, pa.Array] = {
            "path": pa.array(shown, pa.string()),
            "sha256": pa.array([row.sha256 for row in rows], pa.string()),
            "bytes": pa.array([row.bytes for row in rows], pa.int64()),
            "mtime_ns": pa.array([row.mtime_ns for row in rows], pa.int64()),
            "model": pa.array([self.meta.model] * len(rows), pa.string()),
            "weights": pa.array([self.meta.weights] * len(rows), pa.string()),
            "dimension": pa.array([dimension] * len(rows), pa.int32()),
        }
        if self._matrix is not None:
            self._matrix[self.written : self.written + len(rows)] = block
        else:
            missing = pa.array([row.vector is None for row in rows])
            flat = pa.array(block.reshape(-1))
            columns["vector"] = pa.FixedSizeListArray.from_arrays(flat, dimension, mask=missing)
        columns["error"] = pa.array([row.error for row in rows], pa.string())
        columns["path_exact"] = pa.array(exact, pa.binary())
        self._writer.write_table(pa.table(columns, schema=self._schema))
        self.written += len(rows)

    def commit(self) -> None:
        """Publish the index; before this, the old one (if any) is untouched."""
        self._flush()
        if self.written != self.row_count:
            raise ValueError(f"an index opened for {self.row_count} rows was given {self.written}")
        if self._matrix is None:
            self._writer.close()
            self._rows_file.finish()
            self._publish(self._rows_file)
            return
        assert self._vectors is not None
        self._matrix.flush()
        del self._matrix
        self._matrix = None
        self._vectors.finish()
        self._writer.close()  # the rows file is rewritten with the vectors' fingerprint in its metadata
        self._restamp_rows(_fingerprint(self._vectors.path))
        self._rows_file.finish()
        side = rows_path(self.path)
        staged = _staged_rows(side)
        os.replace(self._rows_file.path, staged)  # from here on a reader can finish the write
        self._rows_file.committed = True
        try:
            self._publish(self._vectors)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        os.replace(staged, side)
        fsutil.fsync_dir(fsutil.folder_of(side))

    def _restamp_rows(self, fingerprint: str) -> None:
        import pyarrow.parquet as pq

        table = pq.read_table(self._rows_file.path)
        meta = IndexMeta(**{**asdict(self.meta), "extra": {**self.meta.extra, "vectors": fingerprint}})
        table = table.replace_schema_metadata({META_KEY: meta.to_json()})
        pq.write_table(table, self._rows_file.path, compression="zstd", use_dictionary=["model", "weights"])

    def _publish(self, staged: fsutil.StagedFile) -> None:
        try:
            staged.commit(replace=self.replace)
        except FileExistsError:
            raise UsageError(f"{staged.dest} already exists; use --force to replace it or --update") from None
        except fsutil.NotReplaceable:
            raise UsageError(f"{staged.dest} is not a regular file, so ptm will not replace it") from None

    def abort(self) -> None:
        """Drop the staged files; the old index stays as it was."""
        if self._writer is not None:
            import contextlib

            with contextlib.suppress(Exception):
                self._writer.close()
        self._matrix = None
        for staged in (self._vectors, self._rows_file):
            if staged is not None and not staged.committed:
                staged.__exit__(None, None, None)


def _path_columns(path: str) -> tuple[str, bytes | None]:
    """A path as a Parquet string, with its exact bytes beside it when it is not UTF-8."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), os.fsencode(path)
    return path, None
