"""A results page people can look at: one self-contained HTML file per run.

:class:`Report` collects records as a run produces them, with small
thumbnails (at most :data:`THUMB_SIDE` pixels, WebP, embedded as data), and
writes one HTML file that needs nothing else: no network, no external
scripts, styles or fonts, so it can be mailed or opened offline.

Safety: everything that comes from data (file names, labels, messages) goes
into a JSON block that the page's own script turns into text nodes
(``textContent``), never into markup; ``<``, ``>`` and ``&`` are escaped
inside that block so it cannot end the script element. A Content-Security-
Policy allows only the page's own script (by its hash) and ``data:`` images,
so even a file named ``<img src=x onerror=alert(1)>.jpg`` is shown as text
and runs nothing.

Size: the page shows 100 entries at a time (page buttons; the DOM holds one
page), so 10,000 images open quickly; the file is dominated by thumbnails,
about 3-6 kB each (see README for a measured figure).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..version import __version__

THUMB_SIDE = 192
"""Longest side of a thumbnail in pixels (at most 256, as the page promises)."""
THUMB_QUALITY = 70
PAGE_SIZE = 100
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


# Every results page holds this tag within its first kilobytes (the style before it is fixed).
PAGE_SIGNATURE = b'<script type="application/json" id="ptm-data">'
_SIGNATURE_WITHIN = 64 << 10


def check_destination(path: Path, *, force: bool = False) -> Path:
    """Refuse a report path that cannot be written, before any work is done.

    An existing regular file is replaced only when it is a results page ptm
    wrote (or with ``force``): ``--report photo.jpg`` or a batch job's
    manifest named by mistake stays as it was.
    """
    from ..errors import UsageError
    from ..runtime.fsutil import folder_of, is_regular_or_absent, is_stream_target

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--report {path} is a folder; give the name of the .html file to write")
    if not folder_of(path).is_dir():
        raise UsageError(f"--report {path}: the folder {path.parent} does not exist")
    if not (is_regular_or_absent(path) or is_stream_target(path)):
        raise UsageError(f"--report {path} is not a regular file, so ptm will not replace it; choose another name")
    if not force and path.exists() and not is_stream_target(path) and not is_results_page(path):
        raise UsageError(
            f"--report {path} exists and is not a ptm results page; choose another name, or add --force to replace it"
        )
    return path


def is_results_page(path: Path) -> bool:
    """Whether ``path`` is a results page ptm wrote (read: its first 64 KiB, at most)."""
    try:
        with open(path, "rb") as file:
            return PAGE_SIGNATURE in file.read(_SIGNATURE_WITHIN)
    except OSError:
        return False


def thumbnail(image: Any, side: int = THUMB_SIDE) -> str:
    """A ``data:`` URI of a small WebP (JPEG where Pillow lacks WebP) copy of a PIL image."""
    from PIL import Image, features

    small = image.convert("RGB")
    small.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    buffer = io.BytesIO()
    fmt = "WEBP" if features.check("webp") else "JPEG"
    small.save(buffer, fmt, quality=THUMB_QUALITY)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


class Report:
    """Entries in input order for one run of ``task``; :meth:`html` renders the page.

    The task says how its records look (``report_view``: bars and lines of
    text) and what it is called (``title``); the page's script draws any of
    them the same way, so a new task needs nothing here.
    """

    def __init__(self, task: Any, header: Mapping[str, Any]):
        self.task = task
        self.header = {**header, "ptm": __version__}
        self.entries: list[dict[str, Any]] = []
        self._thumbs: dict[str, str] = {}
        self._lock = threading.Lock()

    # -- collecting ---------------------------------------------------------------------------

    def keep_thumbnail(self, name: str, image: Any) -> None:
        """Remember ``image``'s thumbnail for the record of input ``name`` (thread-safe)."""
        uri = thumbnail(image)
        with self._lock:
            self._thumbs[name] = uri

    def add(self, record: Mapping[str, Any], *, output_image: Any = None) -> None:
        """One record, with the thumbnail kept for its input (and the output's, for translation)."""
        with self._lock:
            thumb = self._thumbs.pop(str(record.get("input")), None)
        entry: dict[str, Any] = {"record": dict(record), "thumb": thumb}
        if "error" not in record:
            entry["view"] = self.task.report_view(record)
        if output_image is not None:
            entry["output_thumb"] = thumbnail(output_image)
        self.entries.append(entry)

    # -- rendering ------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        failed = sum(1 for e in self.entries if "error" in e["record"])
        skipped = sum(1 for e in self.entries if e["record"].get("skipped"))
        return {"inputs": len(self.entries), "failed": failed, "skipped": skipped}

    def html(self) -> str:
        data = {
            "title": self.task.title,
            "header": self.header,
            "counts": self.counts(),
            "page_size": PAGE_SIZE,
            "entries": self.entries,
        }
        payload = _script_safe_json(data)
        script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode("utf-8")).digest()).decode("ascii")
        policy = (
            "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
            f"script-src 'sha256-{script_hash}'; base-uri 'none'; form-action 'none'"
        )
        title = f"ptm {self.task.name}: {self.header.get('model', '')}"
        return _PAGE.format(
            policy=html.escape(policy, quote=True),
            title=html.escape(title),
            style=_STYLE,
            payload=payload,
            script=_SCRIPT,
        )

    def write(self, path: Path) -> None:
        """Write the page to ``path`` whole or not at all (a device or FIFO is written through)."""
        from .imagefiles import write_output

        write_output(Path(path), self.html().encode("utf-8"), force=True)


