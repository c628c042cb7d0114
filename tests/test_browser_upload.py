"""The upload page on a phone with a bad network: Debian's Chromium at 390x844, driven by
Playwright, the network throttled and cut with CDP's Network.emulateNetworkConditions, against a
real server on loopback that counts the upload bytes it reads and sends a strict CSP."""

from __future__ import annotations

import re
import threading
import time

import pytest

from . import chromium
from .phone_photos import phone_photo

pytestmark = pytest.mark.browser

chromium.require()

PHONE = {"width": 390, "height": 844}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; worker-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
# CDP throughputs are bytes per second.
SLOW_3G = {"offline": False, "latency": 400, "downloadThroughput": 50_000, "uploadThroughput": 50_000}
FAST_3G = {"offline": False, "latency": 150, "downloadThroughput": 180_000, "uploadThroughput": 90_000}
OFFLINE = {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0}
ONLINE = {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}


class CountingInput:
    """wsgi.input that counts the bytes the app reads: what the phone really had to send."""

    def __init__(self, stream, counter):
        self.stream, self.counter = stream, counter

    def read(self, *args):
        data = self.stream.read(*args)
        self.counter.add(len(data))
        return data

    def readline(self, *args):
        data = self.stream.readline(*args)
        self.counter.add(len(data))
        return data

    def readinto(self, buf):
        n = self.stream.readinto(buf)
        self.counter.add(n or 0)
        return n


class Server:
    """The app behind a middleware that counts upload bytes and adds a strict CSP."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.bytes = 0

    def add(self, n: int) -> None:
        with self.lock:
            self.bytes += n

    def reset(self) -> None:
        with self.lock:
            self.bytes = 0

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/api/v1/uploads") or path in ("/api/v1/photos", "/upload"):
            environ["wsgi.input"] = CountingInput(environ["wsgi.input"], self)

        def start(status, headers, exc_info=None):
            if not any(k.lower() == "content-security-policy" for k, _ in headers):
                headers.append(("Content-Security-Policy", CSP))
            return start_response(status, headers, exc_info)

        return self.app(environ, start)


@pytest.fixture
def server(app):
    counting = Server(app.wsgi_app)
    app.wsgi_app = counting
    with chromium.serve(app) as url:
        counting.url = url
        yield counting


@pytest.fixture
def browser():
    with chromium.launch() as b:
        yield b


class Phone:
    def __init__(self, browser, base):
        self.context = browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True)
        self.page = self.context.new_page()
        self.base = base
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(m.text))
        self.page.on("pageerror", lambda e: self.problems.append(str(e)))
        self.page.on("dialog", lambda d: d.accept())
        self.cdp = self.context.new_cdp_session(self.page)
        self.cdp.send("Network.enable")

    def network(self, conditions: dict) -> None:
        self.cdp.send("Network.emulateNetworkConditions", conditions)

    def register(self, email="asha@example.com"):
        chromium.register(self.page, self.base, email=email)

    def add(self, paths) -> None:
        self.page.set_input_files("#photo-input", [str(x) for x in paths])

    def wait_finished(self, n: int, timeout: float = 60) -> None:
        self.page.wait_for_function(
            f"() => document.querySelectorAll('.job.verdict-accepted, .job.verdict-rejected').length >= {n}",
            timeout=timeout * 1000)

    def verdicts(self) -> dict[str, tuple[str, str]]:
        return self.page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.job')].map(li =>
            [li.querySelector('.name').textContent, [li.className, li.querySelector('.verdict').textContent]]))""")

    def close(self):
        self.context.close()


@pytest.fixture
def phone(browser, server):
    p = Phone(browser, server.url)
    yield p
    p.close()


def photos(tmp_path, seeds, size=(1280, 960), noise=10.0):
    out = []
    for seed in seeds:
        path = tmp_path / f"IMG_{seed:04d}.jpg"
        path.write_bytes(phone_photo(seed, size=size, noise=noise))
        out.append(path)
    return out


