"""tests/browser.py can fail: a clean self-contained page passes, and console errors, uncaught
errors and requests that would leave the page (all aborted, none reaching a server) are reported."""

from __future__ import annotations

import base64
import http.server
import struct
import threading
import zlib
from pathlib import Path

import pytest

import browser as br
from browser import PageVisit, launch, open_in_browser, require_chromium

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_png(width: int = 4, height: int = 3, rgb: tuple[int, int, int] = (30, 120, 200)) -> bytes:
    """A valid RGB PNG built by hand (no imaging library)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_MAGIC + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def write_page(tmp_path: Path, body: str, head: str = "", name: str = "page.html") -> Path:
    path = tmp_path / name
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>t</title>{head}</head>"
                    f"<body>{body}</body></html>", encoding="utf-8")
    return path


SELF_CONTAINED_BODY = """
<h1>Runs</h1>
<table id="runs"><thead><tr><th>method</th><th>loss</th></tr></thead>
<tbody><tr><td>lora</td><td>2.5</td></tr><tr><td>full</td><td>1.5</td></tr><tr><td>dora</td><td>2.0</td></tr></tbody>
</table>
<img id="plot" alt="plot" width="40" height="30" src="data:image/png;base64,{png}">
<script>
  const body = document.querySelector("#runs tbody");
  const rows = Array.from(body.rows).sort((a, b) => parseFloat(a.cells[1].textContent) - parseFloat(b.cells[1].textContent));
  rows.forEach(r => body.appendChild(r));
  window.addEventListener("load", () => {
    const img = document.getElementById("plot");
    document.title = "sorted:" + rows.map(r => r.cells[0].textContent).join(",")
                   + " img:" + img.naturalWidth + "x" + img.naturalHeight;
  });
</script>
"""
SELF_CONTAINED_HEAD = """<style>
  body { font-family: sans-serif; margin: 2em; }
  table { border-collapse: collapse; } td, th { border: 1px solid #888; padding: 4px 8px; }
  tbody tr:nth-child(odd) { background: #eef; }
</style>"""


@pytest.fixture(scope="module")
def shared_browser():
    require_chromium()
    with launch() as b:
        yield b


def test_self_contained_page_is_clean_and_screenshotted(tmp_path):
    require_chromium()
    png = base64.b64encode(tiny_png()).decode()
    page = write_page(tmp_path, SELF_CONTAINED_BODY.replace("{png}", png), SELF_CONTAINED_HEAD)
    shot = tmp_path / "shots" / "page.png"

    visit = open_in_browser(page, shot)  # its own browser: the default path

    assert isinstance(visit, PageVisit)
    assert visit.console_errors == []
    assert visit.page_errors == []
    assert visit.requests == []
    assert visit.clean
    # the inline script ran (table sorted by loss) and the data: image decoded
    assert visit.title == "sorted:full,dora,lora img:4x3"
    assert visit.url == page.resolve().as_uri()
    data = shot.read_bytes()
    assert visit.screenshot == shot and len(data) > 1000 and data.startswith(PNG_MAGIC)
    assert struct.unpack(">II", data[16:24])[0] == 1280  # IHDR width = the viewport


def test_console_error_and_uncaught_error_are_reported(tmp_path, shared_browser):
    page = write_page(tmp_path, '<p>x</p><script>console.error("boom")</script>'
                                '<script>setTimeout(() => { null.nope; }, 20)</script>')
    visit = open_in_browser(page, tmp_path / "p.png", browser=shared_browser)
    assert len(visit.console_errors) == 1 and visit.console_errors[0].startswith("boom")
    assert len(visit.page_errors) == 1 and "TypeError" in visit.page_errors[0]
    assert visit.requests == []
    assert not visit.clean


def test_thrown_error_in_inline_script_is_reported(tmp_path, shared_browser):
    page = write_page(tmp_path, '<script>throw new Error("kaput")</script>')
    visit = open_in_browser(page, browser=shared_browser)
    assert visit.page_errors == ["Error: kaput"]
    assert visit.screenshot is None


@pytest.mark.parametrize("markup, url", [
    ('<img src="http://127.0.0.1:9/x.png">', "http://127.0.0.1:9/x.png"),
    ('<script src="https://cdn.example.com/x.js"></script>', "https://cdn.example.com/x.js"),
    ('<link rel="stylesheet" href="https://fonts.example.com/f.css">', "https://fonts.example.com/f.css"),
    ('<script>fetch("https://api.example.com/q").catch(() => {})</script>', "https://api.example.com/q"),
    ('<img src="sibling.png">', "sibling.png"),  # another local file is not self-contained either
], ids=["img-http", "script-https", "css-https", "fetch", "local-file"])
def test_external_request_is_reported(tmp_path, shared_browser, markup, url):
    page = write_page(tmp_path, markup)
    if url == "sibling.png":
        (tmp_path / url).write_bytes(tiny_png())
        url = (tmp_path / url).resolve().as_uri()
    visit = open_in_browser(page, tmp_path / "p.png", browser=shared_browser)
    assert visit.requests == [url]
    assert not visit.clean


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802
        self.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_remote_requests_are_aborted_not_sent(tmp_path, shared_browser):
    """A live local server sees none of the page's img/script/fetch/beacon/WebSocket requests."""
    _CountingHandler.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        ws = f"ws://127.0.0.1:{server.server_port}/ws"
        page = write_page(tmp_path, f'<img src="{base}/img.png"><script src="{base}/s.js"></script>'
                                    f'<script>fetch("{base}/fetch").catch(() => {{}});'
                                    f'navigator.sendBeacon("{base}/beacon", "x");'
                                    f'try {{ new WebSocket("{ws}"); }} catch (e) {{}}</script>')
        visit = open_in_browser(page, browser=shared_browser)
    finally:
        server.shutdown()
        server.server_close()
    assert _CountingHandler.hits == []
    assert set(visit.requests) == {f"{base}/img.png", f"{base}/s.js", f"{base}/fetch", f"{base}/beacon", ws}


def test_require_chromium_skips_locally_but_fails_under_ci(monkeypatch):
    monkeypatch.setattr(br, "chromium_path", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium not found"):
        require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true.*chromium not found"):
        require_chromium()


def test_require_chromium_without_playwright(monkeypatch):
    monkeypatch.setattr(br, "playwright_available", lambda: False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="playwright"):
        require_chromium()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="playwright"):
        require_chromium()
