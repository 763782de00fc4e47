"""How ``ptm classify`` writes its records: the writer, and the loop over the records a server sends.

No click here: the click command and the quick path of ``--server auto``
(:mod:`.quick`) write through the same functions, so their output is the
same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import IO, Any

from .common import outcome, stdout_is_data, writer
from .progress import RunProgress

BAR_CELLS = 10


def probability_bar(probability: float) -> str:
    """A bar of BAR_CELLS cells for a terminal table, eighths of a cell included: ``█████▍    ``."""
    eighths = max(0, min(BAR_CELLS * 8, round(probability * BAR_CELLS * 8)))
    full, part = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[part] if full < BAR_CELLS else ""
    return ("█" * full + partial).ljust(BAR_CELLS)


def classify_writer(out: IO[str], fmt: str | None) -> Any:
    """The writer for classification records: one row per prediction in csv/tsv/table."""

    def rows(record: dict[str, Any]) -> list[dict[str, Any]]:
        if "error" in record:
            error = record["error"]
            return [{"input": record["input"], "error": f"{error['type']}: {error['message']}"}]
        return [{"input": record["input"], **p} for p in record["predictions"]]

    from ..output.records import default_format

    terminal = default_format(out) == "table"  # the stream is a terminal

    def table_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
        result = rows(record)
        for i, row in enumerate(result):
            if "probability" in row:
                percent = f"{100 * row['probability']:.2f}%"
                row["probability"] = f"{probability_bar(row['probability'])} {percent:>7}" if terminal else percent
            if i:
                row["input"] = ""
        return result

    chosen = fmt or default_format(out)
    if chosen == "table":
        return writer(
            out,
            chosen,
            columns=["input", "rank", "label", "index", "probability", "error"],
            flatten=table_rows,
            table_style=lambda row: "red" if row.get("error") else None,
            optional=["error"],
        )
    return writer(out, chosen, columns=["input", "rank", "index", "label", "probability", "error"], flatten=rows)


def write_served_records(
    records: Iterable[dict[str, Any]],
    fmt: str | None,
    quiet: bool,
    batch_size: int,
    named: tuple[tuple[str, ...], bool, str | None],
) -> int:
    """The records a server made, written as the in-process run writes its own; the exit code."""
    from ..images.inputs import count_inputs

    images, recursive, files_from = named
    failed = count = 0
    with stdout_is_data() as out, RunProgress(quiet=quiet) as progress:
        progress.count_in_background(lambda: count_inputs(images, recursive=recursive, files_from=files_from))
        with classify_writer(out, fmt) as writer_:
            for record in records:
                writer_.write(record)
                failed += "error" in record
                count += 1
                progress.advance("error" not in record)
                if count % batch_size == 0:
                    writer_.flush()
    return outcome(count, failed)
