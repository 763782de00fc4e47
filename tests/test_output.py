"""What ptm writes: records in every format and output files.

Records are streamed and parseable: names from data are shown verbatim (never rich markup,
terminal escapes or spreadsheet formulas) and no NaN reaches a record or an image. Output files
are written whole, through devices and pipes, never over links, with the modes a user expects.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
import torch
from helpers import TinyClassifier, assert_refused, run_ptm

from ptm_cli.errors import OutputError, UsageError
from ptm_cli.output.imagefiles import image_format_for, write_output
from ptm_cli.output.records import RecordWriter, default_format, round_float

RECORDS = [
    {"input": "a.jpg", "predictions": [{"rank": 1, "label": "cat", "probability": 0.75}]},
    {"input": 'b, "quoted".jpg', "error": {"type": "UnreadableImage", "message": "broken"}},
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
    [
        ("a.png", None, "PNG"),
        ("a.JPG", None, "JPEG"),
        ("a.webp", None, "WEBP"),
        ("a.out", "jpg", "JPEG"),
        ("a", "tiff", "TIFF"),
    ],
)
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

    record = {
        "input": "a.jpg",
        "predictions": [{"rank": 1, "index": 3, "label": "tabby, tabby cat", "probability": 0.625}],
    }
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


# --- names from data are never markup or formulas, and big tables stream --------------------------


# "a[/b].png" is a file "b].png" in a folder "a[".
MARKUP_NAMES = ["scan [b].jpg", "a[/b].png", "[link=https:example]x.png", "[bold red]y.png", ":smile:.png"]


def test_file_names_with_markup_are_shown_verbatim_in_tables(tiny: TinyClassifier, tmp_path: Path) -> None:
    from PIL import Image

    paths = []
    (tmp_path / "a[").mkdir()
    for index, name in enumerate(MARKUP_NAMES):
        Image.new("RGB", (40, 40), (index * 40, 90, 200)).save(tmp_path / name, format="PNG")
        paths.append(str(tmp_path / name))
    escape_name = tmp_path / "\x1b[2Jcleared.png"
    Image.new("RGB", (40, 40)).save(escape_name, format="PNG")
    result = run_ptm([*tiny.classify, "-f", "table", "-k", "1", *paths, str(escape_name)])
    assert result.code == 0, result.stderr
    for name in MARKUP_NAMES:
        assert name in result.stdout
    assert "\x1b" not in result.stdout and "\\x1b[2Jcleared.png" in result.stdout
    assert "]8;" not in result.stdout  # no terminal hyperlink was made


def test_tensor_names_with_markup_are_shown_verbatim(tmp_path: Path) -> None:
    names = ["[bold]w[/bold]", "a[/b]", "[link=http://127.0.0.1:9/]hidden[/link]"]
    torch.save({name: torch.zeros(2) for name in names}, tmp_path / "w.pth")
    result = run_ptm(["weights", "inspect", str(tmp_path / "w.pth"), "-f", "table"])
    assert result.code == 0, result.stderr
    for name in names:
        assert name in result.stdout


def test_names_in_messages_cannot_drive_the_terminal_or_forge_lines(tmp_path: Path) -> None:
    name = tmp_path / "evil\x1b]0;pwned\x07\nptm: all good.pth"
    result = run_ptm(["weights", "inspect", str(name)])
    assert result.code == 2
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "\\x1b]0;pwned\\x07\\nptm: all good.pth" in result.stderr


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_csv_and_tsv_defuse_spreadsheet_formulas_in_names(
    tiny: TinyClassifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    import csv
    import io

    from PIL import Image

    names = ["=HYPERLINK(1).png", "+1+1.png", "-2+3.png", "@SUM(1).png", "\tx.png", "plain.png"]
    for name in names:
        Image.new("RGB", (40, 40), "blue").save(tmp_path / name, format="PNG")
    monkeypatch.chdir(tmp_path)
    result = run_ptm([*tiny.classify, "-f", fmt, "-k", "1", "--", *names])
    assert result.code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout, newline=""), delimiter="," if fmt == "csv" else "\t"))
    assert [row["input"] for row in rows] == ["'" + n for n in names[:-1]] + ["plain.png"]
    assert all(float(row["probability"]) > 0 for row in rows)


def test_csv_cells_that_start_like_formulas_get_a_quote_and_json_is_untouched() -> None:
    import csv
    import io

    from ptm_cli.output.records import RecordWriter

    names = ["=1+2", "+1", "-1", "@A1", "\t=1", "\r=1", "ok", "a=b"]
    for fmt, delimiter in (("csv", ","), ("tsv", "\t")):
        stream = io.StringIO()
        with RecordWriter(stream, fmt, columns=["input", "probability"]) as writer:
            for name in names:
                writer.write({"input": name, "probability": -0.5})
        rows = list(csv.DictReader(io.StringIO(stream.getvalue(), newline=""), delimiter=delimiter))
        assert [row["input"] for row in rows] == ["'=1+2", "'+1", "'-1", "'@A1", "'\t=1", "'\r=1", "ok", "a=b"]
        assert stream.getvalue().count("\n") == len(names) + 1 and "\r\n" not in stream.getvalue()
        assert {row["probability"] for row in rows} == {"-0.5"}  # numbers are data, not formulas
    stream = io.StringIO()
    with RecordWriter(stream, "jsonl", columns=["input"]) as writer:
        for name in names:
            writer.write({"input": name})
    assert [json.loads(line)["input"] for line in stream.getvalue().splitlines()] == names


def test_a_big_table_is_drawn_line_by_line_exactly_as_rich_draws_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from ptm_cli.output import records as output

    rows = [
        {"model": f"m{i}[x]", "weights": "W" * (i % 7), "params": i * 1001, "acc1": 0.5 + i, "cached": i % 2 == 0}
        for i in range(300)
    ]
    rows.append({"model": "wide 猫 名前", "weights": "\x1b[31m", "params": None, "acc1": -1.25, "cached": None})

    def draw() -> str:
        stream = io.StringIO()
        with output.RecordWriter(stream, "table", columns=["model", "weights", "params", "acc1", "cached"]) as w:
            for row in rows:
                w.write(row)
        return stream.getvalue()

    monkeypatch.setattr(output, "RICH_TABLE_ROWS", 10_000)
    by_rich = draw()
    monkeypatch.setattr(output, "RICH_TABLE_ROWS", 10)
    assert draw() == by_rich


def test_models_table_of_a_huge_catalog_never_builds_a_rich_table(tmp_path: Path) -> None:
    import subprocess
    import sys

    catalog = tmp_path / "big.toml"
    catalog.write_text(
        "".join(
            f'[[model]]\nname = "m{i:05d}"\narchitecture = "resnet18"\nnum_params = {i + 1}\n\n' for i in range(3000)
        )
    )
    code = (
        "import sys; from ptm_cli.cli import run; code = run(['models', '-f', 'table']); "
        "sys.stderr.write(repr([code, 'rich.table' in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env={**os.environ, "PTM_CATALOG": str(catalog)}, timeout=120
    )
    assert done.stderr.decode().endswith("[0, False]"), done.stderr
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 1 + 3000 + len([e for e in lines if not e.startswith(("m0", "model"))])
    assert [line.split()[0] for line in lines if line.startswith("m0")][:2] == ["m00000", "m00001"]


# --- numbers that are not finite never reach a record or an image ---------------------------------


def strict_json(line: str) -> object:
    def refuse(name: str) -> None:
        raise AssertionError(f"not JSON: {name}")

    return json.loads(line, parse_constant=refuse)


def test_nan_logits_give_an_error_record_and_valid_json(tiny: TinyClassifier, tmp_path: Path) -> None:
    from helpers import informative_state_dict
    from PIL import Image

    state = informative_state_dict()
    last_bias = [k for k in state if k.endswith(".bias")][-1]
    state[last_bias] = torch.full_like(state[last_bias], float("nan"))
    torch.save(state, tmp_path / "nan.pth")
    for index in range(2):
        Image.new("RGB", (40, 40), (index * 90, 10, 10)).save(tmp_path / f"{index}.png")
    args = [*tiny.classify[:-1], str(tmp_path / "nan.pth"), str(tmp_path / "0.png"), str(tmp_path / "1.png")]
    for fmt in ("jsonl", "json"):
        result = run_ptm([*args, "-f", fmt])
        assert result.code == 1, result.stderr
        records = (
            [strict_json(line) for line in result.stdout.splitlines()] if fmt == "jsonl" else strict_json(result.stdout)
        )
        assert [r["error"]["type"] for r in records] == ["NonFiniteOutput", "NonFiniteOutput"]  # type: ignore[index]
        assert "NaN" not in result.stdout.replace("NaN or infinity", "")
    assert "2 of 2 inputs failed" in result.stderr


def test_json_writer_never_writes_nan() -> None:
    import io

    from ptm_cli.output.records import RecordWriter

    stream = io.StringIO()
    with RecordWriter(stream, "jsonl", columns=["x"]) as writer:
        writer.write({"x": float("nan"), "y": [float("inf"), 1.5], "z": {"w": float("-inf")}})
    assert strict_json(stream.getvalue()) == {"x": None, "y": [None, 1.5], "z": {"w": None}}


def test_a_generator_with_nan_weights_writes_no_image(generator_file: Path, tmp_path: Path) -> None:
    from PIL import Image

    state = torch.load(generator_file, weights_only=True)
    last = [k for k in state if k.endswith(".bias")][-1]
    state[last] = torch.full_like(state[last], float("nan"))
    torch.save(state, tmp_path / "nan.pth")
    Image.new("RGB", (24, 20), "white").save(tmp_path / "horse.png")
    out = tmp_path / "zebra.png"
    result = run_ptm(
        ["zebra", "-w", str(tmp_path / "nan.pth"), "--size", "32", str(tmp_path / "horse.png"), "-o", str(out)]
    )
    assert result.code == 1, result.stderr
    (record,) = [strict_json(line) for line in result.stdout.splitlines()]
    assert record["error"]["type"] == "NonFiniteOutput"  # type: ignore[index]
    assert not out.exists()


# --- output files: special files, links, modes, a full disk ---------------------------------------


@pytest.fixture
def zebra_horse(generator_file: Path, tmp_path: Path) -> list[str]:
    """``ptm zebra`` with the shared generator on a small horse in this test's folder, before its ``-o``."""
    from PIL import Image

    Image.effect_noise((24, 20), 50).convert("RGB").save(tmp_path / "horse.png")
    return ["zebra", "-w", str(generator_file), "--size", "32", str(tmp_path / "horse.png")]


