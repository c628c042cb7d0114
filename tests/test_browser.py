"""The upload page in a real browser: Debian's Chromium, driven by Playwright, against a real
server on loopback. Skips, saying so, where no Chromium is installed (CI installs it)."""

from __future__ import annotations

import os
import re
import shutil
import threading

import pytest
from werkzeug.serving import make_server

from .conftest import plate

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.browser

if not CHROMIUM:
    if os.environ.get("COLLECTOR_REQUIRE_BROWSER"):
        raise RuntimeError("COLLECTOR_REQUIRE_BROWSER is set but no chromium is installed")
    pytest.skip("no chromium on this machine (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
def live_server(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone
        yield context.new_page()
        context.close()
        browser.close()


def register(page, base):
    page.goto(base + "/register")
    page.fill("#name", "Asha")
    page.fill("#email", "asha@example.com")
    page.fill("#password", "a long enough password")
    page.check("#consent")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"/upload$"))


def test_register_then_upload_many_files_with_per_file_verdicts(svc, live_server, page, tmp_path):
    svc.settings["QUOTA"] = 3
    register(page, live_server)
    assert page.text_content("#progress-count") == "0"
    bad = tmp_path / "notes.txt"
    bad.write_text("not a photo")
    files = [plate("us/us7.jpg"), plate("br/JST2699.jpg"), plate("eu/eu7.jpg"), bad, plate("eu/test_018.jpg")]
    page.set_input_files("#photo-input", [str(f) for f in files])
    page.wait_for_function("document.querySelectorAll('.job:not(.verdict-pending)').length === 5", timeout=30000)
    items = {page.locator(".job").nth(i).locator(".name").text_content(): page.locator(".job").nth(i)
             for i in range(5)}
    assert "verdict-accepted" in items["us7.jpg"].get_attribute("class")
    assert "verdict-rejected" in items["notes.txt"].get_attribute("class")
    assert "not an image" in items["notes.txt"].text_content()
    assert "at least 480 pixels" in items["test_018.jpg"].text_content()
    assert page.text_content("#progress-count") == "3"
    assert "Fee paid" in page.text_content("#progress-text")
    page.screenshot(path=str(tmp_path / "upload.png"), full_page=True)

    # the same photo again: a retry, not an error
    page.set_input_files("#photo-input", [str(plate("us/us7.jpg"))])
    page.wait_for_function("document.querySelectorAll('.job').length === 6")
    last = page.locator("#queue .job").last
    last.locator(".verdict strong").wait_for()
    assert "verdict-accepted" in last.get_attribute("class") and "already counted" in last.text_content()

    page.goto(live_server + "/photos")
    assert page.locator(".tile").count() == 3
    assert page.locator(".tile img").first.evaluate("img => img.complete && img.naturalWidth > 0")
    assert "not_an_image" in page.text_content(".rejections")


def test_upload_page_works_without_javascript(svc, live_server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                     "--disable-background-networking", "--disable-component-update"])
        context = browser.new_context(java_script_enabled=False)
        page = context.new_page()
        register(page, live_server)
        page.set_input_files("#photo-input", [str(plate("us/us7.jpg")), str(plate("eu/eu7.jpg"))])
        page.click("#upload-submit")
        page.wait_for_load_state()
        assert page.locator(".verdict-accepted").count() == 2
        assert page.text_content("#progress-count") == "2"
        context.close()
        browser.close()
