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

What a task shows: its ``report_view(record)`` returns a dict the page's
script draws the same way for every task, with these keys (all optional):

- ``bars``: ``[{"label", "value" (0..1), "text", "colour" (optional "#rrggbb")}]``, one bar each;
- ``lines``: ``[text]``, one line of text each;
- ``gallery``: ``[{"name", "caption", "keep" (optional)}]``, a row of other
  pictures (a query's neighbours, a group of duplicates), each the thumbnail
  kept with :meth:`Report.keep_picture` under ``name`` (a "no preview" box
  when there is none), captioned; ``keep`` outlines the one to keep;
- ``output``: true to show the output's thumbnail beside the input's (a
  "no preview" box when there is none; an output image given with the
  record is shown either way);
- ``boxes``: ``[{"label", "text", "colour" ("#rrggbb"), "x", "y", "w", "h",
  "points" (optional), "edges" (optional)}]``, regions of the input, drawn
  as an SVG overlay on its thumbnail: ``x``, ``y``, ``w``, ``h`` and each
  point ``[x, y]`` are fractions (0..1) of the image's width and height, a
  point may be null (not visible), and ``edges`` are pairs of indices into
  ``points`` joined by lines. Each box is also listed as a line of text
  (its ``text``). When any entry has boxes, the header holds one checkbox
  per label (with its count over the whole run) that hides or shows that
  label's boxes on every page; ``#hide=a,b`` (URI-encoded labels) in the
  page's address starts with those labels hidden, and the address follows
  the checkboxes. The script checks colours (``#rrggbb`` only) and
  coordinates (finite numbers, clamped to 0..1; a box without them is
  listed but not drawn) before it uses them.

Size: the page shows 100 entries at a time (page buttons; the DOM holds one
page), so 10,000 images open quickly; the file is dominated by thumbnails,
about 3-6 kB each (see docs/records.md for a measured figure).
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
    from .imagefiles import check_output_file

    return check_output_file(Path(path), "--report", force=force, suffix=".html", ours=is_results_page)


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

    The task says how its records look (``report_view``: bars, lines of
    text, boxes over the input; see the module's notes) and what it is
    called (``title``); the page's script draws any of them the same way, so
    a new task needs nothing here.
    """

    def __init__(self, task: Any, header: Mapping[str, Any]):
        self.task = task
        self.header = {**header, "ptm": __version__}
        self.entries: list[dict[str, Any]] = []
        self._thumbs: dict[str, str] = {}
        self._pictures: dict[str, str] = {}  # gallery pictures, kept for every entry that names them
        self._lock = threading.Lock()

    # -- collecting ---------------------------------------------------------------------------

    def keep_thumbnail(self, name: str, image: Any) -> None:
        """Remember ``image``'s thumbnail for the record of input ``name`` (thread-safe)."""
        uri = thumbnail(image)
        with self._lock:
            self._thumbs[name] = uri

    def keep_picture(self, name: str, image: Any) -> None:
        """Remember ``image``'s thumbnail as gallery picture ``name`` (any number of entries may show it)."""
        uri = thumbnail(image)
        with self._lock:
            self._pictures[name] = uri

    def has_picture(self, name: str) -> bool:
        with self._lock:
            return name in self._pictures

    def has_thumbnail(self, name: str) -> bool:
        with self._lock:
            return name in self._thumbs

    def add(self, record: Mapping[str, Any], *, output_image: Any = None, input_image: Any = None) -> None:
        """One record, with the thumbnail kept for its input (and the output's, for translation).

        ``input_image`` is the input's picture when the record's input name does not tell it (a video frame).
        """
        with self._lock:
            thumb = self._thumbs.pop(str(record.get("input")), None)
        if input_image is not None:
            thumb = thumbnail(input_image)
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
            "pictures": self._pictures,
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
.frame{position:relative;display:inline-block;line-height:0}
.frame img{display:block;max-width:192px;max-height:144px}
.frame svg{position:absolute;left:0;top:0;width:100%;height:100%;overflow:visible;pointer-events:none}
.cap{position:absolute;max-width:100%;padding:0 3px;border-radius:2px;font-size:10px;line-height:12px;
white-space:nowrap;overflow:hidden;text-overflow:ellipsis;pointer-events:none}
.classes{display:flex;flex-wrap:wrap;gap:4px 14px;border:1px solid #e3e3e3;border-radius:6px;margin:0 0 12px;
padding:6px 10px}
.classes legend{color:#666;padding:0 4px}
.classes label{display:inline-flex;align-items:center;gap:4px;cursor:pointer;word-break:break-all}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px}
.off{display:none}
.gallery{display:flex;flex-wrap:wrap;gap:8px;margin-top:6px}
.gallery figure{margin:0;width:136px;padding:2px;border-radius:4px}
.gallery .thumb{width:128px;min-width:128px;height:96px}
.gallery figure.keep{outline:3px solid #2a9d3a}
.gallery figcaption{font-size:11px;color:#444;word-break:break-all}
"""

_SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("ptm-data").textContent);
  var SVG = "http://www.w3.org/2000/svg";
  var FALLBACK_COLOUR = "#d62728";
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    return node;
  }
  // Boxes: the classes over the whole run, which of them are hidden, and the checks that guard drawing.
  function boxesOf(view) {
    if (!view || !Array.isArray(view.boxes)) return [];
    return view.boxes.filter(function (b) { return b !== null && typeof b === "object"; });
  }
  function labelOf(b) { return b.label === undefined || b.label === null ? "" : String(b.label); }
  function captionOf(b) { return b.text === undefined || b.text === null ? labelOf(b) : String(b.text); }
  function colourOf(c) { return typeof c === "string" && /^#[0-9a-fA-F]{6}$/.test(c) ? c : FALLBACK_COLOUR; }
  function inkOn(c) {
    var n = parseInt(c.slice(1), 16);
    return 0.299 * (n >> 16) + 0.587 * ((n >> 8) & 255) + 0.114 * (n & 255) > 150 ? "#000" : "#fff";
  }
  function num(v) { return Math.round(v * 100) / 100; }
  function frac(v) {
    if (typeof v !== "number" || !isFinite(v)) return null;
    return Math.max(0, Math.min(1, v));
  }
  var classes = { names: [], counts: [], colours: [], index: Object.create(null) };
  (function () {
    var seen = Object.create(null);
    data.entries.forEach(function (item) {
      boxesOf(item.view).forEach(function (b) {
        var name = labelOf(b);
        if (!seen[name]) seen[name] = { count: 0, colour: colourOf(b.colour) };
        seen[name].count += 1;
      });
    });
    classes.names = Object.keys(seen).sort();
    classes.names.forEach(function (name, i) {
      classes.index[name] = i;
      classes.counts.push(seen[name].count);
      classes.colours.push(seen[name].colour);
    });
  })();
  var hidden = [];
  var checks = [];
  function mark(node, b) {
    var i = classes.index[labelOf(b)];
    node.setAttribute("data-class", i);
    if (hidden[i]) node.classList.add("off");
    return node;
  }
  function hiddenFromHash() {
    var out = [];
    location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      if (part.indexOf("hide=") !== 0) return;
      part.slice(5).split(",").forEach(function (name) {
        try { name = decodeURIComponent(name); } catch (e) { return; }
        var i = classes.index[name];
        if (i !== undefined) out[i] = true;
      });
    });
    return out;
  }
  function hashFromHidden() {
    var names = classes.names.filter(function (name, i) { return hidden[i]; });
    return names.length ? "#hide=" + names.map(encodeURIComponent).join(",") : "";
  }
  function apply() {
    checks.forEach(function (input, i) {
      input.checked = !hidden[i];
      input.defaultChecked = !hidden[i];
    });
    var nodes = document.getElementById("entries").querySelectorAll("[data-class]");
    for (var k = 0; k < nodes.length; k++) {
      nodes[k].classList.toggle("off", !!hidden[Number(nodes[k].getAttribute("data-class"))]);
    }
  }
  function toggles() {
    if (!classes.names.length) return null;
    var set = el("fieldset", "classes");
    set.appendChild(el("legend", "", "Boxes shown"));
    classes.names.forEach(function (name, i) {
      var label = el("label");
      var input = el("input");
      input.type = "checkbox";
      input.addEventListener("change", function () {
        hidden[i] = !input.checked;
        apply();
        try {
          history.replaceState(null, "", location.href.split("#")[0] + hashFromHidden());
        } catch (e) { /* the address stays as it was */ }
      });
      checks.push(input);
      var swatch = el("span", "swatch");
      swatch.style.background = classes.colours[i];
      label.appendChild(input);
      label.appendChild(swatch);
      label.appendChild(el("span", "class-name", name + " (" + classes.counts[i] + ")"));
      set.appendChild(label);
    });
    return set;
  }
  function overlay(frame, boxes, w, h) {
    var layer = svg("svg", { viewBox: "0 0 " + w + " " + h, preserveAspectRatio: "none", "aria-hidden": "true" });
    var captions = [];
    var r = num(Math.max(2, Math.max(w, h) / 60));
    boxes.forEach(function (b) {
      var x = frac(b.x), y = frac(b.y), bw = frac(b.w), bh = frac(b.h);
      if (x === null || y === null || bw === null || bh === null) return;
      bw = Math.min(bw, 1 - x);
      bh = Math.min(bh, 1 - y);
      var colour = colourOf(b.colour);
      var g = mark(svg("g", { stroke: colour, fill: "none", "class": "box" }), b);
      g.appendChild(svg("rect", { x: num(x * w), y: num(y * h), width: num(bw * w), height: num(bh * h),
        "stroke-width": 2, "vector-effect": "non-scaling-stroke" }));
      var points = (Array.isArray(b.points) ? b.points : []).map(function (p) {
        if (!Array.isArray(p) || p.length < 2) return null;
        var px = frac(p[0]), py = frac(p[1]);
        return px === null || py === null ? null : [num(px * w), num(py * h)];
      });
      (Array.isArray(b.edges) ? b.edges : []).forEach(function (e) {
        if (!Array.isArray(e) || e.length !== 2) return;
        var a = typeof e[0] === "number" ? points[e[0]] : null;
        var z = typeof e[1] === "number" ? points[e[1]] : null;
        if (!a || !z) return;
        g.appendChild(svg("line", { x1: a[0], y1: a[1], x2: z[0], y2: z[1],
          "stroke-width": 1.5, "vector-effect": "non-scaling-stroke" }));
      });
      points.forEach(function (p) {
        if (p) g.appendChild(svg("circle", { cx: p[0], cy: p[1], r: r, fill: colour, stroke: "#fff",
          "stroke-width": 0.5, "vector-effect": "non-scaling-stroke" }));
      });
      layer.appendChild(g);
      var cap = mark(el("span", "cap", captionOf(b)), b);
      cap.style.background = colour;
      cap.style.color = inkOn(colour);
      cap.style.left = (100 * x).toFixed(2) + "%";
      cap.style.top = (100 * y).toFixed(2) + "%";
      if (y > 0.1) cap.style.transform = "translateY(-100%)";  // above the box, or inside it at the top edge
      captions.push(cap);
    });
    frame.appendChild(layer);
    captions.forEach(function (cap) { frame.appendChild(cap); });
  }
  function image(uri, alt, boxes) {
    var box = el("div", "thumb");
    if (!uri) { box.textContent = "no preview"; return box; }
    var img = el("img");
    var frame = boxes && boxes.length ? el("span", "frame") : null;
    img.alt = alt;
    img.decoding = "async";
    img.addEventListener("load", function () {
      img.dataset.size = img.naturalWidth + "x" + img.naturalHeight;
      if (frame && img.naturalWidth > 0 && img.naturalHeight > 0) {
        overlay(frame, boxes, img.naturalWidth, img.naturalHeight);
      }
    });
    img.addEventListener("error", function () { box.textContent = "preview could not be shown"; });
    img.src = uri;
    if (frame) {
      frame.appendChild(img);
      box.appendChild(frame);
    } else {
      box.appendChild(img);
    }
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
    var set = toggles();
    if (set) h.appendChild(set);
  }
  function entry(item) {
    var r = item.record;
    var view = item.view || {};
    var boxes = boxesOf(view);
    var box = el("article", "entry" + (r.error ? " failed" : ""));
    box.appendChild(image(item.thumb, r.input, boxes));
    if (view.output || item.output_thumb) box.appendChild(image(item.output_thumb, r.output || ""));
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
      if (b.colour) fill.style.background = colourOf(b.colour);
      bar.appendChild(fill);
      row.appendChild(bar);
      row.appendChild(el("span", "pct", b.text));
      body.appendChild(row);
    });
    boxes.forEach(function (b) {
      body.appendChild(mark(el("div", "meta found", captionOf(b)), b));
    });
    (view.lines || []).forEach(function (line) { body.appendChild(el("div", "meta", line)); });
    if (Array.isArray(view.gallery)) body.appendChild(gallery(view.gallery));
    box.appendChild(body);
    return box;
  }
  function gallery(items) {
    var row = el("div", "gallery");
    var pictures = data.pictures || {};
    items.forEach(function (g) {
      if (g === null || typeof g !== "object") return;
      var name = String(g.name);
      var own = Object.prototype.hasOwnProperty.call(pictures, name);
      var figure = el("figure", g.keep ? "keep" : "");
      figure.appendChild(image(own ? pictures[name] : null, name));
      figure.appendChild(el("figcaption", "", g.caption === undefined ? name : g.caption));
      row.appendChild(figure);
    });
    return row;
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
  hidden = hiddenFromHash();
  header();
  apply();
  window.addEventListener("hashchange", function () { hidden = hiddenFromHash(); apply(); });
  show(0);
})();
"""
