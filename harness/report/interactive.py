"""The HTML page's interactive figures: Plotly (plotly.js inlined once per page, no CDN, no request) for a
Pareto explorer whose axes and groups the reader picks (the front is recomputed in the page, each metric
in its declared direction) and for fixed figures such as the training curves; `report.md` keeps the PNGs.

plotly.js is ~4.8 MB minified; Vega-Lite through Altair would be ~0.8 MB of JavaScript but needs
`vl-convert-python` (a ~40 MB wheel with its own JS engine) to inline it, so Plotly, whose Python wheel
ships the bundle, is the one dependency here.
"""

from __future__ import annotations

import html
import json
import math
from functools import lru_cache

import numpy as np
import pandas as pd

from harness.report.columns import missing
from harness.report.document import View
from harness.report.frame import Metric

__all__ = ["PARETO", "PLOTLY", "pareto_view", "plotly_view", "training_curves_view", "view_html", "page_scripts",
           "plotly_js"]

PARETO = "pareto"
PLOTLY = "plotly"
#: the axes the explorer opens on, when the experiment has them
DEFAULT_X = ("peak_mem_train_mb", "trainable_params", "train_s")
DEFAULT_Y = ("eval_ppl", "eval_loss")
#: x or y axes that span orders of magnitude: drawn on a log scale at first (the reader can switch)
LOG_KEYS = ("trainable_params", "trainable_pct", "adapter_bytes")


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """The plotly.js bundle the `plotly` package ships (read once per process).

    Raises:
        ImportError: plotly is not installed (it is a dependency of ftbench: `pip install -e .`).
    """
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _finite(value) -> float | None:
    """A JSON-safe number: None for a missing or non-finite one."""
    if missing(value):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _with_interval(metric: Metric, row) -> str:
    """`label: mean [low, high]` (no brackets without an interval), formatted as the tables do."""
    mean = _finite(row.get(f"{metric.key}_mean"))
    if mean is None:
        return f"{metric.label}: –"
    low, high = _finite(row.get(f"{metric.key}_ci_low")), _finite(row.get(f"{metric.key}_ci_high"))
    out = f"{metric.label}: {metric.format(mean)}"
    if low is not None and high is not None and high > low:
        out += f" [{metric.format(low)}, {metric.format(high)}]"
    return out


def point_hover(row, axes: list[str], name: str) -> str:
    """The head of a point's hover text (Plotly's HTML subset): its name and the spec values that define it.
    The page adds the two chosen axes' figures; every figure is in the panel under the plot, because Plotly
    drops a hover label taller than the plot (30 figures are)."""
    lines = [f"<b>{html.escape(name)}</b>"]
    lines += [f"{html.escape(a)}: {html.escape(str(row.get(a)))}" for a in axes if not missing(row.get(a))]
    seeds = row.get("n_seeds")
    if not missing(seeds):
        lines.append(f"seeds: {int(seeds)}")
    return "<br>".join(lines)


def point_figures(row, metrics: list[Metric]) -> list[list[str]]:
    """Every figure of a point as `[metric key, "label: mean [low, high]"]` (plain text), in table order."""
    return [[m.key, _with_interval(m, row)] for m in metrics]


def pareto_view(summary: pd.DataFrame, metrics: list[Metric], axes: list[str], *, caption: str,
                group: str = "method.name", x: str | None = None, y: str | None = None,
                replaces: tuple[str, ...] = (), names: pd.Series | None = None) -> View | None:
    """The Pareto explorer over a `summarize` table (reference rows left out, as on the PNG fronts).

    Args:
        metrics: the figures a reader may put on an axis; only those with a declared direction and at least
            two finite means are offered (all of them are in the panel a hovered point fills).
        axes: the spec columns that define a configuration, named in the hover text.
        group: the column whose values the reader toggles (a method; an experiment in a comparison).
        x, y: the axes it opens on (default: peak train memory and eval ppl, when measured).
        names: each row's name (default: its `config`).

    Returns:
        None when fewer than two metrics could be axes.
    """
    rows = summary[~summary["reference"].astype(bool)] if "reference" in summary else summary
    names = (names if names is not None else rows["config"]).reindex(rows.index)
    offered = [m for m in metrics if m.lower_is_better is not None and f"{m.key}_mean" in rows
               and pd.to_numeric(rows[f"{m.key}_mean"], errors="coerce").notna().sum() >= 2]
    if len(offered) < 2:
        return None
    keys = [m.key for m in offered]
    x = x if x in keys else next((k for k in DEFAULT_X if k in keys), keys[-1])
    y = y if y in keys and y != x else next((k for k in DEFAULT_Y if k in keys and k != x),
                                            next(k for k in keys if k != x))
    points = []
    for i, row in rows.iterrows():
        values = {}
        for m in offered:
            triple = [_finite(row.get(f"{m.key}_{part}")) for part in ("mean", "ci_low", "ci_high")]
            values[m.key] = [None if v is None else v * m.scale for v in triple] if triple[0] is not None else None
        label = str(row.get(group)) if group in rows and not missing(row.get(group)) else "all"
        points.append({"name": str(names[i]), "group": label, "values": values,
                       "hover": point_hover(row, [a for a in axes if a != group] + [group], str(names[i])),
                       "figures": point_figures(row, metrics)})
    data = {"metrics": [{"key": m.key, "label": m.label, "lower": bool(m.lower_is_better),
                         "log": m.key in LOG_KEYS or _spans_decades(rows[f"{m.key}_mean"])} for m in offered],
            "x": x, "y": y, "group_label": group, "groups": list(dict.fromkeys(p["group"] for p in points)),
            "points": points}
    return View(PARETO, data, caption, tuple(replaces))


