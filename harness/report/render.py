"""Write a built report: one self-contained HTML page (interactive figures, tables that sort, filter and download
as CSV; no request leaves it), Markdown with PNGs beside it, and summary.csv."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from harness.report import interactive
from harness.report.document import Report, Table

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1400px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;font-size:12px;margin:.6em 0 1.2em}caption{text-align:left;font-weight:600;padding:.3em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f4f4f4;cursor:pointer;user-select:none}th.asc::after{content:" ▲"}th.desc::after{content:" ▼"}
td:first-child,th:first-child{text-align:left}td.best{font-weight:700;background:#e8f5e9}
img{max-width:100%;border:1px solid #eee}figure{margin:1em 0}figcaption{color:#666;font-size:12px}
.wrap{overflow-x:auto}p.note{color:#666;font-size:12px;margin-top:-.8em}
.tools{font-size:12px;margin:.6em 0 -.4em}.tools input{width:18em}.tools button{margin-left:.5em}
tr.hidden{display:none}
""" + interactive.VIEW_STYLE

# sorts a table by the clicked column: numbers by their data-v value, text alphabetically, missing last
SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = !th.classList.contains("asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(asc ? "asc" : "desc");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col];
        var v = cell.getAttribute("data-v");
        if (v === null || v === "") return null;
        var n = Number(v);
        return isNaN(n) ? v : n;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null) return 1;
        if (y === null) return -1;
        if (x < y) return asc ? -1 : 1;
        if (x > y) return asc ? 1 : -1;
        return 0;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

# the box above a table keeps the rows whose text holds every word typed (any column, any case); the
# button saves the header and the rows shown, in their current order, as CSV (a data: URL, no request)
FILTER_JS = """
document.querySelectorAll("div.table").forEach(function (box) {
  var table = box.querySelector("table"), input = box.querySelector("input.filter");
  var count = box.querySelector("span.count");
  function apply() {
    var words = input.value.toLowerCase().split(/\\s+/).filter(Boolean), shown = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      var text = row.textContent.toLowerCase();
      var keep = words.every(function (w) { return text.indexOf(w) >= 0; });
      row.classList.toggle("hidden", !keep);
      shown += keep ? 1 : 0;
    });
    count.textContent = shown + " of " + table.tBodies[0].rows.length + " rows";
  }
  input.addEventListener("input", apply);
  apply();
  box.querySelector("button.csv").addEventListener("click", function () {
    function quote(s) { return /[",\\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }
    var lines = [Array.prototype.map.call(table.tHead.rows[0].cells, function (c) { return quote(c.textContent); })];
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      if (row.classList.contains("hidden")) return;
      lines.push(Array.prototype.map.call(row.cells, function (c) { return quote(c.textContent); }));
    });
    var a = document.createElement("a");
    var text = lines.map(function (l) { return l.join(","); }).join("\\n") + "\\n";
    a.href = "data:text/csv;charset=utf-8," + encodeURIComponent(text);
    a.download = box.getAttribute("data-name") + ".csv";
    document.body.appendChild(a);
    a.click();
    a.remove();
  });
});
"""


def _html_table(table: Table, name: str = "table") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = []
        for cell in row:
            attrs = f' data-v="{html.escape(str(cell.sort))}"' if cell.sort is not None else ""
            cls = ' class="best"' if cell.best else ""
            cells.append(f"<td{cls}{attrs}>{html.escape(cell.text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in table.notes)
    tools = ('<div class="tools"><input class="filter" type="search" placeholder="filter rows (words, any column)" '
             'aria-label="filter rows"><button class="csv" type="button">CSV</button> <span class="count"></span></div>')
    return (f'<div class="table" data-name="{html.escape(name)}">{tools}<div class="wrap"><table class="sortable">'
            f"<caption>{html.escape(table.caption)}</caption><thead><tr>{head}</tr></thead><tbody>{''.join(body)}"
            f"</tbody></table></div>{notes}</div>")


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(table: Table) -> str:
    lines = [f"*{_md_escape(table.caption)}*", "", "| " + " | ".join(_md_escape(c) for c in table.columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(table.columns))) + "|"]
    for row in table.rows:
        lines.append("| " + " | ".join(f"**{_md_escape(c.text)}**" if c.best else _md_escape(c.text) for c in row) + " |")
    lines += [line for note in table.notes for line in ("", note)]
    return "\n".join(lines)


def to_html(report: Report) -> str:
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>ftbench report: {html.escape(report.experiment)}</title><style>{STYLE}</style></head><body>",
             f"<h1>ftbench report: {html.escape(report.experiment)}</h1>",
             f"<p>Generated {html.escape(report.generated_at)} from the results store. Click a column header to sort, "
             f"type in the box above a table to filter its rows, CSV saves the rows shown; hover a point for its "
             f"configuration and figures.</p>"]
    n_views = n_tables = 0
    for section in report.sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(p)}</p>" for p in section.paragraphs]
        if section.bullets:
            parts.append("<ul>" + "".join(f"<li>{html.escape(b)}</li>" for b in section.bullets) + "</ul>")
        for view in section.views:
            parts.append(interactive.view_html(view, n_views))
            n_views += 1
        shown = {name for view in section.views for name in view.replaces}
        for name, png, caption in section.figures:
            if name in shown:  # the view above draws it; report.md keeps the PNG
                continue
            data = base64.b64encode(png).decode()
            parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        for t in section.tables:
            n_tables += 1
            parts.append(_html_table(t, f"{report.experiment}-table{n_tables}"))
    parts.append(interactive.page_scripts(n_views))
    parts.append(f"<script>{SORT_JS}{FILTER_JS}</script></body></html>")
    return "\n".join(parts)


def to_markdown(report: Report) -> str:
    parts = [f"# ftbench report: {report.experiment}", "", f"Generated {report.generated_at} from the results store.", ""]
    for section in report.sections:
        parts += [f"## {section.title}", ""]
        for p in section.paragraphs:
            parts += [p, ""]
        if section.bullets:
            parts += [f"- {b}" for b in section.bullets] + [""]
        for name, _, caption in section.figures:
            parts += [f"![{caption}]({name})", ""]
        for t in section.tables:
            parts += [_md_table(t), ""]
    return "\n".join(parts)


def write(report: Report, out_dir: Path) -> dict[str, Path]:
    """Write report.html, report.md, its PNG figures and summary.csv into `out_dir` (replacing older ones)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    for section in report.sections:
        for name, png, _ in section.figures:
            (out_dir / name).write_bytes(png)
    paths = {"html": out_dir / "report.html", "markdown": out_dir / "report.md", "csv": out_dir / "summary.csv"}
    paths["html"].write_text(to_html(report), encoding="utf-8")
    paths["markdown"].write_text(to_markdown(report), encoding="utf-8")
    report.summary.to_csv(paths["csv"], index=False)
    return paths
