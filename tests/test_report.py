"""The results page: self-contained HTML, escaped data, rendered by a real headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from browser import chromium, needs_chromium
from helpers import DATA, SeededWeights, TinyClassifier, run_ptm
from PIL import Image, ImageStat

from ptm_cli import tasks
from ptm_cli.output.report import Report

HOSTILE = "<img src=x onerror=alert(1)>.png"


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


# --- boxes over the input: any task's view with "boxes" gets them -------------------------------

BOX_HOSTILE = "<img src=x onerror=alert(1)>"
CAT = {"label": "cat", "text": "cat 0.91", "colour": "#ff00ff", "x": 0.25, "y": 0.2, "w": 0.5, "h": 0.4}
PERSON = {
    "label": "person",
    "text": "person 0.98",
    "colour": "#1f77b4",
    "x": 0.2,
    "y": 0.1,
    "w": 0.6,
    "h": 0.8,
    "points": [[0.5, 0.15], [0.5, 0.3], [0.35, 0.45], [0.65, 0.45], None, [0.6, 0.8]],
    # three edges join visible points; the others name a hidden point, no point, or not an index
    "edges": [[0, 1], [1, 2], [1, 3], [1, 4], [4, 5], [9, 1], ["0", 1], [0.5, 1]],
}
PEOPLE_BOXES = [
    PERSON,
    {"label": "person", "text": "person 0.55", "colour": "#1f77b4", "x": 0.05, "y": 0.02, "w": 0.3, "h": 0.3},
    {"label": BOX_HOSTILE, "text": f"{BOX_HOSTILE} 0.50", "colour": "red;x", "x": 0.6, "y": 0.5, "w": 0.5, "h": 0.3},
    {"label": "kite", "text": "kite 0.30", "colour": "#ffee00", "x": None, "y": 0.5, "w": 0.5, "h": 0.3},  # not drawn
]
GREY = (128, 128, 128)


class BoxTask:
    """A task the page knows nothing about, whose records carry boxes."""

    name = "spot"
    title = "spotting"

    def report_view(self, record: dict) -> dict:
        return {"boxes": record["boxes"], "lines": [f"{len(record['boxes'])} found"]}


@pytest.fixture(scope="module")
def boxes_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A page with boxes on a plain grey image, on a portrait photo, and none on a failed or empty input."""
    report = Report(BoxTask(), {"model": "fake-detector"})
    report.keep_thumbnail("grey.png", Image.new("RGB", (400, 400), GREY))  # shown at 144x144 in the 192x144 box
    report.add({"input": "grey.png", "boxes": [CAT]})
    report.keep_thumbnail("people.png", Image.new("RGB", (300, 400), (60, 140, 70)))
    report.add({"input": "people.png", "boxes": PEOPLE_BOXES})
    report.add({"input": "broken.jpg", "error": {"type": "UnreadableImage", "message": "not an image"}})
    report.keep_thumbnail("nothing.png", Image.new("RGB", (400, 300), (30, 30, 90)))
    report.add({"input": "nothing.png", "boxes": []})
    page = tmp_path_factory.mktemp("boxes") / "boxes.html"
    report.write(page)
    return page


def _entries(dom: str) -> list[str]:
    return [body for _, body in re.findall(r'<article class="entry( failed)?">(.*?)</article>', dom, flags=re.S)]


def _toggles(dom: str) -> list[tuple[bool, str]]:
    """(checked, accessible label) of each class checkbox in the header."""
    found = re.findall(r"<label><input ([^>]*)>(.*?)</label>", dom, flags=re.S)
    return [('checked=""' in attrs, html.unescape(re.sub(r"<[^>]*>", "", text))) for attrs, text in found]


def _marked(dom: str) -> list[tuple[str, bool]]:
    """(tag, hidden) of every element that belongs to a class, by the class's index."""
    tags = re.findall(r'<(\w+)\b([^>]*\bdata-class="(\d+)"[^>]*)>', dom)
    return [(index, "off" in re.search(r'\sclass="([^"]*)"', attrs).group(1).split()) for _, attrs, index in tags]


