"""Issue 8, the web's part: slow and hostile clients, bodies refused before they are read, limits
that no one can turn against others, sessions, headers, formula-safe CSV, database faults.

Findings 3, 4 and 14 run against a real server (gunicorn with gunicorn.conf.py, as `make run`
starts it) over real loopback sockets; the rest go through the Flask test client on the real
database of the run."""

from __future__ import annotations

import csv
import io
import os
import socket
import sqlite3
import threading
import time

import pytest
import requests
from sqlalchemy import update

from collector.platform.db import Database
from collector.platform.models import Photo
from collector.web import accounts

from .conftest import ROOT, Auth, csrf_from, free_port, gunicorn, multipart
from .synthetic import plate_photo

PASSWORD = "correct horse battery"


class Unreadable(io.RawIOBase):
    """A request body of ``size`` bytes that fails the test if anyone reads it."""

    def __init__(self, size: int = 10_000):
        self.size, self.pos = size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=0):
        self.pos = {0: 0, 1: self.pos, 2: self.size}[whence] + offset
        return self.pos

    def tell(self):
        return self.pos

    def readinto(self, b):
        raise AssertionError("the request body was read")


# --- a real server -------------------------------------------------------------------------


@pytest.fixture
def server(settings, svc, make_user, tmp_path):
    """gunicorn as `make run` starts it, 1 process x 2 app threads (easy to exhaust with threads
    per connection), short header and body deadlines; users made through the same database."""
    ann, slow = make_user("ann@example.com", "Ann"), make_user("slow@example.com", "Slow")
    tokens = {"ann": accounts.create_token(svc.db, ann.id).token, "slow": accounts.create_token(svc.db, slow.id).token}
    with gunicorn(settings, tmp_path / "server.log", workers=1, threads=2,
                  COLLECTOR_HEADER_TIMEOUT="2", COLLECTOR_BODY_TIMEOUT="8") as port:
        yield port, tokens