def test_batch_of_ten_survives_a_minute_offline_on_3g(svc, server, phone, tmp_path):
    """60 s without network in the middle of a batch on throttled 3G: ten right verdicts, no touch."""
    files = photos(tmp_path, range(1, 9), size=(1024, 768))
    small = tmp_path / "IMG_small.jpg"
    small.write_bytes(phone_photo(50, size=(400, 300)))
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    phone.register()
    phone.network(FAST_3G)
    phone.add([*files, small, notes])
    phone.wait_finished(3)
    phone.network(OFFLINE)
    phone.page.wait_for_selector("#network:not([hidden])", timeout=30_000)
    assert "offline" in phone.page.text_content("#network")
    time.sleep(60)
    phone.network(FAST_3G)
    phone.wait_finished(10, timeout=180)
    v = phone.verdicts()
    for f in files:
        assert "verdict-accepted" in v[f.name][0], v[f.name]
    assert "verdict-rejected" in v["IMG_small.jpg"][0] and "480 pixels" in v["IMG_small.jpg"][1]
    assert "verdict-rejected" in v["notes.txt"][0] and "not an image" in v["notes.txt"][1]
    assert phone.page.text_content("#progress-count") == "8"
    assert phone.page.text_content("#summary") == "8 accepted, 2 refused, 0 waiting"
    assert phone.page.is_hidden("#network")
    # finished photos fold away: the last three accepted stay in view
    assert phone.page.locator("#queue .job.verdict-accepted").count() == 3
    assert phone.page.locator("#done-list .job").count() == 5
    assert not [p for p in phone.problems if "Content Security Policy" in p]


def test_reload_mid_batch_resumes_by_itself(svc, server, phone, tmp_path):
    files = photos(tmp_path, range(11, 17), size=(1024, 768))
    phone.register()
    phone.network(SLOW_3G)
    phone.add(files)
    phone.wait_finished(2)
    # work in flight: leaving asks first
    assert phone.page.evaluate("() => !window.dispatchEvent(new Event('beforeunload', {cancelable: true}))")
    phone.page.reload()
    phone.page.wait_for_selector("body[data-queue-ready]", state="attached")
    assert phone.page.locator(".job").count() == 6  # the queue came back from IndexedDB
    phone.network(FAST_3G)
    phone.wait_finished(6, timeout=120)
    v = phone.verdicts()
    assert all("verdict-accepted" in v[f.name][0] for f in files), v
    assert phone.page.text_content("#progress-count") == "6"
    with svc.db.Session() as s:
        from sqlalchemy import func, select

        from collector.platform.models import Photo
        assert s.scalar(select(func.count()).select_from(Photo)) == 6
    # nothing left in flight: leaving does not ask
    assert phone.page.evaluate("() => window.dispatchEvent(new Event('beforeunload', {cancelable: true}))")


def test_interrupted_large_upload_resumes_where_it_stopped(svc, server, phone, tmp_path):
    (big,) = photos(tmp_path, [21], size=(2000, 1500), noise=12)
    size = big.stat().st_size
    phone.register()
    server.reset()
    phone.network({**FAST_3G, "uploadThroughput": 120_000})
    phone.add([big])
    deadline = time.monotonic() + 60
    while server.bytes < size * 0.4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.bytes >= size * 0.4
    phone.network(OFFLINE)
    time.sleep(3)
    phone.network(FAST_3G)
    phone.wait_finished(1)
    assert "verdict-accepted" in phone.verdicts()[big.name][0]
    assert server.bytes < 2 * size  # the brief
    assert server.bytes < 1.1 * size, (server.bytes, size)  # in fact: the bytes that arrived were kept


def test_reload_during_a_large_upload_goes_on_from_the_servers_offset(svc, server, phone, tmp_path):
    (big,) = photos(tmp_path, [22], size=(2000, 1500), noise=12)
    size = big.stat().st_size
    phone.register()
    server.reset()
    phone.network({**FAST_3G, "uploadThroughput": 120_000})
    phone.add([big])
    while server.bytes < size * 0.5:
        time.sleep(0.1)
    phone.page.reload()
    phone.wait_finished(1)
    assert "verdict-accepted" in phone.verdicts()[big.name][0]
    assert server.bytes < 1.2 * size, (server.bytes, size)


def test_photos_the_server_has_are_not_sent_again(svc, server, phone, tmp_path):
    files = photos(tmp_path, range(31, 34), size=(1024, 768))
    phone.register()
    phone.add(files)
    phone.wait_finished(3)
    phone.page.click("#clear-done")
    assert phone.page.locator(".job").count() == 0
    server.reset()
    phone.add(files)
    phone.wait_finished(3)
    assert server.bytes == 0
    v = phone.verdicts()
    for f in files:
        assert "verdict-accepted" in v[f.name][0] and "already counted" in v[f.name][1], v
    assert phone.page.text_content("#progress-count") == "3"


