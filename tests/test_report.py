"""The results page: self-contained HTML, escaped data, rendered by a real headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import DATA, TinyClassifier, run_ptm
from PIL import Image, ImageStat

from ptm_cli import tasks
from ptm_cli.output.report import Report

HOSTILE = "<img src=x onerror=alert(1)>.png"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium here (.ci/run installs the Debian package chromium)"
)


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with no network, no background services and a fresh profile, bounded in time."""
    assert CHROMIUM is not None
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample photos, one under a name that is markup, and a broken file."""
    images = tmp_path_factory.mktemp("report") / "images"
    images.mkdir()
    for name in ("chelsea.png", "coffee.png", "rocket.jpg"):
        shutil.copy(DATA / name, images / name)
    shutil.copy(DATA / "chelsea.png", images / HOSTILE)
    (images / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    return images


@pytest.fixture
def classify_report(tiny: TinyClassifier, report_inputs: Path, tmp_path: Path) -> tuple[Path, list[dict]]:
    """The tiny classifier's results page for the photos, and its records."""
    page = tmp_path / "report.html"
    result = run_ptm(tiny.args("-k", "3", str(report_inputs), "--report", str(page)))
    assert result.code == 1, result.stderr  # the broken file
    assert f"ptm: wrote the report {page}" in result.stderr
    return page, result.records()


def test_page_is_self_contained_and_escapes_data(classify_report: tuple[Path, list[dict]]) -> None:
    page, _ = classify_report
    text = page.read_text(encoding="utf-8")
    assert "<img src=x" not in text  # the hostile name never appears as markup
    assert not re.search(r"(src|href)=[\"']?(https?:|//)", text)  # nothing fetched from anywhere
    assert "Content-Security-Policy" in text and "script-src 'sha256-" in html.unescape(text)
    assert text.count("data:image/") == 4  # one thumbnail per decodable input


def test_report_refuses_a_folder_or_a_missing_folder(report_inputs: Path, tmp_path: Path) -> None:
    args = ["classify", "-m", "alexnet", str(report_inputs)]
    folder = run_ptm([*args, "--report", str(tmp_path)])
    missing = run_ptm([*args, "--report", str(tmp_path / "no" / "r.html")])
    assert folder.code == 2 and "is a directory" in folder.stderr
    assert missing.code == 2 and "does not exist" in missing.stderr


@needs_chromium
def test_chromium_renders_one_entry_per_input_with_its_labels(
    classify_report: tuple[Path, list[dict]], tmp_path: Path
) -> None:
    page, records = classify_report
    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout
    names = [html.unescape(n) for n in re.findall(r'<div class="name">(.*?)</div>', dom)]
    assert names == [r["input"] for r in records]  # input order, every input, the hostile name as text
    entries = re.findall(r'<article class="entry( failed)?">(.*?)</article>', dom, flags=re.S)
    for (failed, body), record in zip(entries, records, strict=True):
        if "error" in record:
            assert failed and record["error"]["type"] in html.unescape(body)
            continue
        labels = re.findall(r'<span class="label">(.*?)</span>', body)
        assert labels == [p["label"] for p in record["predictions"]]
        assert f"{100 * record['predictions'][0]['probability']:.2f}%" in body
    sizes = re.findall(r'data-size="(\d+)x(\d+)"', dom)
    assert len(sizes) == 4 and all(int(w) > 0 and int(h) > 0 for w, h in sizes)  # every thumbnail decoded
    assert len(re.findall(r"<img\b", dom)) == 4  # no element came from a file name


@needs_chromium
def test_screenshot_is_not_blank(classify_report: tuple[Path, list[dict]], tmp_path: Path) -> None:
    page, _ = classify_report
    shot = tmp_path / "shot.png"
    chromium(
        "--window-size=1100,900",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        page.as_uri(),
        profile=tmp_path / "profile",
    )
    with Image.open(shot) as image:
        stddev = ImageStat.Stat(image.convert("L")).stddev[0]
    assert stddev > 20  # text, bars and photos, not an empty page


@needs_chromium
def test_translate_report_shows_input_and_output_side_by_side(
    generator_file: Path, report_inputs: Path, tmp_path: Path
) -> None:
    page = tmp_path / "zebra.html"
    result = run_ptm(
        [
            "zebra",
            "-w",
            str(generator_file),
            "--size",
            "32",
            "--output-dir",
            str(tmp_path / "out"),
            str(report_inputs / "chelsea.png"),
            str(report_inputs / "zz-broken.jpg"),
            "--report",
            str(page),
        ]
    )
    assert result.code == 1, result.stderr
    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout
    entries = re.findall(r'<article class="entry( failed)?">(.*?)</article>', dom, flags=re.S)
    assert len(entries) == 2
    assert len(re.findall(r'data-size="\d+x\d+"', entries[0][1])) == 2  # the horse and the zebra
    assert entries[1][0] and "UnreadableImage" in entries[1][1]
    assert "horse2zebra" in dom


