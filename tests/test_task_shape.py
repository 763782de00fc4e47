"""The task shape: a task declared in one place runs everywhere a task runs, with nothing else told about it.

A test task (the mean brightness of each image, a "model" with no weights to
speak of) is added to the registry the way a task module adds itself; then
its command, its options, its records in every format, ``ptm batch`` in
JSON Lines and Parquet, ``ptm batch merge`` and the results page work, and
``ptm models -t`` offers it. Nothing outside the task names it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from helpers import DATA, run_ptm

from ptm_cli import tasks
from ptm_cli.errors import InputError
from ptm_cli.images.inputs import ImageInput
from ptm_cli.tasks.base import Option, Outcome, Plan, RunContext, Task

CATALOG = """
[[model]]
name = "glow"
task = "brightness"
architecture = "mean"
"""


class Meter:
    """The brightness "model": what a task's model must carry for records and the results page."""

    def __init__(self, plan: Plan[Meter]):
        assert plan.entry is not None
        self.entry = plan.entry
        self.weights_label = plan.weights_label
        self.device = "cpu"
        self.precision = type("Precision", (), {"name": "fp32"})()


class BrightnessTask(Task[Meter]):
    name = "brightness"
    title = "Brightness"
    summary = "How bright each image is."
    help = "How bright IMAGES are, from 0 (black) to 1 (white)."
    batch_help = "How bright IMAGES are, in shard files under --output DIR."
    default_model = "glow"
    options = (Option("digits", ("--digits",), "Decimal places.", kind="int", default=3, minimum=0, maximum=6),)
    columns = ("input", "brightness", "error")

    def build(self, plan: Plan[Meter], *, progress: bool) -> Meter:
        return Meter(plan)

    def run(
        self, model: Meter, inputs: Iterable[ImageInput], params: Mapping[str, Any], context: RunContext
    ) -> Iterator[Outcome]:
        for item in inputs:
            try:
                image = item.open().convert("L")
            except InputError as exc:
                yield Outcome({"input": item.name, "error": exc.record()})
                continue
            if context.on_image is not None:
                context.on_image(item.name, image)
            histogram = image.histogram()
            mean = sum(level * count for level, count in enumerate(histogram)) / (255 * sum(histogram))
            value = round(mean, int(params.get("digits", 3)))
            yield Outcome({"input": item.name, "model": model.entry.model, "brightness": value})

    def parquet_fields(self) -> list[tuple[str, Any]]:
        import pyarrow as pa

        return [("input", pa.string()), ("model", pa.string()), ("brightness", pa.float64())]

    def report_view(self, record: Mapping[str, Any]) -> dict[str, Any]:
        value = float(record["brightness"])
        return {"bars": [{"label": "brightness", "value": value, "text": f"{value:.3f}"}]}


@pytest.fixture
def brightness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test task registered as a task module registers itself, and a catalog entry for its model."""
    found = dict(tasks.registry())
    found["brightness"] = BrightnessTask()
    monkeypatch.setattr(tasks, "registry", lambda: found)
    catalog = tmp_path / "glow.toml"
    catalog.write_text(CATALOG)
    monkeypatch.setenv("PTM_CATALOG", str(catalog))
    (tmp_path / "bad.jpg").write_bytes(b"not a picture")
    (tmp_path / "glow.pth").write_bytes(b"a batch job verifies the file every worker loads")
    return tmp_path


def test_its_command_runs_with_its_options_and_the_shared_ones(brightness: Path) -> None:
    images = [str(DATA / "chelsea.png"), str(DATA / "coffee.png"), str(brightness / "bad.jpg")]
    result = run_ptm(["brightness", "--digits", "2", "-f", "jsonl", *images])
    assert result.code == 1 and result.stderr == "ptm: 1 of 3 inputs failed; see their error records\n"
    records = result.records()
    assert [r["input"] for r in records] == images
    assert all(0 < r["brightness"] < 1 and r["brightness"] == round(r["brightness"], 2) for r in records[:2])
    assert records[2]["error"]["type"] == "UnreadableImage"
    csv = run_ptm(["brightness", "-f", "csv", images[0]]).stdout
    assert csv.splitlines()[0] == "input,brightness,error"
    usage = run_ptm(["brightness", "--digits", "9", images[0]])
    assert usage.code == 2 and "--digits" in usage.stderr  # click's range, from the option's declaration


def test_batch_merge_and_the_results_page_take_it(brightness: Path) -> None:
    images = [str(DATA / "chelsea.png"), str(brightness / "bad.jpg"), str(DATA / "rocket.jpg")]
    for record_format in ("jsonl", "parquet"):
        job = brightness / f"job-{record_format}"
        done = run_ptm(
            [
                "batch",
                "brightness",
                "-w",
                str(brightness / "glow.pth"),
                *images,
                "--output",
                str(job),
                "--format",
                record_format,
                "--shard-size",
                "2",
                "-q",
            ]
        )
        assert done.code == 1, done.stderr
        assert json.loads(done.stdout)["task"] == "brightness"
    jsonl = run_ptm(["batch", "merge", str(brightness / "job-jsonl")]).records()
    parquet = run_ptm(["batch", "merge", str(brightness / "job-parquet")]).records()
    assert jsonl == parquet and [r["input"] for r in jsonl] == images
    page = brightness / "page.html"
    assert run_ptm(["brightness", images[0], "--report", str(page), "-q"]).code == 0
    text = page.read_text()
    assert "Brightness" in text and '"label":"brightness"' in text


def test_the_model_list_offers_it(brightness: Path) -> None:
    listed = run_ptm(["models", "-t", "brightness", "-f", "jsonl"]).records()
    assert [(r["model"], r["task"]) for r in listed] == [("glow", "brightness")]


def test_nothing_outside_the_tasks_names_a_task() -> None:
    """The server, batch jobs, the results page and the commands handle tasks they are given, by name of none."""
    import re

    root = Path(__file__).resolve().parent.parent / "ptm_cli"
    naming = re.compile(r"[\"'](classify|translate|zebra)[\"']")
    found = [
        f"{path.relative_to(root)}:{number}"
        for folder in ("serve", "batch", "output", "commands", "runtime", "nets")
        for path in sorted((root / folder).glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if naming.search(line)
    ]
    assert not found, f"these name a task: {found}"
