"""The upload page in a real browser: Debian's Chromium, driven by Playwright, against a real
server on loopback. Skips, saying so, where no Chromium is installed (CI installs it)."""

from __future__ import annotations

import re

import pytest

from . import chromium, photos

pytestmark = pytest.mark.browser

chromium.require()


@pytest.fixture
def live_server(app):
    with chromium.serve(app) as url:
        yield url


@pytest.fixture
def page():
    with chromium.launch() as browser:
        context = browser.new_context(viewport={"width": 390, "height": 844})  # a phone
        yield context.new_page()
        context.close()


@pytest.mark.settings(QUOTA=3)
def test_register_then_upload_many_files_with_per_file_verdicts(svc, live_server, page, tmp_path):
    from playwright.sync_api import expect

    violations = []
    page.on("console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    chromium.register(page, live_server, queue=False)
    assert page.text_content("#progress-count") == "0"
    bad = tmp_path / "notes.txt"
    bad.write_text("not a photo")
    pics = tmp_path / "pictures"
    files = [photos.write(pics, "canon"), photos.write(pics, "iphone"), photos.write(pics, "large"), bad, photos.write(pics, "small")]
    page.set_input_files("#photo-input", [str(f) for f in files])
    expect(page.locator(".job:not(.verdict-pending)")).to_have_count(5, timeout=30000)
    items = {page.locator(".job").nth(i).locator(".name").text_content(): page.locator(".job").nth(i)
             for i in range(5)}
    assert "verdict-accepted" in items["canon.jpg"].get_attribute("class")
    assert "verdict-rejected" in items["notes.txt"].get_attribute("class")
    assert "not an image" in items["notes.txt"].text_content()
    assert "at least 480 pixels" in items["small.jpg"].text_content()
    assert page.text_content("#progress-count") == "3"
    assert "Fee paid" in page.text_content("#progress-text")
    page.screenshot(path=str(tmp_path / "upload.png"), full_page=True)

    # the same photo again: a retry, not an error
    page.set_input_files("#photo-input", [str(files[0])])
    expect(page.locator(".job")).to_have_count(6)
    last = page.locator("#queue .job").last
    expect(last).to_have_class(re.compile("verdict-accepted"))
    assert "already counted" in last.text_content()

    page.goto(live_server + "/photos")
    assert page.locator(".tile").count() == 3
    assert page.locator(".tile img").first.evaluate("img => img.complete && img.naturalWidth > 0")
    assert "not_an_image" in page.text_content(".rejections")
    assert not violations, violations


def test_upload_page_works_without_javascript(svc, live_server, tmp_path):
    with chromium.launch() as browser:
        context = browser.new_context(java_script_enabled=False)
        page = context.new_page()
        chromium.register(page, live_server, queue=False)
        pics = tmp_path / "pictures"
        page.set_input_files("#photo-input", [str(photos.write(pics, "canon")), str(photos.write(pics, "large"))])
        page.click("#upload-submit")
        page.wait_for_load_state()
        assert page.locator(".verdict-accepted").count() == 2
        assert page.text_content("#progress-count") == "2"
        context.close()
