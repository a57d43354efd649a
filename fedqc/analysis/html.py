"""The pieces of a self-contained HTML page: escaped text, tables a reader can sort and filter, figures inline.

A page from :class:`Page` needs no server and fetches nothing: every figure is a base64 PNG in an ``<img>``,
every table is in the page, and the only script is :data:`SCRIPT` (sorting on a header click, a filter box per
table), written here so that the file opens the same offline, from a mail attachment or years later.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable

import pandas as pd

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;
color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1.05em}p.note{color:#555;font-size:.9em;max-width:70em}
nav a{margin-right:1em}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left}
table.data th{background:#f3f3f3;cursor:pointer;user-select:none;position:sticky;top:0}
table.data th[aria-sort=ascending]::after{content:" \\25B2"}table.data th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.scroll{max-height:32em;overflow:auto;border:1px solid #eee}.wide{overflow-x:auto}table.data td{white-space:nowrap}
input.filter{margin:.3em 0;padding:2px 4px;width:22em}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.3em 0}
table.timeline td{text-align:center;min-width:2.4em;font-size:.8em;padding:2px}
table.timeline th{background:#f3f3f3;font-weight:normal}
.tl-trained{background:#cfe8cf}.tl-could-not-judge{background:#e6e6f5}.tl-flagged{background:#ffd27f}
.tl-held{background:#ffe9bf}.tl-revisited{background:#bfdcff}.tl-eliminated{background:#f08080;color:#fff}
.tl-out{background:#999;color:#fff}.tl-absent{background:#fff;color:#aaa}
span.legend{display:inline-block;padding:1px 6px;margin:2px 4px 2px 0;border:1px solid #ccc;font-size:.8em}
details{margin:.5em 0}.grid{display:flex;flex-wrap:wrap;gap:.4em}.grid img{max-width:49%}
"""

# Sorting (numbers as numbers, empty cells last) and filtering (every word must appear in the row). No library.
SCRIPT = """
document.querySelectorAll("table.data").forEach(function (table) {
  var body = table.tBodies[0];
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-v"), y = b.cells[col].getAttribute("data-v");
        if (x === "") return 1; if (y === "") return -1;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
document.querySelectorAll("input.filter").forEach(function (box) {
  var table = document.getElementById(box.getAttribute("data-table"));
  var count = document.getElementById(box.getAttribute("data-table") + "-count");
  box.addEventListener("input", function () {
    var words = box.value.toLowerCase().split(/\\s+/).filter(Boolean), shown = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
      var text = r.textContent.toLowerCase();
      var keep = words.every(function (w) { return text.indexOf(w) >= 0; });
      r.style.display = keep ? "" : "none"; if (keep) shown++;
    });
    count.textContent = shown + " of " + table.tBodies[0].rows.length + " rows";
  });
});
document.body.setAttribute("data-script", "ready");
"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def _missing(v) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and pd.isna(v))


def fmt(v, digits: int = 3) -> str:
    """A cell's text: floats to ``digits`` decimals, NaN and None empty."""
    if _missing(v):
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def figure(draw: Callable, *args, alt: str, **kwargs) -> str:
    """An ``<img>`` with the PNG that ``draw(*args, <file>, **kwargs)`` saves (a plot function of
    :mod:`fedqc.analysis.plots` takes the file last), inline as base64."""
    buf = io.BytesIO()
    draw(*args, buf, **kwargs)
    return png(buf.getvalue(), alt)


def png(data: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def table(df: pd.DataFrame, table_id: str | None = None, *, filter_box: bool = False, cls: str = "data") -> str:
    """``df`` as an HTML table; with ``table_id`` and ``filter_box``, a filter box above it. Every cell keeps its
    raw value in ``data-v`` so that sorting compares numbers as numbers."""
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            raw = "" if _missing(v) else str(v)
            cells.append(f'<td{" class=num" if num else ""} data-v="{esc(raw)}">{esc(fmt(v))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    ident = f' id="{esc(table_id)}"' if table_id else ""
    out = f'<table class="{cls}"{ident}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    if filter_box and table_id:
        out = (f'<input class="filter" type="search" placeholder="filter rows (words, any column)" '
               f'data-table="{esc(table_id)}"> <span id="{esc(table_id)}-count">{len(df)} rows</span>'
               f'<div class="scroll">{out}</div>')
    return out if filter_box and table_id else f'<div class="wide">{out}</div>'


class Page:
    """A page built section by section, written as one file."""

    def __init__(self, title: str):
        self.title, self.parts, self.toc = title, [], []

    def section(self, title: str, anchor: str) -> None:
        self.toc.append((anchor, title))
        self.parts.append(f'<h2 id="{esc(anchor)}">{esc(title)}</h2>')

    def add(self, *html_parts: str) -> None:
        self.parts.extend(html_parts)

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{esc(text)}</p>')

    def render(self) -> str:
        nav = " ".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in self.toc)
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{esc(self.title)}</title><style>{STYLE}</style></head><body>"
                f"<h1>{esc(self.title)}</h1><nav>{nav}</nav>{''.join(self.parts)}"
                f"<script>{SCRIPT}</script></body></html>\n")