def _spans_decades(values: pd.Series) -> bool:
    """Positive values whose largest is over 10× their median (a diverged run's perplexity next to the
    others): a log axis keeps the rest from being flattened into one row."""
    x = pd.to_numeric(values, errors="coerce").dropna().to_numpy(float)
    x = x[np.isfinite(x)]
    return bool(len(x) >= 3 and x.min() > 0 and x.max() > 10 * np.median(x))


def plotly_view(figure, caption: str, replaces: tuple[str, ...] = ()) -> View:
    """A fixed Plotly figure (a `plotly.graph_objects.Figure`) as a view of the page."""
    figure.update_layout(template="none", margin={"l": 60, "r": 20, "t": 40, "b": 50}, hovermode="closest")
    return View(PLOTLY, json.loads(figure.to_json()), caption, tuple(replaces))


def training_curves_view(curves: pd.DataFrame, replaces: tuple[str, ...] = ()) -> View:
    """Training loss per step per configuration (seed mean; the seed range in the hover text and as a band),
    eval loss dashed; clicking a legend entry hides a configuration."""
    import plotly.graph_objects as go

    fig = go.Figure()
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf"]
    for i, config in enumerate(dict.fromkeys(curves["config"])):
        colour = palette[i % len(palette)]
        rows = curves[curves["config"] == config]
        train = rows.dropna(subset=["loss"]).groupby("step")["loss"].agg(["mean", "min", "max", "count"])
        name = html.escape(str(config))
        if len(train):
            spread = [f"seed range {lo:.3f}–{hi:.3f} ({n} seeds)" if n > 1 else "1 seed"
                      for lo, hi, n in zip(train["min"], train["max"], train["count"])]
            fig.add_trace(go.Scatter(x=train.index.tolist(), y=train["mean"].tolist(), mode="lines", name=str(config),
                                     legendgroup=str(config), line={"color": colour, "width": 1.5},
                                     customdata=spread,
                                     hovertemplate=f"<b>{name}</b><br>step %{{x}}<br>train loss %{{y:.3f}}"
                                                   "<br>%{customdata}<extra></extra>"))
            if (train["count"] > 1).any():
                fig.add_trace(go.Scatter(x=train.index.tolist() + train.index.tolist()[::-1],
                                         y=train["max"].tolist() + train["min"].tolist()[::-1], fill="toself",
                                         fillcolor=colour, opacity=0.15, line={"width": 0}, hoverinfo="skip",
                                         legendgroup=str(config), showlegend=False))
        evals = rows.dropna(subset=["eval_loss"]).groupby("step")["eval_loss"].mean()
        if len(evals):
            fig.add_trace(go.Scatter(x=evals.index.tolist(), y=evals.tolist(), mode="lines+markers",
                                     name=f"{config} (eval)", legendgroup=str(config), showlegend=not len(train),
                                     line={"color": colour, "dash": "dash", "width": 1}, marker={"size": 4},
                                     hovertemplate=f"<b>{name}</b><br>step %{{x}}<br>eval loss %{{y:.3f}}"
                                                   "<extra></extra>"))
    fig.update_layout(title={"text": "Training curves (line: seed mean, band: seed range, dashed: eval loss)"},
                      xaxis={"title": {"text": "step"}}, yaxis={"title": {"text": "loss"}}, height=460)
    return plotly_view(fig, "loss per step: hover a line for its configuration, click a legend entry to hide it",
                       replaces)


