"""Shard files: a shard's records as JSON Lines or as Parquet with a nested schema, written whole or not at all.

The records are exactly the ones the task's own command prints with ``-f
jsonl``. In Parquet, the columns are the task's (nested ones as lists of
structs) and an error is a struct; reading a file back gives the same
records (the fields a record does not have are null in Parquet and left out
again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..runtime import fsutil

Record = dict[str, Any]


def write_shard(path: Path, records: list[Record], record_format: str, task: str) -> None:
    """Publish ``records`` at ``path`` in one rename; an older file there (a failed attempt) is replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if record_format == "jsonl":
        # ASCII escapes keep any file name (even bytes that are not UTF-8) exact through a round trip.
        data = "".join(json.dumps(record) + "\n" for record in records).encode("ascii")
        fsutil.write_atomic(path, data, replace=True)
        return
    import pyarrow.parquet as pq

    table = _table(records, task)
    fsutil.write_atomic_with(path, lambda staged: pq.write_table(table, staged), replace=True)


def read_shard(path: Path) -> list[Record] | None:
    """The records in a shard file, or None when there is no readable one."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
            return [{key: value for key, value in row.items() if value is not None} for row in rows]
        text = path.read_text(encoding="ascii")
        return [json.loads(line) for line in text.splitlines()]
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # pyarrow's errors are ValueErrors (ArrowInvalid) or OSErrors (ArrowIOError)
        return None


def _schema(task: str) -> Any:
    """A task's records as Parquet columns (the task declares them), with the error struct last."""
    import pyarrow as pa

    from .. import tasks

    error = pa.struct([("type", pa.string()), ("message", pa.string())])
    return pa.schema([*tasks.get(task).parquet_fields(), ("error", error)])


def _table(records: list[Record], task: str) -> Any:
    import pyarrow as pa

    schema = _schema(task)
    names = schema.names
    unknown = {key for record in records for key in record} - set(names)
    if unknown:
        raise ValueError(f"records carry fields the Parquet schema lacks: {sorted(unknown)}")
    return pa.Table.from_pylist([{name: record.get(name) for name in names} for record in records], schema=schema)