def char_device(path: Path) -> Path:
    import stat

    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the same device as /dev/null
    return path


def is_char_device(path: Path) -> bool:
    import stat

    return stat.S_ISCHR(os.lstat(path).st_mode)


@pytest.mark.parametrize("force", [False, True])
def test_output_onto_a_character_device_writes_through_it(zebra_horse: list[str], tmp_path: Path, force: bool) -> None:
    node = char_device(tmp_path / "null")
    result = run_ptm([*zebra_horse, "-o", str(node), *(["--force"] if force else [])])
    assert result.code == 0, result.stderr
    assert is_char_device(node)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_output_onto_dev_null_itself_needs_no_force(zebra_horse: list[str]) -> None:
    for extra in ([], ["--force"]):
        result = run_ptm([*zebra_horse, "-o", os.devnull, *extra])
        assert result.code == 0, result.stderr
        assert is_char_device(Path(os.devnull))


def test_output_into_a_fifo_is_written_through(zebra_horse: list[str], tmp_path: Path) -> None:
    import stat
    import threading

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = run_ptm([*zebra_horse, "-o", str(fifo)])
    reader.join(timeout=60)
    assert result.code == 0, result.stderr
    assert received and received[0].startswith(b"\x89PNG\r\n\x1a\n")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("force", [False, True])
