"""Every page through axe-core (vendored: tests/vendor/axe.min.js, 4.14.1, MPL-2.0) in Debian's
Chromium, at phone and desktop size: no serious or critical violation, and no page wider than
the phone's screen."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from . import chromium
from .phone_photos import phone_photo

pytestmark = pytest.mark.browser
AXE = (Path(__file__).parent / "vendor" / "axe.min.js").read_text()

chromium.require()

SIZES = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 800}}
PASSWORD = "correct horse battery"


@pytest.fixture
def settings(settings):
    return {**settings, "QUOTA": 2}


@pytest.fixture
def site(app, svc, make_user):
    """A meetup in progress: an organiser, an attendee with a paid fee, a rejected photo, a refusal."""
    from collector.intake import credits
    from collector.organisers import review

    org = make_user("org@example.com", "Olu", PASSWORD, organiser=True)
    ann = make_user("ann@example.com", "Ann", PASSWORD)
    ids = [svc.intake.submit(ann.id, io.BytesIO(phone_photo(seed, size=(800, 600))), f"IMG_{seed}.jpg").photo_id
           for seed in (101, 102, 103)]
    svc.intake.submit(ann.id, io.BytesIO(b"not a photo"), "notes.txt")
    review.reject(svc.db, ids[0], org.id, reason="unreadable", note="blurred")
    secret = svc.settings["SECRET_KEY"]
    credits.ensure_pass_code(svc.db, secret, ann.id)
    with chromium.serve(app) as url:
        yield {"url": url, "ann": ann, "org": org, "photos": ids, "token": credits.pass_token(secret, ann.id), "svc": svc}


def check(page, url: str, found: dict) -> None:
    page.goto(url)
    page.evaluate(AXE)
    violations = page.evaluate("""async () => (await axe.run(document, {resultTypes: ['violations']})).violations
        .filter(v => v.impact === 'serious' || v.impact === 'critical')
        .map(v => v.id + ' (' + v.impact + '): ' + v.help + ' at ' + v.nodes.map(n => n.target.join(' ')).slice(0, 3).join(', '))""")
    if violations:
        found[url] = violations
    width = page.evaluate("() => document.documentElement.scrollWidth")
    viewport = page.viewport_size["width"]
    if width > viewport:
        found.setdefault(url, []).append(f"page is {width} px wide in a {viewport} px screen")


def photo_status(site, photo_id):
    from collector.platform.models import Photo

    with site["svc"].db.Session() as session:
        return session.get(Photo, photo_id).status


def log_in(page, base, email):
    page.goto(base + "/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()


@pytest.mark.parametrize("size", SIZES)
def test_every_page_passes_axe(site, size, tmp_path):
    base = site["url"]
    found: dict[str, list[str]] = {}
    with chromium.launch() as browser:
        anon = browser.new_context(viewport=SIZES[size], bypass_csp=True)
        page = anon.new_page()
        for path in ("/", "/login", "/register", "/no-such-page"):
            check(page, base + path, found)
        anon.close()

        attendee = browser.new_context(viewport=SIZES[size], bypass_csp=True)
        page = attendee.new_page()
        log_in(page, base, "ann@example.com")
        assert page.url.endswith("/upload")
        check(page, base + "/upload", found)
        # the upload page with a queue: accepted, refused and already counted
        photo = tmp_path / "IMG_0200.jpg"
        photo.write_bytes(phone_photo(200, size=(800, 600)))
        notes = tmp_path / "notes.txt"
        notes.write_text("not a photo")
        page.set_input_files("#photo-input", [str(photo), str(notes)])
        page.wait_for_function("() => document.querySelectorAll('.job.verdict-accepted, .job.verdict-rejected').length === 2")
        page.evaluate(AXE)
        check(page, base + "/upload", found)  # reloaded: the queue comes back from IndexedDB
        for path in ("/photos", "/pass", "/account", f"/checkin/{site['token']}"):
            check(page, base + path, found)
        page.goto(base + "/account")
        page.click("form[action$='/account/tokens'] button")
        page.wait_for_load_state()
        assert page.locator("#new-token").count() == 1
        check(page, page.url, found)
        attendee.close()

        organiser = browser.new_context(viewport=SIZES[size], bypass_csp=True)
        page = organiser.new_page()
        log_in(page, base, "org@example.com")
        assert re.search(r"/dashboard$", page.url), page.url  # organisers land on the dashboard
        pid = site["photos"][1]
        for path in ("/dashboard", "/dashboard/review", "/dashboard/review?filter=rejected",
                     f"/dashboard/contributors/{site['ann'].id}", f"/dashboard/photos/{pid}",
                     "/checkin", "/checkin?q=ann", f"/checkin/{site['token']}"):
            check(page, base + path, found)
        # Reject on a review tile asks to be pressed again before it acts
        page.goto(base + "/dashboard/review")
        button = page.locator(f"#photo-{pid} form.reject button")
        button.click()
        assert button.text_content() == "Confirm reject"
        assert photo_status(site, pid) == "accepted"
        with page.expect_navigation():
            button.click()
        assert photo_status(site, pid) == "rejected"
        organiser.close()
    assert not found, "\n".join(f"{url}: {v}" for url, vs in found.items() for v in vs)