def _script_safe_json(data: Any) -> str:
    """JSON that can sit inside <script> without ending it or opening a comment."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    # A file name that is not UTF-8 holds lone surrogates (Python's surrogateescape): as JSON escapes
    # they keep the page's data valid JSON, and the name shows with a replacement character.
    text = _LONE_SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", text)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header id="header"></header>
<nav class="pages" id="pages-top"></nav>
<main id="entries"></main>
<nav class="pages" id="pages-bottom"></nav>
<script type="application/json" id="ptm-data">{payload}</script>
<script>{script}</script>
</body>
</html>
"""

_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:16px;
color:#1b1b1b;background:#fafafa}
header h1{font-size:20px;margin:0 0 8px}
header dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0 0 12px}
header dt{color:#666}header dd{margin:0}
.entry{display:flex;gap:16px;align-items:flex-start;background:#fff;border:1px solid #e3e3e3;border-radius:6px;
padding:10px;margin:8px 0}
.entry.failed{border-color:#e0a0a0;background:#fff7f7}
.thumb{width:192px;min-width:192px;height:144px;display:flex;align-items:center;justify-content:center;
background:#f0f0f0;border-radius:4px;overflow:hidden;color:#888;font-size:12px}
.thumb img{max-width:100%;max-height:100%}
.body{flex:1;min-width:0}
.name{font-weight:600;word-break:break-all;margin-bottom:6px}
.error{color:#a40000;white-space:pre-wrap}
.pred{display:grid;grid-template-columns:minmax(120px,260px) 1fr 64px;gap:8px;align-items:center;margin:2px 0}
.bar{height:10px;background:#e8e8e8;border-radius:5px;overflow:hidden}
.bar span{display:block;height:100%;background:#3b7dd8}
.pct{text-align:right;font-variant-numeric:tabular-nums}
.label{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.meta{color:#666;font-size:12px}
nav.pages{display:flex;gap:4px;flex-wrap:wrap;margin:8px 0}
nav.pages button{border:1px solid #ccc;background:#fff;border-radius:4px;padding:2px 8px;cursor:pointer}
nav.pages button[aria-current=page]{background:#3b7dd8;color:#fff;border-color:#3b7dd8}
"""

_SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("ptm-data").textContent);
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function image(uri, alt) {
    var box = el("div", "thumb");
    if (!uri) { box.textContent = "no preview"; return box; }
    var img = el("img");
    img.alt = alt;
    img.decoding = "async";
    img.addEventListener("load", function () { img.dataset.size = img.naturalWidth + "x" + img.naturalHeight; });
    img.addEventListener("error", function () { box.textContent = "preview could not be shown"; });
    img.src = uri;
    box.appendChild(img);
    return box;
  }
  function header() {
    var h = document.getElementById("header");
    h.appendChild(el("h1", "", "ptm " + data.title + ": " + (data.header.model || "")));
    var dl = el("dl");
    var rows = Object.keys(data.header).map(function (k) { return [k, data.header[k]]; });
    rows.push(["inputs", data.counts.inputs], ["failed", data.counts.failed]);
    if (data.counts.skipped) rows.push(["skipped", data.counts.skipped]);
    rows.forEach(function (row) {
      if (row[1] === null || row[1] === undefined || row[1] === "") return;
      dl.appendChild(el("dt", "", row[0]));
      dl.appendChild(el("dd", "", row[1]));
    });
    h.appendChild(dl);
  }
  function entry(item) {
    var r = item.record;
    var view = item.view || {};
    var box = el("article", "entry" + (r.error ? " failed" : ""));
    box.appendChild(image(item.thumb, r.input));
    if (view.output) box.appendChild(image(item.output_thumb, r.output || ""));
    var body = el("div", "body");
    body.appendChild(el("div", "name", r.input));
    if (r.error) {
      body.appendChild(el("div", "error", r.error.type + ": " + r.error.message));
    }
    (view.bars || []).forEach(function (b) {
      var row = el("div", "pred");
      row.appendChild(el("span", "label", b.label));
      var bar = el("div", "bar");
      var fill = el("span");
      fill.style.width = Math.max(0, Math.min(100, 100 * b.value)).toFixed(1) + "%";
      bar.appendChild(fill);
      row.appendChild(bar);
      row.appendChild(el("span", "pct", b.text));
      body.appendChild(row);
    });
    (view.lines || []).forEach(function (line) { body.appendChild(el("div", "meta", line)); });
    box.appendChild(body);
    return box;
  }
  var page = 0;
  var pages = Math.max(1, Math.ceil(data.entries.length / data.page_size));
  function navs() {
    ["pages-top", "pages-bottom"].forEach(function (id) {
      var nav = document.getElementById(id);
      nav.textContent = "";
      if (pages < 2) return;
      for (var i = 0; i < pages; i++) {
        var b = el("button", "", i + 1);
        if (i === page) b.setAttribute("aria-current", "page");
        b.addEventListener("click", (function (n) { return function () { show(n); }; })(i));
        nav.appendChild(b);
      }
    });
  }
  function show(n) {
    page = n;
    var main = document.getElementById("entries");
    main.textContent = "";
    data.entries.slice(n * data.page_size, (n + 1) * data.page_size).forEach(function (item) {
      main.appendChild(entry(item));
    });
    navs();
    window.scrollTo(0, 0);
  }
  header();
  show(0);
})();
"""
