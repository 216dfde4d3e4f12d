"""The built site in a real browser (Debian's chromium, driven by playwright): the home, solvers,
learned-corrections and API pages load over HTTP with no JavaScript error, no failed request, no broken image and
no internal link that fails; a screenshot of each is written (to $DIFFSOLVE_SCREENSHOTS if set, else a temp folder).
"""
import functools
import http.server
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

PAGES = {"home": "index.html", "solvers": "solvers.html", "learned-corrections": "learned-corrections.html",
         "api-core": "api/core.html"}


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def chromium() -> str | None:
    return os.environ.get("DIFFSOLVE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(built_site):
    handler = functools.partial(QuietHandler, directory=str(built_site[0]))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = chromium()
    if exe is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", PAGES)
def test_page_in_a_browser(name, server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("pageerror", lambda e: problems.append(f"JavaScript error: {e}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console error: {m.text}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))
    url = urljoin(server, PAGES[name])
    assert page.goto(url, wait_until="load").status == 200
    page.wait_for_load_state("networkidle")
    broken_images = page.eval_on_selector_all(
        "img", "els => els.filter(e => !e.complete || e.naturalWidth === 0).map(e => e.getAttribute('src'))")
    problems += [f"image not loaded: {src}" for src in broken_images]
    links = set(page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"))
    for link in sorted(links):
        if link.startswith(server) and urlsplit(link).path != urlsplit(url).path:
            status = page.request.get(link.split("#")[0]).status
            if status != 200:
                problems.append(f"link {link}: HTTP {status}")
    out = Path(os.environ.get("DIFFSOLVE_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / f"{name}.png"), full_page=False)
    page.close()
    assert problems == []