def test_links_at_the_output_path_are_never_replaced_or_followed(
    zebra_horse: list[str], tmp_path: Path, force: bool
) -> None:
    target = tmp_path / "elsewhere.png"
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(target)
    precious = tmp_path / "precious.png"
    precious.write_bytes(b"keep me")
    linked = tmp_path / "linked.png"
    linked.symlink_to(precious)
    for path in (dangling, linked):
        result = run_ptm([*zebra_horse, "-o", str(path), *(["--force"] if force else [])])
        assert result.code == 1, result.stderr
        (record,) = result.records()
        assert record["error"]["type"] == "OutputError"
        assert ("--force" in record["error"]["message"]) != force
        assert path.is_symlink()
    assert not target.exists()
    assert precious.read_bytes() == b"keep me"


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_new_outputs_get_the_umasks_mode_and_replaced_ones_keep_theirs(
    zebra_horse: list[str], generator_file: Path, tmp_path: Path, mask: int
) -> None:
    import stat

    old = os.umask(mask)
    try:
        fresh = tmp_path / "fresh.png"
        assert run_ptm([*zebra_horse, "-o", str(fresh)]).code == 0
        converted = tmp_path / "fresh.safetensors"
        assert run_ptm(["weights", "convert", str(generator_file), str(converted)]).code == 0
        kept = tmp_path / "kept.png"
        kept.write_bytes(b"old")
        os.chmod(kept, 0o604)
        assert run_ptm([*zebra_horse, "-o", str(kept), "--force"]).code == 0
        kept_weights = tmp_path / "kept.pth"
        kept_weights.write_bytes(b"old")
        os.chmod(kept_weights, 0o640)
        assert run_ptm(["weights", "convert", str(generator_file), str(kept_weights), "--force"]).code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(os.stat(converted).st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o604 and kept.read_bytes().startswith(b"\x89PNG")
    assert stat.S_IMODE(os.stat(kept_weights).st_mode) == 0o640 and kept_weights.read_bytes() != b"old"


def test_convert_never_writes_over_devices_pipes_or_links(generator_file: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)  # opening it would hang: it must not be opened at all
    target = tmp_path / "elsewhere.pth"
    dangling = tmp_path / "dangling.pth"
    dangling.symlink_to(target)
    precious = tmp_path / "precious.pth"
    precious.write_bytes(b"keep me")
    linked = tmp_path / "linked.pth"
    linked.symlink_to(precious)
    destinations = [fifo, dangling, linked]
    if os.geteuid() == 0:
        destinations.append(char_device(tmp_path / "null.pth"))
    for dst in destinations:
        for extra in ([], ["--force"]):
            result = run_ptm(["weights", "convert", str(generator_file), str(dst), *extra])
            assert_refused(result, "not a regular file", "choose another name")
    assert not target.exists() and precious.read_bytes() == b"keep me"
    assert os.path.islink(dangling) and os.path.islink(linked)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".h5"])
def test_convert_onto_a_full_disk_is_exit_2(tmp_path: Path, suffix: str) -> None:
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        torch.save({"w": torch.zeros(100_000)}, tmp_path / "big.pth")
        result = run_ptm(["weights", "convert", str(tmp_path / "big.pth"), str(small / f"out{suffix}")])
        assert_refused(result, "No space left on device", "free space")
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