def _json(data) -> str:
    """JSON for a <script> element: no NaN, and no `</` that could close the element."""
    return json.dumps(data, allow_nan=False, default=_default).replace("</", "<\\/")


def _default(value):
    if isinstance(value, np.generic):
        return _finite(value) if isinstance(value, np.floating) else value.item()
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def view_html(view: View, index: int) -> str:
    """The view's element: a container the page script fills, its payload and its caption."""
    return (f'<figure class="view {view.kind}" id="view-{index}"><script type="application/json">'
            f"{_json(view.data)}</script><div class=\"controls\"></div><div class=\"plot\"></div>"
            f'<p class="front"></p><div class="figures"></div>'
            f"<figcaption>{html.escape(view.caption)}</figcaption></figure>")


VIEW_STYLE = """
figure.view{border:1px solid #eee;padding:.5em}figure.view .plot{min-height:440px}
.controls{display:flex;flex-wrap:wrap;gap:.4em 1.2em;align-items:center;font-size:12px}
.controls label{white-space:nowrap}.controls .groups{display:flex;flex-wrap:wrap;gap:.2em .8em}
p.front{font-size:12px;color:#b71c1c;margin:.3em 0}
div.figures{font-size:12px;columns:3 16em;margin:.3em 0}div.figures:empty{display:none}
div.figures div{break-inside:avoid}
"""

