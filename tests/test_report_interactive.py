"""The HTML report's interactive figures (issue 24): the Pareto explorer's axes, directions and front, its hover
text, tables that filter and download as CSV, all in one file that requests nothing. The browser tests drive a
real headless Chromium (tests/browser.py); the payload tests run without one."""

from __future__ import annotations

import csv
import io
import json
import re


from browser import launch, open_in_browser, require_chromium
from harness.report.build import build
from harness.report.context import ReportContext
from harness.report.frame import load_runs
from harness.report.interactive import PARETO, pareto_view, plotly_js
from harness.report.render import to_markdown, write
from harness.report.stats import pareto_mask
from report_store import write_run

#: (method, eval loss, peak train MiB, trainable params, task accuracy): no method is best on every axis
RUNS = [("full", 1.60, 3000, 1_000_000, 0.40), ("lora", 1.70, 1500, 20_000, 0.45), ("qlora", 1.75, 900, 20_000, 0.35),
        ("ia3", 1.95, 1200, 2_000, 0.50), ("prompt_tuning", 2.20, 1300, 500, 0.30)]


def _store(root):
    write_run(root, "ex", method="none", eval_loss=2.4, mem=700, params=0, extra={"task.chatterbot_mc.acc": 0.25})
    for method, loss, mem, params, acc in RUNS:
        for seed in range(2):
            write_run(root, "ex", method=method, seed=seed, eval_loss=loss + 0.01 * seed, mem=mem + 10 * seed,
                      params=params, train_s=30 + mem / 100, extra={"task.chatterbot_mc.acc": acc + 0.01 * seed})


def _explorer(report):
    return next(v for s in report.sections for v in s.views if v.kind == PARETO)


def _front(data, x, y, methods=None):
    """The front the page should draw, from the payload and harness.report.stats.pareto_mask."""
    lower = {m["key"]: m["lower"] for m in data["metrics"]}
    pts = [p for p in data["points"] if methods is None or p["group"] in methods]
    xs = [p["values"][x][0] for p in pts]
    ys = [p["values"][y][0] for p in pts]
    mask = pareto_mask(xs, ys, lower[y], minimize_cost=lower[x])
    return sorted(p["name"] for p, on in zip(pts, mask) if on)


def test_explorer_offers_the_experiments_directed_metrics(tmp_path):
    _store(tmp_path)
    report = build("ex", tmp_path)
    data = _explorer(report).data
    keys = [m["key"] for m in data["metrics"]]
    assert data["x"] == "peak_mem_train_mb" and data["y"] == "eval_ppl"
    assert {"eval_loss", "eval_ppl", "task.chatterbot_mc.acc", "trainable_params", "train_s"} <= set(keys)
    # directions from the metric vocabulary; figures without one (tokens trained on) are not offered
    lower = {m["key"]: m["lower"] for m in data["metrics"]}
    assert lower["eval_ppl"] and not lower["task.chatterbot_mc.acc"] and lower["peak_mem_train_mb"]
    assert "train_tokens" not in keys and "infer_decode_ms_per_token_iqr" not in keys
    assert data["groups"] == ["full", "lora", "qlora", "ia3", "prompt_tuning"]  # the base row is not a point
    lora = next(p for p in data["points"] if p["name"].startswith("lora"))
    assert lora["values"]["eval_loss"][1] < lora["values"]["eval_loss"][0] < lora["values"]["eval_loss"][2]
    assert "<b>lora-n100</b>" in lora["hover"] and "eval ppl" not in lora["hover"]  # the page adds the axes
    figures = dict(lora["figures"])
    assert re.fullmatch(r"eval ppl: [\d.]+ \[[\d.]+, [\d.]+\]", figures["eval_ppl"])
    assert set(keys) <= set(figures)  # every offered axis, and the figures no axis can take, for the panel
    # the explorer replaces the fronts' PNGs on the page; report.md keeps them
    assert set(_explorer(report).replaces) == {"pareto_eval_ppl.png", "pareto_task_chatterbot_mc_acc.png"}
    assert "pareto_eval_ppl.png" in to_markdown(report) and "plotly" not in to_markdown(report).lower()


def test_no_explorer_without_two_axes(tmp_path):
    write_run(tmp_path, "one", method="lora", eval_loss=2.0)
    ctx = ReportContext("one", load_runs("one", tmp_path), tmp_path)
    assert pareto_view(ctx.summary, ctx.metrics, ctx.axes, caption="") is None  # one point: nothing to explore


