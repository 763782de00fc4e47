"""The one output writer: every format, streamed, parseable."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from ptm_cli.errors import OutputError, UsageError
from ptm_cli.output.imagefiles import image_format_for, write_output
from ptm_cli.output.records import RecordWriter, default_format, round_float

RECORDS = [
    {"input": "a.jpg", "predictions": [{"rank": 1, "label": "cat", "probability": 0.75}]},
    {"input": "b, \"quoted\".jpg", "error": {"type": "UnreadableImage", "message": "broken"}},
]


def flatten(record: dict) -> list[dict]:
    if "error" in record:
        return [{"input": record["input"], "error": record["error"]["type"]}]
    return [{"input": record["input"], **p} for p in record["predictions"]]


def write_all(fmt: str, records: list[dict]) -> str:
    stream = io.StringIO()
    writer = RecordWriter(stream, fmt, columns=["input", "rank", "label", "probability", "error"], flatten=flatten)
    for record in records:
        writer.write(record)
    writer.close()
    return stream.getvalue()


def test_jsonl_is_one_object_per_line() -> None:
    lines = write_all("jsonl", RECORDS).splitlines()
    assert [json.loads(line) for line in lines] == RECORDS


@pytest.mark.parametrize("records", [RECORDS, []])
def test_json_is_one_array(records: list[dict]) -> None:
    assert json.loads(write_all("json", records)) == records


@pytest.mark.parametrize(("fmt", "delimiter"), [("csv", ","), ("tsv", "\t")])
def test_csv_and_tsv_have_a_header_and_quote_properly(fmt: str, delimiter: str) -> None:
    rows = list(csv.DictReader(io.StringIO(write_all(fmt, RECORDS)), delimiter=delimiter))
    assert rows[0] == {"input": "a.jpg", "rank": "1", "label": "cat", "probability": "0.75", "error": ""}
    assert rows[1]["input"] == 'b, "quoted".jpg'
    assert rows[1]["error"] == "UnreadableImage"


def test_table_is_drawn_on_flush() -> None:
    stream = io.StringIO()
    writer = RecordWriter(stream, "table", columns=["input", "label"], flatten=flatten)
    writer.write(RECORDS[0])
    assert stream.getvalue() == ""
    writer.flush()
    text = stream.getvalue()
    assert "input" in text and "a.jpg" in text and "cat" in text


def test_default_format_follows_the_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert default_format(Tty()) == "table"
    assert default_format(io.StringIO()) == "jsonl"


def test_round_float_keeps_six_significant_digits() -> None:
    assert round_float(0.962912345) == 0.962912
    assert round_float(1.23456789e-7) == 1.23457e-07
    assert round_float(0.0) == 0.0


def test_atomic_write_never_overwrites_without_force(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    write_output(target, b"first")
    with pytest.raises(OutputError, match="--force"):
        write_output(target, b"second")
    assert target.read_bytes() == b"first"
    write_output(target, b"second", force=True)
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_atomic_write_into_a_missing_directory_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="cannot write"):
        write_output(tmp_path / "nope" / "out.png", b"x")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "forced", "expected"),
    [("a.png", None, "PNG"), ("a.JPG", None, "JPEG"), ("a.webp", None, "WEBP"), ("a.out", "jpg", "JPEG"),
     ("a", "tiff", "TIFF")],
)  # fmt: skip
def test_image_format_from_name_or_flag(name: str, forced: str | None, expected: str) -> None:
    assert image_format_for(name, forced) == expected


def test_unknown_image_format_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--format"):
        image_format_for("a.xyz")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_classify_table_on_a_terminal_has_bars_and_an_error_column_only_when_needed() -> None:
    from ptm_cli.tasks.classify import TASK, probability_bar

    record = {"input": "a.jpg", "predictions": [{"rank": 1, "index": 3, "label": "tabby, tabby cat",
                                                 "probability": 0.625}]}  # fmt: skip
    screen = Terminal()
    with TASK.writer(screen, "table") as writer:
        writer.write(record)
    drawn = screen.getvalue()
    assert "██████▎     62.50%" in drawn and "error" not in drawn  # 6.25 cells of 10, then the percentage
    assert probability_bar(0.0) == " " * 10 and probability_bar(1.0) == "█" * 10
    assert probability_bar(0.0625) == "▋" + " " * 9  # five eighths of a cell
    screen = Terminal()
    with TASK.writer(screen, "table") as writer:
        writer.write(record)
        writer.write({"input": "b.jpg", "error": {"type": "UnreadableImage", "message": "broken"}})
    assert "error" in screen.getvalue() and "UnreadableImage" in screen.getvalue()  # folded to the width


def test_classify_table_in_a_pipe_is_unchanged() -> None:
    from ptm_cli.tasks.classify import TASK

    piped = io.StringIO()
    with TASK.writer(piped, "table") as writer:
        writer.write({"input": "a.jpg", "predictions": [{"rank": 1, "index": 3, "label": "cat", "probability": 0.625}]})
    lines = piped.getvalue().splitlines()
    assert lines[0].split() == ["input", "rank", "label", "index", "probability", "error"]
    assert lines[1].split() == ["a.jpg", "1", "cat", "3", "62.50%"] and "█" not in piped.getvalue()
