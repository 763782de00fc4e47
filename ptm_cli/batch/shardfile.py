"""Shard files: a shard's records as JSON Lines or as Parquet with a nested schema, written whole or not at all.

The records are exactly the ones the task's own command prints with ``-f
jsonl``. In Parquet, the columns are the task's (nested ones as lists of
structs) and an error is a struct; reading a file back gives the same
records (the fields a record does not have are null in Parquet and left out
again, and a record naming a file whose name is not UTF-8 comes back from
its ``exact_record`` column).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..runtime import fsutil

Record = dict[str, Any]

# Parquet strings are UTF-8, and a Linux file name is any bytes. A record that names such a file keeps
# its readable columns (with U+FFFD for those bytes) and the whole record as escaped JSON in this
# column, which reading back returns, so the names stay exact as they do in JSON Lines.
EXACT = "exact_record"
_SURROGATE = re.compile("[\udc80-\udcff]")


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
    """The records in a shard file, or None when there is none that ptm could have written.

    Each record must be an object naming its input: a file whose lines are
    valid JSON of another shape (``[]``, ``3``) was not written by ptm, and
    its shard is redone on ``--resume``.
    """
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
            records = [
                json.loads(row[EXACT]) if row.get(EXACT) else {k: v for k, v in row.items() if v is not None}
                for row in rows
            ]
        else:
            text = path.read_text(encoding="ascii")
            records = [json.loads(line) for line in text.splitlines()]
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # pyarrow's errors are ValueErrors (ArrowInvalid) or OSErrors (ArrowIOError)
        return None
    if not all(isinstance(record, dict) and isinstance(record.get("input"), str) for record in records):
        return None
    return records


def _schema(task: str) -> Any:
    """A task's records as Parquet columns (the task declares them), with the error struct last."""
    import pyarrow as pa

    from .. import tasks

    error = pa.struct([("type", pa.string()), ("message", pa.string())])
    return pa.schema([*tasks.get(task).parquet_fields(), ("error", error), (EXACT, pa.string())])


def _table(records: list[Record], task: str) -> Any:
    import pyarrow as pa

    schema = _schema(task)
    names = schema.names
    unknown = {key for record in records for key in record} - set(names)
    if unknown:
        raise ValueError(f"records carry fields the Parquet schema lacks: {sorted(unknown)}")
    rows = []
    for record in records:
        row = {name: record.get(name) for name in names}
        if _has_undecodable(record):
            row = {name: _shown(value) for name, value in row.items()}
            row[EXACT] = json.dumps(record)  # ASCII escapes: the names' bytes, exactly
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schema)


def _has_undecodable(value: Any) -> bool:
    """Whether a string in ``value`` holds bytes that are not UTF-8 (lone surrogates, as os.fsdecode gives)."""
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_has_undecodable(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_undecodable(item) for item in value)
    return False


def _shown(value: Any) -> Any:
    """``value`` with every byte that is not UTF-8 shown as U+FFFD: what a Parquet string column can hold."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(value, dict):
        return {key: _shown(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shown(item) for item in value]
    return value