def test_page_is_self_contained_and_inlines_plotly_once(tmp_path):
    _store(tmp_path)
    paths = write(build("ex", tmp_path), tmp_path / "out")
    page = paths["html"].read_text()
    assert page.count(plotly_js()[:300]) == 1
    # outside the bundle (whose code names URLs for features a report never uses: maps, MathJax) nothing
    # points off the page; the browser test checks that nothing is requested
    assert not re.search(r"<script[^>]+src=|https?://", page.replace(plotly_js(), ""))
    assert {p.name for p in (tmp_path / "out").glob("*.png")} >= {"pareto_eval_ppl.png", "training_curves.png"}


def _point_position(page, root_selector, trace, index):
    """Viewport coordinates of point `index` of trace `trace` in the explorer's plot."""
    return page.evaluate("""([sel, t, i]) => {
        const gd = document.querySelector(sel + ' .plot');
        gd.scrollIntoView();
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
        const d = gd.data[t];
        return [box.left + xa._offset + xa.c2p(d.x[i]), box.top + ya._offset + ya.c2p(d.y[i])];
    }""", [root_selector, trace, index])


def test_explorer_in_chromium(tmp_path):
    chromium = require_chromium()
    _store(tmp_path)
    report = build("ex", tmp_path)
    data = _explorer(report).data
    paths = write(report, tmp_path / "out")
    with launch(chromium) as browser:
        visit = open_in_browser(paths["html"], browser=browser, settle_ms=300)
        assert visit.console_errors == [] and visit.page_errors == [] and visit.requests == []
        context = browser.new_context(accept_downloads=True)
        requests = []
        context.on("request", lambda r: requests.append(r.url))
        page = context.new_page()
        page.goto(paths["html"].resolve().as_uri())
        root = "figure.view.pareto"
        front = lambda: sorted(json.loads(page.get_attribute(root, "data-front")))  # noqa: E731
        drawn = lambda: sorted(page.evaluate(  # noqa: E731
            f"() => document.querySelector('{root} .plot').data[2].customdata"))
        assert front() == drawn() == _front(data, "peak_mem_train_mb", "eval_ppl")
        # any two metrics: a higher-is-better y flips the direction the front is taken in
        page.select_option(f"{root} select.x-axis", "trainable_params")
        page.select_option(f"{root} select.y-axis", "task.chatterbot_mc.acc")
        expected = _front(data, "trainable_params", "task.chatterbot_mc.acc")
        assert front() == drawn() == expected != _front(data, "peak_mem_train_mb", "eval_ppl")
        assert page.evaluate(f"() => document.querySelector('{root} .plot').layout.xaxis.type") == "log"
        assert "chatterbot_mc.acc (higher is better)" in page.text_content(f"{root} .plot .ytitle")
        # a method unticked leaves the points and the front, which is recomputed without it
        page.uncheck(f"{root} input.group[value='ia3']")
        assert front() == _front(data, "trainable_params", "task.chatterbot_mc.acc",
                                 {"full", "lora", "qlora", "prompt_tuning"})
        page.check(f"{root} input.group[value='ia3']")
        # hover a front member with the mouse: its configuration and the chosen axes' figures with their
        # intervals; every figure in the panel under the plot
        x, y = _point_position(page, root, 2, 0)
        name = page.evaluate(f"() => document.querySelector('{root} .plot').data[2].customdata[0]")
        page.mouse.move(x, y)
        page.wait_for_selector(f"{root} .hoverlayer .hovertext", timeout=5000)
        hover = page.text_content(f"{root} .hoverlayer .hovertext")
        assert name in hover and "seeds: 2" in hover
        assert re.search(r"chatterbot_mc.acc: [\d.]+ \[[\d.]+, [\d.]+\]", hover)
        assert "trainable params:" in hover and "eval ppl" not in hover
        page.wait_for_function(f"() => document.querySelector('{root} div.figures').textContent.length > 0")
        panel = page.text_content(f"{root} div.figures")
        assert name in panel and re.search(r"eval ppl: [\d.]+ \[[\d.]+, [\d.]+\]", panel)
        # the training curves are a Plotly figure too
        assert page.locator("figure.view.plotly .plot .main-svg").count() >= 1
        # a table keeps only the rows holding every word typed, and saves them as CSV
        box = page.locator("div.table").nth(0)
        box.locator("input.filter").fill("lora")
        shown = box.locator("tbody tr:not(.hidden)")
        assert shown.count() == 2 and all("lora" in t for t in shown.all_text_contents())  # lora, qlora
        assert box.locator("span.count").text_content() == "2 of 6 rows"
        with page.expect_download() as download:
            box.locator("button.csv").click()
        rows = list(csv.reader(io.StringIO(open(download.value.path(), encoding="utf-8").read())))
        assert rows[0][0] == "configuration" and sorted(r[0] for r in rows[1:]) == ["lora-n100", "qlora-n100"]
        box.locator("input.filter").fill("")
        assert box.locator("tbody tr:not(.hidden)").count() == 6
        context.close()
        assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
