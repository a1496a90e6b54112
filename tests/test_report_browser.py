"""The HTML report in a real headless Chromium: it loads offline, logs no error, requests nothing, sorts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from browser import launch, open_in_browser, require_chromium
from harness.report.build import build
from harness.report.render import write
from harness.report.stats import power_law
from report_store import write_run


def _store(root: Path) -> None:
    """Every section at once: 3 seeds, an n_train curve, a failed run, a reference row with task scores."""
    rng = np.random.default_rng(0)
    write_run(root, "page", method="none", eval_loss=3.0, train_s=0.0, params=0)
    for method, (a, b, c), mem in (("lora", (6.0, 0.5, 1.6), 1200), ("qlora", (6.5, 0.5, 1.65), 700)):
        for n in (50, 200, 800):
            for seed in range(3):
                loss = float(power_law(n, a, b, c) + rng.normal(0, 0.01))
                # as many figures as a real experiment has (~30): a hover label listing them all would be
                # taller than the plot, and Plotly drops such a label
                tasks = {f"task.chatterbot_mc_{k}.acc": 0.3 + rng.normal(0, 0.01) for k in range(24)}
                write_run(root, "page", method=method, n_train=n, seed=seed, eval_loss=loss, mem=mem + seed,
                          extra={"task.chatterbot_mc.acc": 0.3 + rng.normal(0, 0.01), "forgetting_ppl_pct": 2.0,
                                 **tasks})
    write_run(root, "page", method="dora", status="failed")


def test_report_html_in_headless_chromium(tmp_path):
    chromium = require_chromium()
    _store(tmp_path / "results")
    paths = write(build("page", tmp_path / "results"), tmp_path / "reports" / "page")
    shot = tmp_path / "report.png"
    with launch(chromium) as browser:
        visit = open_in_browser(paths["html"], shot, browser=browser)
        assert visit.console_errors == [] and visit.page_errors == []
        assert visit.requests == []  # one file: no CDN, no sibling PNG, nothing fetched
        assert visit.title == "ftbench report: page"
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        # the summary table sorts when a header is clicked: eval ppl ascending, then descending
        page = browser.new_page()
        page.goto(paths["html"].resolve().as_uri())
        header = page.locator("table.sortable").first.locator("th", has_text="eval ppl")
        column = page.locator("table.sortable").first.locator("th").all_text_contents().index(header.text_content())
        values = lambda: [float(v) for v in page.eval_on_selector_all(  # noqa: E731
            "table.sortable >> nth=0 >> tbody tr", f"rows => rows.map(r => r.cells[{column}].dataset.v || 'NaN')")]
        header.click()
        ascending = [v for v in values() if v == v]
        header.click()
        descending = [v for v in values() if v == v]
        assert ascending == sorted(ascending) and descending == sorted(descending, reverse=True)
        assert len(ascending) == 7  # 6 configurations and the base row
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
        assert len(images) >= 1 and all(images)  # data size decoded (Pareto and training curves are Plotly views)
        assert page.locator("figure.view .main-svg").count() >= 2  # the Pareto explorer and the training curves
        # the explorer: other axes redraw the front; hovering a point names its configuration
        explorer = "figure.view.pareto"
        front = lambda: page.get_attribute(explorer, "data-front")  # noqa: E731
        before = front()
        page.select_option(f"{explorer} select.x-axis", "train_s")
        page.select_option(f"{explorer} select.y-axis", "task.chatterbot_mc.acc")
        assert front() != before and "chatterbot_mc.acc against train s" in page.text_content(f"{explorer} p.front")
        x, y, name = page.evaluate("""sel => {
            const gd = document.querySelector(sel + ' .plot'); gd.scrollIntoView();
            const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect(), d = gd.data[2];
            return [box.left + xa._offset + xa.c2p(d.x[0]), box.top + ya._offset + ya.c2p(d.y[0]), d.customdata[0]];
        }""", explorer)
        page.mouse.move(x, y)
        page.wait_for_selector(f"{explorer} .hoverlayer .hovertext", timeout=5000)
        label = page.text_content(f"{explorer} .hoverlayer .hovertext")
        assert name in label and "chatterbot_mc.acc:" in label and "train s:" in label  # the chosen axes
        panel = page.text_content(f"{explorer} div.figures")  # and every figure under the plot
        assert name in panel and "eval ppl:" in panel and "chatterbot_mc_23.acc:" in panel
        page.close()
    keep = os.environ.get("FTBENCH_SCREENSHOTS")
    if keep:  # CI or a person can keep the picture
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")