@needs_chromium
def test_boxes_are_drawn_as_svg_over_the_thumbnail_with_labels_as_text(boxes_page: Path, tmp_path: Path) -> None:
    dom = chromium("--dump-dom", boxes_page.as_uri(), profile=tmp_path / "profile").stdout
    grey, people, broken, nothing = _entries(dom)
    assert len(re.findall(r"<rect\b", grey)) == 1 and len(re.findall(r"<rect\b", people)) == 3  # the kite has no x
    assert "<svg" not in broken + nothing and 'class="frame"' not in nothing
    assert 'viewBox="0 0 192 192"' in grey and 'preserveAspectRatio="none"' in grey
    assert '<rect x="48" y="38.4" width="96" height="76.8"' in grey  # fractions of the 192x192 thumbnail
    assert len(re.findall(r"<circle\b", people)) == 5 and len(re.findall(r"<line\b", people)) == 3
    assert 'stroke="#d62728"' in people and "red;x" not in people  # a colour that is not #rrggbb is not used
    # every box is listed as text, the one that is not drawn too; the hostile label is text only
    found = [html.unescape(t) for t in re.findall(r'<div class="meta found"[^>]*>(.*?)</div>', people)]
    assert found == [b["text"] for b in PEOPLE_BOXES]
    captions = [html.unescape(t) for t in re.findall(r'<span class="cap"[^>]*>(.*?)</span>', people)]
    assert captions == [b["text"] for b in PEOPLE_BOXES[:3]]
    page_dom = re.sub(r"<script\b.*?</script>", "", dom, flags=re.S)
    assert len(re.findall(r"<img\b", page_dom)) == 3 and "onerror" not in re.sub(r">[^<]*<", "><", page_dom)
    assert _toggles(dom) == [(True, f"{BOX_HOSTILE} (1)"), (True, "cat (1)"), (True, "kite (1)"), (True, "person (2)")]
    assert not any(hidden for _, hidden in _marked(dom))


@needs_chromium
def test_box_pixels_land_where_the_box_says(boxes_page: Path, tmp_path: Path) -> None:
    import numpy as np

    def shot(url: str, name: str) -> np.ndarray:
        path = tmp_path / name
        chromium(
            "--window-size=1100,900",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--screenshot={path}",
            url,
            profile=tmp_path / "profile",
        )
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB")).astype(int)

    pixels = shot(boxes_page.as_uri(), "shown.png")
    grey = (np.abs(pixels - np.array(GREY)) <= 6).all(axis=2)
    rows, cols = np.flatnonzero(grey.sum(axis=1) > 100), np.flatnonzero(grey.sum(axis=0) > 60)
    top, left = rows[0], cols[0]
    assert (rows[-1] - top + 1, cols[-1] - left + 1) == (144, 144)  # the square thumbnail, letterboxed

    y0, x0 = max(0, top - 30), max(0, left - 54)

    def magenta(pixels: np.ndarray) -> np.ndarray:
        near = pixels[y0 : top + 174, x0 : left + 198]  # the thumbnail and a margin, not the header's swatch
        r, g, b = near[..., 0], near[..., 1], near[..., 2]
        return (r > 180) & (g < 90) & (b > 180)

    ys, xs = np.nonzero(magenta(pixels))
    ys, xs = ys + y0, xs + x0
    # the box is over the image as shown (144 pixels a side), not over the thumbnail's box around it
    assert abs(xs.min() - (left + 36)) <= 3 and abs(xs.max() - (left + 108)) <= 3  # x 0.25..0.75
    assert abs(ys.max() - (top + 86.4)) <= 3  # y + h = 0.6
    assert top + 28.8 - 16 <= ys.min() <= top + 28.8 + 3  # the box's top edge at 0.2, with its caption above it
    left_edge = ys[np.abs(xs - (left + 36)) <= 1]
    assert left_edge.max() - left_edge.min() >= 50  # a drawn side, not a speck
    assert grey[top + 58, left + 72]  # the rectangle is not filled
    hidden = shot(boxes_page.as_uri() + "#hide=cat", "hidden.png")
    assert not magenta(hidden).any()