def test_someone_elses_photo_is_refused_without_sending_it(svc, server, browser, tmp_path):
    files = photos(tmp_path, [41], size=(1024, 768))
    first = Phone(browser, server.url)
    first.register("first@example.com")
    first.add(files)
    first.wait_finished(1)
    first.close()
    second = Phone(browser, server.url)
    second.register("second@example.com")
    server.reset()
    second.add(files)
    second.wait_finished(1)
    assert server.bytes == 0
    cls, text = second.verdicts()[files[0].name]
    assert "verdict-rejected" in cls and "someone else" in text
    second.close()


def test_a_lost_reply_replayed_reads_accepted(svc, server, phone, tmp_path):
    """The server accepted the photo, the reply never came; on retry the page says Accepted."""
    (f,) = photos(tmp_path, [51], size=(1024, 768))
    phone.register()
    # The final PATCH reaches the server, which accepts the photo; its reply is dropped.
    dropped = []

    def lose_reply(route):
        if route.request.method == "PATCH" and not dropped:
            route.fetch()
            dropped.append(True)
            route.abort()
        else:
            route.continue_()

    phone.page.route("**/api/v1/uploads/*", lose_reply)
    phone.add([f])
    phone.wait_finished(1, timeout=90)
    assert dropped
    cls, text = phone.verdicts()[f.name]
    assert "verdict-accepted" in cls and text.startswith("Accepted")
    with svc.db.Session() as s:
        from sqlalchemy import func, select

        from collector.platform.models import Photo
        assert s.scalar(select(func.count()).select_from(Photo)) == 1


def test_phone_page_copy_thumbnails_and_focus(svc, server, phone, tmp_path):
    files = photos(tmp_path, [61, 62], size=(1024, 768))
    heic = tmp_path / "IMG_0001.HEIC"
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 200)
    phone.register()
    page = phone.page
    assert page.is_hidden(".drop-hint")  # nothing to drop things onto on a phone
    phone.add([*files, heic])
    phone.wait_finished(3)
    # thumbnails decoded in the browser; HEIC that this browser cannot decode gets a placeholder
    page.wait_for_function("() => document.querySelectorAll('.job canvas.thumb').length === 2")
    assert page.locator(".job .thumb.placeholder").text_content() == "HEIC"
    # one announcement per verdict in the polite live region; the queue itself is not live
    assert page.get_attribute("#announce", "aria-live") == "polite"
    assert page.get_attribute("#queue", "aria-live") is None
    assert page.text_content("#announce").startswith(("IMG_", "IMG"))
    # keyboard focus shows on the label of the focused input
    page.focus("#photo-input")
    assert page.eval_on_selector("label[for=photo-input]", "l => getComputedStyle(l).outlineStyle") == "solid"
    page.focus("#camera-input")
    assert page.eval_on_selector("label[for=camera-input]", "l => getComputedStyle(l).outlineStyle") == "solid"
    assert page.eval_on_selector("label[for=photo-input]", "l => getComputedStyle(l).outlineStyle") != "solid"
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_what_truly_failed_waits_for_retry_failed(svc, server, phone, tmp_path):
    """Logged out mid-batch: the photos say so and wait; after logging in, "Retry failed" sends them."""
    files = photos(tmp_path, [71, 72], size=(1024, 768))
    phone.register()
    phone.network(SLOW_3G)
    phone.context.clear_cookies()  # the session ends (another tab logged out, say)
    phone.add(files)
    page = phone.page
    page.locator("#retry-failed").wait_for(state="visible", timeout=60_000)
    page.wait_for_function("() => document.querySelectorAll('.job.verdict-error').length === 2", timeout=60_000)
    assert "Log in again" in page.locator(".job.verdict-error").first.text_content() or \
        "Reload the page" in page.locator(".job.verdict-error").first.text_content()
    assert "2 not sent" in page.text_content("#summary")
    phone.network(ONLINE)
    page.goto(phone.base + "/login")
    page.fill("#email", "asha@example.com")
    page.fill("#password", "a long enough password")
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r"/upload$"))
    page.wait_for_selector("body[data-queue-ready]", state="attached")
    assert page.locator(".job.verdict-error").count() == 2  # still there, still waiting for the person
    page.click("#retry-failed")
    phone.wait_finished(2)
    v = phone.verdicts()
    assert all("verdict-accepted" in v[f.name][0] for f in files), v
    assert page.is_hidden("#retry-failed")