def upload_head(port: int, token: str | None, length: int, path: str = "/api/v1/photos") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
            f"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {length}\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and the rest, reading until the server closes the connection."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server closes (or resets) the connection before our socket timeout."""
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_finding_3_slow_uploaders_do_not_starve_other_people(server):
    port, tokens = server
    stop = threading.Event()
    socks = []
    for _ in range(12):  # six times the app threads; each would hold one for its whole body
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(upload_head(port, tokens["slow"], 5 * 1024 * 1024))
        socks.append(s)

    def trickle():
        while not stop.is_set():
            for s in socks:
                try:
                    s.sendall(b"-")
                except OSError:
                    pass
            stop.wait(0.5)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        time.sleep(1.0)
        for _ in range(5):
            assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
        r = requests.post(f"http://127.0.0.1:{port}/api/v1/photos", files={"photo": ("p.jpg", plate_photo(7, (1000, 750)))},
                          headers={"Authorization": f"Bearer {tokens['ann']}"}, timeout=30)
        assert r.status_code == 201, r.text
    finally:
        stop.set()
        t.join(5)
        for s in socks:
            s.close()


def test_finding_3_header_and_body_deadlines_close_slow_connections(server):
    port, tokens = server
    # headers one byte at a time: closed at the header deadline (2 s here)
    s = socket.create_connection(("127.0.0.1", port), timeout=1)
    closed = False
    try:
        for byte in upload_head(port, tokens["slow"], 100)[:60]:
            s.sendall(bytes([byte]))
            time.sleep(0.25)
    except OSError:
        closed = True
    if not closed:
        s.settimeout(15)
        closed = closed_by_server(s)
    s.close()
    assert closed, "a connection that never finished its headers stayed open"
    # a body at one byte a second: closed at the body deadline (8 s here)
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(upload_head(port, tokens["slow"], 10_000))
    closed = False
    try:
        for _ in range(40):
            s.sendall(b"-")
            time.sleep(1.0)
    except OSError:
        closed = True
    s.close()
    assert closed, "a body sent at one byte a second was still being read after 40 s"


def test_finding_4_unauthorised_and_oversized_bodies_are_refused_unread(server):
    port, tokens = server
    cases = [
        (None, 200 * 1024 * 1024, "/upload", (302, 401)),  # anonymous form upload of 200 MB
        (None, 200 * 1024 * 1024, "/api/v1/photos", (401,)),
        ("pc_not-a-real-token", 200 * 1024 * 1024, "/api/v1/photos", (401,)),
        (tokens["ann"], 750 * 1024 * 1024, "/api/v1/photos", (413,)),  # logged in, but over the per-request cap
    ]
    for token, length, path, expected in cases:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(upload_head(port, token, length, path))  # headers only: not one byte of body
            status, headers, _ = read_response(s)
        assert status in expected, (path, status)
        assert headers.get("connection") == "close"


def test_finding_4_the_app_decides_before_reading_the_body(app, client, make_user, svc):
    user = make_user()
    token = accounts.create_token(svc.db, user.id).token
    def body(size=10_000):
        return {"input_stream": Unreadable(size), "content_type": "multipart/form-data; boundary=x"}

    r = client.post("/api/v1/photos", **body())
    assert r.status_code == 401 and r.json["code"] == "unauthorized" and r.headers["Connection"] == "close"
    r = client.post("/upload", **body())
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    r = client.post("/api/v1/photos", **body(app.config["MAX_CONTENT_LENGTH"] + 1), headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 413 and r.json["code"] == "too_large"
    r = client.post("/login", **body(2 * 1024 * 1024))  # forms are small
    assert r.status_code == 413


def test_finding_14_follow_up_requests_after_an_early_refusal_all_work(server):
    port, _ = server
    base = f"http://127.0.0.1:{port}"
    with requests.Session() as http:
        for i in range(10):
            r = http.post(f"{base}/api/v1/photos", files={"photo": ("p.jpg", os.urandom(100_000))},
                          headers={"Authorization": "Bearer pc_wrong"}, timeout=10)
            assert r.status_code == 401 and r.headers["Connection"] == "close"
            assert http.get(f"{base}/", timeout=10).status_code == 200, i
    # and on the raw connection: the server closes it after the refusal instead of reading on
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(upload_head(port, "pc_wrong", 100_000) + b"-" * 100_000 + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, rest = read_response(s)
    assert status == 401 and headers["connection"] == "close" and b"HTTP/1.1" not in rest


def test_forwarded_for_is_not_believed_unless_configured(server):
    """X-Forwarded-For from a client (loopback here) must not pick the address the limits count."""
    port, _ = server
    base = f"http://127.0.0.1:{port}"
    with requests.Session() as http:
        codes = []
        for i in range(11):
            token = csrf_from(http.get(f"{base}/login", timeout=10).text)
            r = http.post(f"{base}/login", data={"csrf_token": token, "email": "ann@example.com", "password": "wrong password!"},
                          headers={"X-Forwarded-For": f"198.51.100.{i}"}, allow_redirects=False, timeout=10)
            codes.append(r.status_code)
    assert codes == [401] * 10 + [429]


# --- finding 8: parts -----------------------------------------------------------------------


def test_finding_8_more_than_a_thousand_parts_is_a_bad_request(client, make_user, svc):
    user = make_user()
    token = accounts.create_token(svc.db, user.id).token
    from werkzeug.datastructures import FileStorage, MultiDict
    from werkzeug.test import encode_multipart

    # 1,100 small fields, then the photo: a 500 KB body, far under the size cap
    values = MultiDict([(f"f{i}", "x" * 400) for i in range(1100)] + [("photo", FileStorage(io.BytesIO(b"jpeg"), "p.jpg"))])
    boundary, body = encode_multipart(values)
    r = client.post("/api/v1/photos", data=body, content_type=f"multipart/form-data; boundary={boundary}",
                    headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 400 and r.json["code"] == "bad_request" and "at most 1,000" in r.json["message"]


# --- finding 9: log-in limits no one can turn against others ------------------------------


def login(client, email, password, addr):
    html = client.get("/login", environ_base={"REMOTE_ADDR": addr}).get_data(as_text=True)
    return client.post("/login", data={"csrf_token": csrf_from(html), "email": email, "password": password},
                       environ_base={"REMOTE_ADDR": addr})


def test_finding_9_made_up_emails_do_not_lock_out_a_shared_address(app, svc, make_user):
    make_user()
    wifi = "10.1.2.3"
    for i in range(101):
        assert accounts.authenticate(svc.db, f"nobody{i}@example.com", "guess", wifi, svc.settings["LOGIN_MAX_FAILURES"]) is None
    r = login(app.test_client(), "ann@example.com", PASSWORD, wifi)
    assert r.status_code == 302, r.get_data(as_text=True)[-500:]


def test_finding_9_wrong_passwords_stop_the_guesser_not_the_owner(app, svc, make_user):
    make_user()
    guesser = app.test_client()
    for _ in range(svc.settings["LOGIN_MAX_FAILURES"]):
        assert login(guesser, "ann@example.com", "wrong password!", "10.0.0.66").status_code == 401
    r = login(guesser, "ann@example.com", PASSWORD, "10.0.0.66")  # even the right one, from there
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0 and "Wait" in r.get_data(as_text=True)
    assert login(app.test_client(), "ann@example.com", PASSWORD, "10.0.0.7").status_code == 302  # the owner, elsewhere


@pytest.mark.settings(LOGIN_MAX_FAILURES=1)  # the address ceiling is 30 times this
def test_finding_9_past_an_address_ceiling_failures_all_read_the_same(svc, client, make_user):
    make_user("ann@example.com", "Ann")
    make_user("bob@example.com", "Bob")
    for i in range(30):
        assert accounts.authenticate(svc.db, f"nobody{i}@example.com", "guess", "10.9.9.9", 1) is None
    unknown = login(client, "nobody-else@example.com", "guess", "10.9.9.9")
    known = login(client, "bob@example.com", "wrong password!", "10.9.9.9")
    assert unknown.status_code == known.status_code == 429  # no telling which emails exist
    assert login(client, "ann@example.com", PASSWORD, "10.9.9.9").status_code == 302  # the right password still works


# --- finding 10: registrations, uploads, tokens ----------------------------------------------


def register(client, email, addr):
    html = client.get("/register", environ_base={"REMOTE_ADDR": addr}).get_data(as_text=True)
    data = {"csrf_token": csrf_from(html), "name": "X", "email": email, "password": PASSWORD, "consent": "y"}
    return client.post("/register", data=data, environ_base={"REMOTE_ADDR": addr})


@pytest.mark.settings(REGISTRATIONS_PER_ADDRESS=3)
def test_finding_10_registrations_per_address(app):
    client = app.test_client()
    for i in range(3):
        assert register(client, f"p{i}@example.com", "10.0.0.5").status_code == 302
    r = register(client, "p3@example.com", "10.0.0.5")
    assert r.status_code == 429 and r.headers["Retry-After"] and "Too many accounts" in r.get_data(as_text=True)
    assert register(app.test_client(), "p4@example.com", "10.0.0.6").status_code == 302


@pytest.mark.settings(UPLOADS_PER_MINUTE=3)
def test_finding_10_uploads_per_account_per_minute(svc, client, make_user):
    user, other = make_user("ann@example.com", "Ann"), make_user("bob@example.com", "Bob")
    token, other_token = accounts.create_token(svc.db, user.id).token, accounts.create_token(svc.db, other.id).token
    for i in range(3):
        r = client.post("/api/v1/photos", **multipart(b"junk %d" % i), headers={"Authorization": f"Bearer {token}"})
        assert r.status_code != 429
    r = client.post("/api/v1/photos", input_stream=Unreadable(1000), content_type="multipart/form-data; boundary=x",
                    headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 429 and r.json["code"] == "rate_limited" and int(r.headers["Retry-After"]) > 0
    assert "uploads in a minute" in r.json["message"]
    r = client.post("/api/v1/photos", **multipart(b"junk"), headers={"Authorization": f"Bearer {other_token}"})
    assert r.status_code != 429  # another account is not affected


@pytest.mark.settings(MAX_API_TOKENS=2)
def test_finding_10_api_tokens_per_account(client):
    auth = Auth(client)
    auth.register()
    for _ in range(2):
        assert client.post("/account/tokens", data={"csrf_token": auth.csrf()}).status_code == 303  # post-redirect-get
    r = client.post("/account/tokens", data={"csrf_token": auth.csrf()})
    assert r.status_code == 422 and "revoke one" in r.get_data(as_text=True)


# --- finding 11: sessions ----------------------------------------------------------------


def cookies_of(client) -> dict[str, str]:
    return {name: client.get_cookie(name).value for name in ("collector_session", "remember_token") if client.get_cookie(name)}


def with_cookies(app, cookies: dict[str, str]):
    other = app.test_client()
    for name, value in cookies.items():
        other.set_cookie(name, value)
    return other


def test_finding_11_logout_ends_every_session_and_remember_cookie(app, client, auth):
    auth.register()
    stolen = cookies_of(client)
    assert set(stolen) == {"collector_session", "remember_token"}
    assert with_cookies(app, stolen).get("/photos").status_code == 200
    client.post("/logout", data={"csrf_token": auth.csrf()})
    assert with_cookies(app, stolen).get("/photos").status_code == 302
    assert with_cookies(app, {"remember_token": stolen["remember_token"]}).get("/photos").status_code == 302


def test_finding_11_password_change_ends_earlier_sessions(app, client, auth, svc):
    auth.register()
    stolen = cookies_of(client)
    with svc.db.Session() as session:
        user = accounts.user_by_email(session, "ann@example.com")
    accounts.set_password(svc.db, user.id, "a brand new passphrase")
    assert with_cookies(app, stolen).get("/photos").status_code == 302
    assert client.get("/photos").status_code == 302
    assert auth.login(password="a brand new passphrase").status_code == 302


def test_finding_11_password_change_from_the_command_line(app, client, auth, runner):
    auth.register()
    stolen = cookies_of(client)
    r = runner.invoke(args=["users", "password", "ann@example.com", "--password-stdin"], input="another long passphrase\n")
    assert r.exit_code == 0, r.output
    assert with_cookies(app, stolen).get("/photos").status_code == 302
    assert auth.login(password="another long passphrase").status_code == 302


def test_finding_11_csrf_token_is_rotated_at_log_in(client, auth, make_user):
    make_user()
    before = csrf_from(client.get("/login").get_data(as_text=True))
    assert auth.login().status_code == 302
    after = csrf_from(client.get("/upload").get_data(as_text=True))
    assert before != after
    # the planted token no longer passes
    r = client.post("/account/tokens", data={"csrf_token": before})
    assert r.status_code == 400


def test_finding_11_registration_does_not_tell_whether_an_email_exists(app, make_user):
    make_user("ann@example.com")
    known = register(app.test_client(), "ann@example.com", "10.0.0.1")
    new = register(app.test_client(), "zed@example.com", "10.0.0.2")
    assert known.status_code == new.status_code == 302
    assert known.headers["Location"] == new.headers["Location"]
    for r in (known, new):  # neither answer logs anyone in
        assert "remember_token" not in r.headers.get("Set-Cookie", "")
    client = app.test_client()
    register(client, "ann@example.com", "10.0.0.3")
    page = client.get("/login").get_data(as_text=True)
    assert "If this email is new, your account is ready" in page and "already exists" not in page


# --- finding 12: headers -------------------------------------------------------------------


def test_finding_12_security_headers_on_every_response(client, auth):
    responses = [client.get("/"), client.get("/login"), client.get("/no-such-page"), client.post("/api/v1/photos"),
                 client.get("/static/app.css")]
    auth.register()
    responses += [client.get("/upload"), client.get("/account")]
    for r in responses:
        csp = r.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp, r.request.path
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "same-origin"
        r.close()


def test_finding_12_no_inline_script_or_handlers_in_templates():
    import re

    for path in (ROOT / "templates").glob("*.html"):
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), f"{path.name}: inline <script>"
        assert not re.search(r"\son[a-z]+\s*=", text), f"{path.name}: inline event handler"


def test_finding_12_originals_come_with_a_disposition(client, auth):
    auth.register()
    r = client.post("/upload", **multipart(plate_photo(11, (900, 700)), "my plate.jpg", csrf_token=auth.csrf()))
    assert r.status_code == 200
    html = client.get("/photos").get_data(as_text=True)
    import re

    photo_id = re.search(r"/photos/(\d+)/", html).group(1)
    r = client.get(f"/photos/{photo_id}/file")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    assert r.headers["Content-Disposition"] == f"inline; filename=plate-{photo_id}.jpg"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    r.close()


# --- finding 13: formulas in the export CSV ----------------------------------------------------


def test_finding_13_export_csv_neutralises_formulas(svc, make_user, submit, runner, tmp_path):
    user = make_user()
    assert submit(user, plate_photo(21, (900, 700))).accepted
    with svc.db.write_transaction(lock=False) as tx:
        tx.execute(update(Photo).values(camera_make='=HYPERLINK("http://evil.example","click")', camera_model="@SUM(1+1)"))
    out = tmp_path / "out"
    r = runner.invoke(args=["export", str(out), "--format", "csv"])
    assert r.exit_code == 0, r.output
    (row,) = list(csv.DictReader(io.StringIO((out / "manifest.csv").read_text())))
    assert row["camera_make"] == "'=HYPERLINK(\"http://evil.example\",\"click\")"
    assert row["camera_model"] == "'@SUM(1+1)"
    assert not row["width"].startswith("'")


# --- finding 15, the web's side: database faults answer 503 with Retry-After ------------------


def test_finding_15_a_locked_database_answers_503_with_retry_after(app, client, auth, svc):
    """SQLite: another process holds the write lock. PostgreSQL: another session holds the intake lock."""
    from sqlalchemy import create_engine, text

    from collector.platform.db import INTAKE_LOCK

    auth.register()
    with svc.db.Session() as session:
        user = accounts.user_by_email(session, "ann@example.com")
    token = accounts.create_token(svc.db, user.id).token
    csrf = auth.csrf()
    if svc.db.is_sqlite:
        holder = sqlite3.connect(svc.db.url.database, timeout=0)
        holder.execute("BEGIN IMMEDIATE")
        release = holder.rollback
    else:
        engine = create_engine(svc.db.url)
        holder = engine.connect()
        holder.begin()
        holder.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": INTAKE_LOCK})
        release = holder.rollback
    try:
        r = client.post("/api/v1/photos", **multipart(plate_photo(5, (800, 600))), headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 503 and r.json["code"] == "service_unavailable" and int(r.headers["Retry-After"]) > 0
        assert "busy" in r.json["message"] and "not recorded" in r.json["message"]
        r = client.post("/upload", **multipart(plate_photo(6, (800, 600)), csrf_token=csrf))
        page = r.get_data(as_text=True)
        assert r.status_code == 503 and r.headers["Retry-After"] and "database is busy" in page
        assert "Nothing you sent was lost" not in page
    finally:
        release()
        holder.close()
        if not svc.db.is_sqlite:
            engine.dispose()
    r = client.post("/api/v1/photos", **multipart(plate_photo(5, (800, 600))), headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 201  # and once the lock is gone, the same photo goes in


def test_finding_15_unreachable_postgresql_answers_503_with_retry_after(app, svc, make_user):
    user = make_user()
    token = accounts.create_token(svc.db, user.id).token
    # PostgreSQL gone: the app's database now points at a loopback port where nothing listens.
    dead = Database(f"postgresql+psycopg://collector@127.0.0.1:{free_port()}/collector")
    live = svc.db
    svc.db = svc.intake.db = dead
    try:
        client = app.test_client()
        r = client.post("/api/v1/photos", **multipart(plate_photo(6, (800, 600))), headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 503 and r.json["code"] == "service_unavailable" and int(r.headers["Retry-After"]) > 0
        html = client.get("/register").get_data(as_text=True)
        r = client.post("/register", data={"csrf_token": csrf_from(html), "name": "Bo", "email": "bo@example.com",
                                           "password": PASSWORD, "consent": "y"})
        page = r.get_data(as_text=True)
        assert r.status_code == 503 and r.headers["Retry-After"] and "cannot be reached" in page
        assert "Nothing you sent was lost" not in page
    finally:
        svc.db = svc.intake.db = live
        dead.dispose()


@pytest.mark.parametrize("password, says", [("too short", "at least 10 characters"), ("x" * 1025, "too long")])
def test_a_new_account_and_a_new_password_follow_the_same_rules(svc, make_user, password, says):
    with pytest.raises(accounts.AccountError, match=says):
        accounts.create_user(svc.db, "ann@example.com", "Ann", password, "CC BY 4.0")
    user = make_user()
    with pytest.raises(accounts.AccountError, match=says):
        accounts.set_password(svc.db, user.id, password)