@needs_chromium
def test_large_reports_show_one_page_at_a_time(tmp_path: Path) -> None:
    report = Report(tasks.get("classify"), {"model": "tiny"})
    thumb = Image.new("RGB", (64, 48), (200, 120, 40))
    for i in range(250):
        name = f"photo-{i:04}.jpg"
        report.keep_thumbnail(name, thumb)
        report.add({"input": name, "predictions": [{"rank": 1, "index": 0, "label": "apple", "probability": 0.5}]})
    page = tmp_path / "big.html"
    report.write(page)
    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout
    assert dom.count('<article class="entry">') == 100
    assert dom.count('<nav class="pages"') == 2 and dom.count('aria-current="page"') == 2  # pages 1 of 3
    assert ">photo-0000.jpg<" in dom and ">photo-0100.jpg<" not in dom


@needs_chromium
def test_batch_merge_report_shows_the_job(tiny: TinyClassifier, report_inputs: Path, tmp_path: Path) -> None:
    job = tmp_path / "job"
    ran = run_ptm(["batch", "classify", *tiny.options, "--shard-size", "2", "--output", str(job), str(report_inputs)])
    assert ran.code == 1, ran.stderr
    page = tmp_path / "job.html"
    merged = run_ptm(["batch", "merge", str(job), "-f", "jsonl", "--report", str(page)])
    assert merged.code == 1 and f"wrote the report {page}" in merged.stderr
    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout
    names = [html.unescape(n) for n in re.findall(r'<div class="name">(.*?)</div>', dom)]
    assert names == [r["input"] for r in merged.records()]
    assert len(re.findall(r'data-size="\d+x\d+"', dom)) == 4  # the four photos, not the broken file


# --- what --report may replace, and names that are not UTF-8 -------------------------------------


def test_report_never_replaces_a_file_that_is_not_a_results_page(tiny: TinyClassifier, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    shutil.copy(DATA / "coffee.png", photo)
    before = photo.read_bytes()
    refused = run_ptm(tiny.args(str(photo), "--report", str(photo)))
    assert refused.code == 2 and "not a ptm results page" in refused.stderr and "--force" in refused.stderr
    assert refused.stdout == "" and photo.read_bytes() == before  # refused before any work
    page = tmp_path / "page.html"
    first = run_ptm(tiny.args(str(photo), "--report", str(page)))
    again = run_ptm(tiny.args(str(photo), "--report", str(page)))  # a page ptm wrote is replaced
    assert first.code == again.code == 0, again.stderr
    notes = tmp_path / "notes.html"
    notes.write_text("<p>my notes</p>")
    assert run_ptm(tiny.args(str(photo), "--report", str(notes))).code == 2
    forced = run_ptm(tiny.args(str(photo), "--report", str(notes), "--force"))
    assert forced.code == 0 and 'id="ptm-data"' in notes.read_text()


def test_batch_merge_report_never_replaces_the_jobs_own_files(tiny: TinyClassifier, tmp_path: Path) -> None:
    job = tmp_path / "job"
    assert run_ptm(["batch", "classify", *tiny.options, "--output", str(job), str(DATA / "coffee.png")]).code == 0
    manifest = job / "_MANIFEST.jsonl"
    before = manifest.read_bytes()
    refused = run_ptm(["batch", "merge", str(job), "--report", str(manifest)])
    assert refused.code == 2 and "not a ptm results page" in refused.stderr
    assert manifest.read_bytes() == before


def test_a_name_that_is_not_utf8_keeps_the_page_data_valid_json(tiny: TinyClassifier, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    odd = os.fsdecode(b"caf\xe9-\xff.png")  # Latin-1 bytes: a Linux name that is no UTF-8 text
    shutil.copy(DATA / "coffee.png", folder / odd)
    page = tmp_path / "page.html"
    result = run_ptm(tiny.args(str(folder), "--report", str(page)))
    assert result.code == 0, result.stderr
    text = page.read_bytes().decode("utf-8")  # the page itself is valid UTF-8
    data = re.search(r'<script type="application/json" id="ptm-data">(.*?)</script>', text, flags=re.S)
    assert data is not None
    parsed = json.loads(data.group(1))  # what the page's script does with it
    assert [entry["record"]["input"] for entry in parsed["entries"]] == [str(folder / odd)]
    assert parsed["entries"][0]["thumb"].startswith("data:image/")