@needs_chromium
def test_address_can_start_with_classes_hidden(boxes_page: Path, tmp_path: Path) -> None:
    from urllib.parse import quote

    url = f"{boxes_page.as_uri()}#hide=person,{quote(BOX_HOSTILE, safe='')},no-such-class"
    dom = chromium("--dump-dom", url, profile=tmp_path / "profile").stdout
    assert _toggles(dom) == [
        (False, f"{BOX_HOSTILE} (1)"),
        (True, "cat (1)"),
        (True, "kite (1)"),
        (False, "person (2)"),
    ]
    marked = _marked(dom)
    assert len(marked) == 3 + 4 + 3 + 3  # cat: box, caption, line; people: 4 lines, 3 drawn with captions
    assert all(hidden == (index in {"0", "3"}) for index, hidden in marked)
    assert ("1", False) in marked and ("2", False) in marked


def _with_script(page: Path, script: str) -> None:
    """Add a script to the page, allowed by its hash like the page's own (the page's policy is otherwise kept)."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    text = page.read_text(encoding="utf-8")
    assert text.count("script-src &#x27;") == 1
    text = text.replace("script-src ", f"script-src &#x27;sha256-{digest}&#x27; ", 1)
    page.write_text(text.replace("</body>", f"<script>{script}</script>\n</body>", 1), encoding="utf-8")


@needs_chromium
def test_unchecking_a_class_hides_it_on_every_page(tmp_path: Path) -> None:
    report = Report(BoxTask(), {"model": "fake-detector"})
    thumb = Image.new("RGB", (80, 60), GREY)
    for i in range(150):
        report.keep_thumbnail(f"photo-{i:04}.png", thumb)
        report.add({"input": f"photo-{i:04}.png", "boxes": [CAT, {**PERSON, "points": [], "edges": []}]})
    page = tmp_path / "pages.html"
    report.write(page)
    _with_script(
        page,
        'document.querySelectorAll(".classes input")[1].click();'  # person: cat is 0
        'document.querySelectorAll("#pages-top button")[1].click();'
        'document.body.setAttribute("data-address", location.hash);',
    )
    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout
    assert ">photo-0100.png<" in dom and ">photo-0000.png<" not in dom  # the second page
    assert _toggles(dom) == [(True, "cat (150)"), (False, "person (150)")]
    assert len(re.findall(r"<rect\b", dom)) == 100  # drawn as the thumbnails loaded, after the click
    marked = _marked(dom)
    assert len(marked) == 50 * 6 and all(hidden == (index == "1") for index, hidden in marked)
    assert 'data-address="#hide=person"' in dom  # the address follows the checkboxes


@needs_chromium
def test_segment_report_shows_overlays_with_their_coverage(
    seeded_weights: SeededWeights, report_inputs: Path, tmp_path: Path
) -> None:
    """Each photo beside its overlay (classes tinted, legend drawn in), and the coverage as coloured bars."""
    from ptm_cli.output.drawing import hex_colour

    weights = seeded_weights.segmenter("lraspp_mobilenet_v3_large", boost={15: 1.0})
    page = tmp_path / "segment.html"
    photos = [str(report_inputs / n) for n in ("chelsea.png", "rocket.jpg", "zz-broken.jpg")]
    args = ["segment", "-m", "lraspp_mobilenet_v3_large", "-w", str(weights), "-f", "jsonl", *photos]
    result = run_ptm([*args, "--report", str(page)])
    assert result.code == 1, result.stderr  # the broken file
    records = result.records()
    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout
    entries = re.findall(r'<article class="entry( failed)?">(.*?)</article>', dom, flags=re.S)
    assert len(entries) == 3
    for (failed, body), record in zip(entries, records, strict=True):
        if "error" in record:
            assert failed and "UnreadableImage" in body
            continue
        assert len(re.findall(r'data-size="\d+x\d+"', body)) == 2  # the photo and its overlay
        labels = [html.unescape(x) for x in re.findall(r'<span class="label">(.*?)</span>', body)]
        assert labels == [c["label"] for c in record["coverage"]]
        first = record["coverage"][0]
        assert f"{100 * first['share']:.1f}%" in body
        red, green, blue = (int(hex_colour(first["label"])[i : i + 2], 16) for i in (1, 3, 5))
        assert f"background: rgb({red}, {green}, {blue})" in body  # the bar has the class's colour
    assert "lraspp_mobilenet_v3_large" in dom
