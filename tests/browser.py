"""Open a local HTML file in a real headless browser (Debian's chromium, driven by Playwright).

Not a test module: a helper for tests that check a self-contained page, e.g. the HTML report.

    from browser import open_in_browser, require_chromium

    def test_page(tmp_path):
        require_chromium()                       # skip locally / fail under CI=true when missing
        visit = open_in_browser(page, tmp_path / "page.png")
        assert visit.console_errors == [] and visit.page_errors == [] and visit.requests == []

Nothing leaves the machine: every http(s)/ws(s)/ftp request the page makes is recorded in
``PageVisit.requests`` and then aborted (WebSockets are recorded and closed, never connected).
Chromium is `scripts/install-browser.sh`'s /usr/bin/chromium; ``playwright install`` is never used.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

#: Where scripts/install-browser.sh puts it; FTBENCH_CHROMIUM overrides.
DEFAULT_CHROMIUM = "/usr/bin/chromium"

#: Flags for a quiet, offline, root-safe headless chromium (without the background-networking ones
#: it tries to reach Google on start).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

#: Requests that would leave the machine: recorded, then aborted.
_REMOTE = re.compile(r"^(https?|ftp)://", re.IGNORECASE)


@dataclass
class PageVisit:
    """What one page load did."""

    url: str                                                # the file:// URL that was opened
    title: str = ""
    console_errors: list[str] = field(default_factory=list)  # console messages of type "error"
    page_errors: list[str] = field(default_factory=list)     # uncaught exceptions in the page
    #: every URL requested other than the page's own file:// URL and data: URLs, in request order
    #: (remote ones were aborted; ws(s):// ones were never connected)
    requests: list[str] = field(default_factory=list)
    screenshot: Path | None = None

    @property
    def clean(self) -> bool:
        """No console error, no page error, no request beyond the page itself."""
        return not (self.console_errors or self.page_errors or self.requests)


def chromium_path() -> str | None:
    """The chromium binary to drive ($FTBENCH_CHROMIUM, /usr/bin/chromium, or one on PATH), or None."""
    candidates = [os.environ.get("FTBENCH_CHROMIUM"), DEFAULT_CHROMIUM,
                  shutil.which("chromium"), shutil.which("chromium-browser")]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def playwright_available() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def missing_reason() -> str | None:
    """Why no browser test can run here, or None when chromium and playwright are both present."""
    problems = []
    if chromium_path() is None:
        problems.append(f"chromium not found ({DEFAULT_CHROMIUM}); run `bash scripts/install-browser.sh`")
    if not playwright_available():
        problems.append("Python package playwright not installed; run `.venv/bin/pip install -e '.[test]'`")
    return "; ".join(problems) or None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_chromium() -> str:
    """Return the chromium path, or stop the calling test: skip it when chromium or playwright is
    missing, but fail it under CI=true (CI must really run the browser tests)."""
    import pytest

    reason = missing_reason()
    if reason is not None:
        if in_ci():
            pytest.fail(f"browser test cannot run under CI=true: {reason}", pytrace=False)
        pytest.skip(f"browser test skipped: {reason}")
    return chromium_path()  # type: ignore[return-value]


@contextlib.contextmanager
def launch(executable: str | None = None, *, timeout_ms: float = 30_000) -> Iterator["object"]:
    """A headless chromium (a playwright Browser) with a fresh temporary profile, closed on exit.
    Share one across several ``open_in_browser(..., browser=b)`` calls to save the start-up."""
    from playwright.sync_api import sync_playwright

    executable = executable or chromium_path()
    if executable is None:
        raise FileNotFoundError(missing_reason())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS,
                                    chromium_sandbox=False, timeout=timeout_ms)
        try:
            yield browser
        finally:
            browser.close()


def _strip_fragment(url: str) -> str:
    return url.split("#", 1)[0]


def open_in_browser(html_path: Path, screenshot: Path | None = None, *, browser=None,
                    viewport: tuple[int, int] = (1280, 900), full_page: bool = True,
                    settle_ms: int = 200, timeout_ms: float = 15_000) -> PageVisit:
    """Load ``html_path`` (file://) in headless chromium, wait for the load event plus ``settle_ms``
    (late timers, async errors), save a PNG screenshot to ``screenshot`` (when given) and report
    console errors, uncaught page errors and every request beyond the page itself.

    A new browser is started and closed unless ``browser`` (from :func:`launch`) is given; each
    visit gets its own fresh context either way.
    """
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise FileNotFoundError(html_path)
    if browser is None:
        with launch() as own:
            return open_in_browser(html_path, screenshot, browser=own, viewport=viewport,
                                   full_page=full_page, settle_ms=settle_ms, timeout_ms=timeout_ms)

    url = html_path.as_uri()
    visit = PageVisit(url=url)
    seen: list[str] = []  # every URL, in order, filtered at the end

    def record(u: str) -> None:
        seen.append(u)

    def block(route) -> None:
        record(route.request.url)
        route.abort("blockedbyclient")

    def block_ws(ws) -> None:
        record(ws.url)
        ws.close()

    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                  device_scale_factor=1, service_workers="block",
                                  java_script_enabled=True)
    try:
        context.set_default_timeout(timeout_ms)
        context.route(_REMOTE, block)
        context.route_web_socket(re.compile(r".*"), block_ws)
        context.on("request", lambda request: record(request.url))
        page = context.new_page()
        page.on("console", lambda msg: visit.console_errors.append(_console_text(msg))
                if msg.type == "error" else None)
        page.on("pageerror", lambda err: visit.page_errors.append(_error_text(err)))

        page.goto(url, wait_until="load", timeout=timeout_ms)
        if settle_ms:
            page.wait_for_timeout(settle_ms)
        visit.title = page.title()
        if screenshot is not None:
            screenshot = Path(screenshot)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=full_page, type="png", animations="disabled")
            visit.screenshot = screenshot
        own = {_strip_fragment(url), _strip_fragment(page.url)}
    finally:
        context.close()

    for u in seen:
        if u.startswith("data:") or _strip_fragment(u) in own or u in visit.requests:
            continue
        visit.requests.append(u)
    return visit


def _console_text(msg) -> str:
    loc = msg.location or {}
    where = f" ({loc.get('url')}:{loc.get('lineNumber')})" if loc.get("url") else ""
    return f"{msg.text}{where}"


def _error_text(err) -> str:
    name = getattr(err, "name", "") or "Error"
    message = getattr(err, "message", None) or str(err)
    return f"{name}: {message}"
