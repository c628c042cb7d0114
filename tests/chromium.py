"""Debian's Chromium, driven by Playwright, for the browser tests and for the benches and
screenshots that drive the pages: where it is, the flags this closed, sandboxed machine needs,
and a real server on loopback to point it at."""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Without the background-networking flags Chromium keeps trying hosts this machine cannot reach.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


def require() -> None:
    """Skip the calling test module, saying so, where no Chromium is installed; under
    COLLECTOR_REQUIRE_BROWSER (CI) that is an error instead."""
    if CHROMIUM:
        return
    if os.environ.get("COLLECTOR_REQUIRE_BROWSER"):
        raise RuntimeError("COLLECTOR_REQUIRE_BROWSER is set but no chromium is installed")
    import pytest

    pytest.skip("no chromium on this machine (apt-get install chromium)", allow_module_level=True)


@contextmanager
def launch(executable: str | None = None):
    """A headless Chromium (``executable`` or the one found on PATH), closed at the end."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable or CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def serve(wsgi_app) -> Iterator[str]:
    """``wsgi_app`` on a free loopback port in a thread; yields its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


PASSWORD = "a long enough password"


def register(page, base: str, name: str = "Asha", email: str = "asha@example.com", *, queue: bool = True) -> None:
    """Register through the page, then log in: ends on the upload page. With ``queue`` it also
    waits until the page's script has its upload queue ready (leave it off without JavaScript)."""
    page.goto(base + "/register")
    page.fill("#name", name)
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.check("#consent")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/login$"))  # the same answer for a new or a known email: then log in
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r"/upload$"))
    if queue:
        page.wait_for_selector("body[data-queue-ready]", state="attached")
