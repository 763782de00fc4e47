"""The one writer for everything ptm puts on stdout.

Records are plain dicts. The format decides how they look:

* ``table`` - for people at a terminal (rich), the default on a TTY;
* ``jsonl`` - one JSON object per line, the default when stdout is a pipe;
* ``json``  - one JSON array, streamed element by element;
* ``csv`` / ``tsv`` - one row per flattened item, with a header row.

Records are written as soon as they are ready so pipelines see them
immediately; the table is drawn per batch (``flush``).

Everything in a cell comes from data (file names, tensor names, catalog
entries), so none of it is ever read as markup: table cells are drawn as
plain text with control characters shown as escapes (a file name cannot
restyle the table or send codes to the terminal), and csv/tsv cells that a
spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``,
a tab or a carriage return) get a leading ``'``. JSON holds the exact
strings; a NaN or infinite number, which JSON cannot hold, is written as null.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

from ..runtime import streams

FORMATS = ("table", "jsonl", "json", "csv", "tsv")
# Tables with more rows than this are drawn line by line without rich, which measures
# every cell of the whole table at once (100,000 rows took 50 s and 630 MB; now ~ jsonl's cost).
RICH_TABLE_ROWS = 1000
NUMERIC_COLUMNS = ("rank", "index", "probability", "params", "size_mib", "acc1", "acc5")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

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
        optional: Sequence[str] = (),
    ):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.stream = stream
        self.fmt = fmt
        self.columns = list(columns)
        self.flatten = flatten or (lambda record: [record])
        self.table_style = table_style
        self.headers = headers or {}
        # Table columns left out of a drawn table when none of its rows has a value there (``error``).
        self.optional = frozenset(optional)
        self._count = 0
        self._pending: list[Row] = []
        self._csv: Any = None
        self._row_buffer = io.StringIO()
        if fmt in ("csv", "tsv"):
            import csv  # here: jsonl, the format of pipes, needs none of it

            # Rows end in "\n", but the writer is told "\r\n" so that it quotes a cell holding
            # either character (it quotes only what its line terminator contains).
            self._csv = csv.DictWriter(
                self._row_buffer,
                fieldnames=self.columns,
                delimiter="," if fmt == "csv" else "\t",
                extrasaction="ignore",
                lineterminator="\r\n",
            )

    def insert_columns(self, names: Sequence[str], after: str = "input") -> None:
        """Add ``names`` after column ``after`` (a video frame's ``frame`` and ``time``), before the first write;
        rows that ``flatten`` makes of a record carry the record's values for them."""
        at = self.columns.index(after) + 1 if after in self.columns else 0
        self.columns[at:at] = [n for n in names if n not in self.columns]
        if self._csv is not None:
            self._csv.fieldnames = self.columns
        flatten = self.flatten

        def carried(record: Row) -> Iterable[Row]:
            extra = {n: record[n] for n in names if n in record}
            rows = list(flatten(record))
            if not extra:
                return rows
            if self.fmt == "table":  # as the input's name: on a record's first row only
                return [{**row, **extra} if i == 0 else row for i, row in enumerate(rows)]
            return [{**row, **extra} for row in rows]

        self.flatten = carried
        self.optional = self.optional | frozenset(names)

    def write(self, record: Row) -> None:
        if self.fmt == "jsonl":
            self.stream.write(_json(record) + "\n")
            self.stream.flush()
        elif self.fmt == "json":
            self.stream.write(("[\n" if self._count == 0 else ",\n") + _json(record))
        elif self._csv is not None:
            if self._count == 0:
                self._write_row(None)
            for row in self.flatten(record):
                self._write_row(row)
            self.stream.flush()
        else:
            self._pending.extend(self.flatten(record))
        self._count += 1

    def _write_row(self, row: Row | None) -> None:
        """One csv/tsv row (the header when ``row`` is None); it alone is in the buffer, ending in "\r\n"."""
        if row is None:
            self._csv.writeheader()
        else:
            self._csv.writerow({k: _csv_cell(v) for k, v in row.items()})
        self.stream.write(self._row_buffer.getvalue()[:-2] + "\n")
        self._row_buffer.seek(0)
        self._row_buffer.truncate()

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

    def _table_columns(self, rows: list[Row]) -> list[str]:
        """The columns to draw: on a terminal, optional ones only when some row fills them; elsewhere all."""
        if not _is_terminal(self.stream):
            return self.columns
        return [c for c in self.columns if c not in self.optional or any(row.get(c) for row in rows)]

    def _draw_table(self, rows: list[Row]) -> None:
        columns = self._table_columns(rows)
        if len(rows) > RICH_TABLE_ROWS:
            self._draw_plain_table(rows)
            return
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        # On a terminal the table fits its width, folding long cells rather than
        # cutting them; written to a file or pipe it is as wide as its content.
        isatty = getattr(self.stream, "isatty", None)
        width = streams.console_width() if isatty is not None and isatty() else 10_000
        console = Console(file=self.stream, soft_wrap=False, width=width)
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for column in columns:
            table.add_column(
                Text(self.headers.get(column, column)),
                justify="right" if column in NUMERIC_COLUMNS else "left",
                overflow="fold",
            )
        for row in rows:
            style = self.table_style(row) if self.table_style else None
            table.add_row(*(Text(_table_cell(row.get(c))) for c in columns), style=style)
        console.print(table)

    def _draw_plain_table(self, rows: list[Row]) -> None:
        """The same layout as rich draws (no box, two spaces between columns), written row by row."""
        columns = self._table_columns(rows)
        from rich.cells import cell_len

        headers = [self.headers.get(c, c) for c in columns]
        widths = [cell_len(h) for h in headers]
        cells = []
        for row in rows:
            texts = [_table_cell(row.get(c)) for c in columns]
            widths = [max(w, cell_len(t)) for w, t in zip(widths, texts, strict=True)]
            cells.append(texts)
        right = [c in NUMERIC_COLUMNS for c in columns]

        def line(texts: list[str]) -> str:
            padded = []
            for text, width, is_right in zip(texts, widths, right, strict=True):
                gap = " " * (width - cell_len(text))
                padded.append(gap + text if is_right else text + gap)
            return "  ".join(padded) + "\n"

        self.stream.write(line(headers))
        for texts in cells:
            self.stream.write(line(texts))


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # a closed stream
        return False


def _json(record: Row) -> str:
    """Compact UTF-8 JSON; a file name that is not valid UTF-8 (held as lone
    surrogates) is written as \\u escapes, which json.loads and os.fsencode
    turn back into the original bytes."""
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN or infinity, which JSON cannot hold: written as null
        record = _finite(record)
        text = json.dumps(record, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(record)
    return text


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _table_cell(value: Any) -> str:
    """A cell's text for a terminal: control characters (escape sequences, newlines) shown as escapes."""
    text = _cell(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _csv_cell(value: Any) -> str:
    """A csv/tsv cell a spreadsheet shows as text: a leading ``'`` defuses a would-be formula (OWASP)."""
    text = _cell(value)
    if isinstance(value, str) and text.startswith(_FORMULA_START):
        return "'" + text
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
