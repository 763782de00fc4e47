"""The one writer for everything ptm puts on stdout.

Records are plain dicts. The format decides how they look:

* ``table`` - for people at a terminal (rich), the default on a TTY;
* ``jsonl`` - one JSON object per line, the default when stdout is a pipe;
* ``json``  - one JSON array, streamed element by element;
* ``csv`` / ``tsv`` - one row per flattened item, with a header row.

Records are written as soon as they are ready so pipelines see them
immediately; the table is drawn per batch (``flush``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

FORMATS = ("table", "jsonl", "json", "csv", "tsv")

Row = dict[str, Any]


def default_format(stream: IO[str]) -> str:
    isatty = getattr(stream, "isatty", None)
    return "table" if isatty is not None and isatty() else "jsonl"


def human_size(size: int) -> str:
    """``512 B``, ``12.3 kB``, ``170.5 MB``, ``1.2 GB`` (units of 1024, as torchvision and the catalog count)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def round_float(value: float, digits: int = 6) -> float:
    """Six significant digits: enough for any parity check, short to read."""
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


class RecordWriter:
    """Writes records to one text stream in one of ``FORMATS``.

    ``flatten`` turns a record into the rows of csv/tsv/table output and
    ``columns`` names them; jsonl/json write the record itself.
    """

    def __init__(
        self,
        stream: IO[str],
        fmt: str,
        *,
        columns: Sequence[str],
        flatten: Callable[[Row], Iterable[Row]] | None = None,
        table_style: Callable[[Row], str | None] | None = None,
        headers: dict[str, str] | None = None,
    ):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.stream = stream
        self.fmt = fmt
        self.columns = list(columns)
        self.flatten = flatten or (lambda record: [record])
        self.table_style = table_style
        self.headers = headers or {}
        self._count = 0
        self._pending: list[Row] = []
        self._csv: Any = None
        if fmt in ("csv", "tsv"):
            self._csv = csv.DictWriter(
                stream,
                fieldnames=self.columns,
                delimiter="," if fmt == "csv" else "\t",
                extrasaction="ignore",
                lineterminator="\n",
            )

    def write(self, record: Row) -> None:
        if self.fmt == "jsonl":
            self.stream.write(_json(record) + "\n")
            self.stream.flush()
        elif self.fmt == "json":
            self.stream.write(("[\n" if self._count == 0 else ",\n") + _json(record))
        elif self._csv is not None:
            if self._count == 0:
                self._csv.writeheader()
            for row in self.flatten(record):
                self._csv.writerow({k: _cell(v) for k, v in row.items()})
            self.stream.flush()
        else:
            self._pending.extend(self.flatten(record))
        self._count += 1

    def flush(self) -> None:
        """Draw the rows collected so far (table format) and flush the stream."""
        if self.fmt == "table" and self._pending:
            self._draw_table(self._pending)
            self._pending = []
        self.stream.flush()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        """Close the output even when the run stops early (Ctrl-C, an error), so
        ``-f json`` stays a valid array of the records already written."""
        if kind is None:
            self.close()
        else:
            with contextlib.suppress(OSError, ValueError):
                self.close()

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write("[]\n" if self._count == 0 else "\n]\n")
        self.flush()

    def _draw_table(self, rows: list[Row]) -> None:
        from rich.console import Console
        from rich.table import Table

        # On a terminal the table fits its width, folding long cells rather than
        # cutting them; written to a file or pipe it is as wide as its content.
        isatty = getattr(self.stream, "isatty", None)
        width = None if isatty is not None and isatty() else 10_000
        console = Console(file=self.stream, soft_wrap=False, width=width)
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for column in self.columns:
            numeric = column in ("rank", "index", "probability", "params", "size_mib", "acc1", "acc5")
            table.add_column(
                self.headers.get(column, column), justify="right" if numeric else "left", overflow="fold"
            )
        for row in rows:
            style = self.table_style(row) if self.table_style else None
            table.add_row(*(_cell(row.get(c)) for c in self.columns), style=style)
        console.print(table)


def _json(record: Row) -> str:
    """Compact UTF-8 JSON; a file name that is not valid UTF-8 (held as lone
    surrogates) is written as \\u escapes, which json.loads and os.fsencode
    turn back into the original bytes."""
    text = json.dumps(record, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(record)
    return text


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    # Undecodable bytes of a file name show as \xNN rather than crash the writer.
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