# draws every view of the page. The explorer: x/y selects over the offered metrics, a checkbox per group,
# log toggles; the front is recomputed over the checked points for the chosen axes in their directions
# (a point is on it when no other is at least as good on both axes and better on one, as
# harness.report.stats.pareto_mask). Its members are listed under the plot and in the root's data-front.
VIEW_JS = r"""
(function () {
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function frontOf(pts, x, y, lowerX, lowerY) {
    var sx = lowerX ? 1 : -1, sy = lowerY ? 1 : -1;
    return pts.filter(function (p) {
      var px = sx * p.values[x][0], py = sy * p.values[y][0];
      return !pts.some(function (q) {
        if (q === p) return false;
        var qx = sx * q.values[x][0], qy = sy * q.values[y][0];
        return qx <= px && qy <= py && (qx < px || qy < py);
      });
    });
  }
  function esc(text) {
    return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }
  function figure(p, key) {
    var f = p.figures.filter(function (f) { return f[0] === key; })[0];
    return f ? f[1] : key;
  }
  function bars(pts, key) {
    var plus = [], minus = [], any = false;
    pts.forEach(function (p) {
      var v = p.values[key];
      var ok = v[1] !== null && v[2] !== null;
      plus.push(ok ? v[2] - v[0] : 0); minus.push(ok ? v[0] - v[1] : 0); any = any || ok;
    });
    return {type: "data", symmetric: false, array: plus, arrayminus: minus, visible: any, thickness: 1, width: 2};
  }
  function select(cls, metrics, chosen) {
    var s = el("select", {"class": cls});
    metrics.forEach(function (m) {
      var o = el("option", {value: m.key}, m.label + (m.lower ? " (lower is better)" : " (higher is better)"));
      if (m.key === chosen) o.selected = true;
      s.appendChild(o);
    });
    return s;
  }
  function explorer(root, spec) {
    var byKey = {};
    spec.metrics.forEach(function (m) { byKey[m.key] = m; });
    var controls = root.querySelector(".controls"), plot = root.querySelector(".plot");
    var xs = select("x-axis", spec.metrics, spec.x), ys = select("y-axis", spec.metrics, spec.y);
    var lx = el("input", {type: "checkbox", "class": "log-x"}), ly = el("input", {type: "checkbox", "class": "log-y"});
    lx.checked = byKey[spec.x].log; ly.checked = byKey[spec.y].log;
    var l1 = el("label", {}, "x "); l1.appendChild(xs); controls.appendChild(l1);
    var l2 = el("label", {}, "y "); l2.appendChild(ys); controls.appendChild(l2);
    [[lx, " log x"], [ly, " log y"]].forEach(function (pair) {
      var l = el("label", {}); l.appendChild(pair[0]); l.appendChild(document.createTextNode(pair[1]));
      controls.appendChild(l);
    });
    var groups = el("span", {"class": "groups"});
    groups.appendChild(el("span", {}, spec.group_label + ":"));
    spec.groups.forEach(function (g) {
      var l = el("label", {}), c = el("input", {type: "checkbox", "class": "group", value: g});
      c.checked = true; l.appendChild(c); l.appendChild(document.createTextNode(" " + g)); groups.appendChild(l);
    });
    controls.appendChild(groups);
    function draw() {
      var x = xs.value, y = ys.value, mx = byKey[x], my = byKey[y];
      var on = {};
      root.querySelectorAll("input.group").forEach(function (c) { on[c.value] = c.checked; });
      var pts = spec.points.filter(function (p) {
        return on[p.group] && p.values[x] !== null && p.values[y] !== null;
      });
      var front = frontOf(pts, x, y, mx.lower, my.lower);
      var rest = pts.filter(function (p) { return front.indexOf(p) < 0; });
      front.sort(function (a, b) { return a.values[x][0] - b.values[x][0]; });
      function trace(list, name, colour, size, labels) {
        return {type: "scatter", mode: labels ? "markers+text" : "markers", name: name,
                x: list.map(function (p) { return p.values[x][0]; }),
                y: list.map(function (p) { return p.values[y][0]; }),
                text: labels ? list.map(function (p) { return p.name; }) : undefined,
                textposition: "top right", textfont: {size: 10, color: colour},
                hovertext: list.map(function (p) {
                  return p.hover + "<br>" + esc(figure(p, x)) + "<br>" + esc(figure(p, y)) +
                         "<br><i>every figure: under the plot</i>";
                }), hoverinfo: "text",
                customdata: list.map(function (p) { return p.name; }),
                marker: {color: colour, size: size}, error_x: bars(list, x), error_y: bars(list, y)};
      }
      var line = {type: "scatter", mode: "lines", name: "front", hoverinfo: "skip", showlegend: false,
                  line: {shape: "hv", color: "rgba(214,39,40,0.5)", width: 1},
                  x: front.map(function (p) { return p.values[x][0]; }),
                  y: front.map(function (p) { return p.values[y][0]; })};
      var layout = {template: "none", hovermode: "closest", height: 460, margin: {l: 70, r: 20, t: 40, b: 60},
                    title: {text: my.label + " vs " + mx.label + " (front in red)"},
                    xaxis: {title: {text: mx.label + (mx.lower ? " (lower is better)" : " (higher is better)")},
                            type: lx.checked ? "log" : "linear"},
                    yaxis: {title: {text: my.label + (my.lower ? " (lower is better)" : " (higher is better)")},
                            type: ly.checked ? "log" : "linear"},
                    legend: {orientation: "h", y: -0.2}};
      shown = [rest, [], front];
      Plotly.react(plot, [trace(rest, "dominated", "#9e9e9e", 7, false), line,
                          trace(front, "on the front", "#d62728", 9, true)], layout,
                   {displaylogo: false, responsive: true});
      var names = front.map(function (p) { return p.name; });
      root.dataset.front = JSON.stringify(names);
      root.querySelector("p.front").textContent = "Front for " + my.label + " against " + mx.label + " (" +
        front.length + " of " + pts.length + " shown): " + (names.join(", ") || "none");
    }
    var shown = [[], [], []], panel = root.querySelector("div.figures");
    function details(event) {  // every figure of the hovered or clicked point, as plain text
      var hit = event.points[0], p = hit && shown[hit.curveNumber][hit.pointNumber];
      if (!p) return;
      panel.textContent = "";
      panel.appendChild(el("div", {}, "")).appendChild(el("b", {}, p.name));
      p.figures.forEach(function (f) { panel.appendChild(el("div", {}, f[1])); });
    }
    xs.addEventListener("change", function () { lx.checked = byKey[xs.value].log; draw(); });
    ys.addEventListener("change", function () { ly.checked = byKey[ys.value].log; draw(); });
    [lx, ly].forEach(function (c) { c.addEventListener("change", draw); });
    root.querySelectorAll("input.group").forEach(function (c) { c.addEventListener("change", draw); });
    draw();
    plot.on("plotly_hover", details);
    plot.on("plotly_click", details);
  }
  document.querySelectorAll("figure.view").forEach(function (root) {
    var spec = JSON.parse(root.querySelector("script[type='application/json']").textContent);
    if (root.classList.contains("pareto")) {
      explorer(root, spec);
    } else {
      Plotly.newPlot(root.querySelector(".plot"), spec.data, spec.layout, {displaylogo: false, responsive: true});
    }
  });
})();
"""


def page_scripts(n_views: int) -> str:
    """plotly.js, inlined once, and the script that draws the views; "" on a page without views."""
    if not n_views:
        return ""
    return f"<script>{plotly_js()}</script>\n<script>{VIEW_JS}</script>"
