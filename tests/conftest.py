"""Fixture chain: a database (fresh SQLite file, or the real PostgreSQL with --db=postgresql),
an ``app`` on it with a temporary storage folder, a ``client``, a ``runner``, and helpers."""

from __future__ import annotations

import contextlib
import io
import os
import re
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from collector import create_app
from collector.platform.models import Base

from .scratch_db import scratch_database

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpus"
PLATES = CORPUS / "plates" / "openalpr" / "endtoend"
# The server and credentials for --db=postgresql; its database is only used for CREATE and DROP
# DATABASE (the maintenance database `postgres` by default): each run works in a database of
# its own, collector_test_<pid>_<random>, dropped at the end.
DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/postgres"
CORPUS_SKIP = "needs ../shared/corpus"


def pytest_addoption(parser):
    parser.addoption("--db", default=os.environ.get("COLLECTOR_TEST_DB", "sqlite"), choices=["sqlite", "postgresql"],
                     help="database to run the suite against")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``only_db("sqlite")`` (or postgresql) are about one database: on the other
    pass they are deselected, not skipped, so CI's strict skips do not count them."""
    db = config.getoption("--db")
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("only_db")
        (drop if marker is not None and db not in marker.args else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config):
    return f"database: {config.getoption('--db')}; corpus: {CORPUS if CORPUS.is_dir() else 'absent (tests/test_corpus.py skips)'}"


def corpus(*parts: str) -> Path:
    """A file of ../shared/corpus; the test skips, saying so, where the corpus is absent, and
    fails instead under COLLECTOR_REQUIRE_CORPUS (CI sets it when ../shared exists)."""
    path = CORPUS.joinpath(*parts)
    if not path.exists():
        if os.environ.get("COLLECTOR_REQUIRE_CORPUS"):
            pytest.fail(f"COLLECTOR_REQUIRE_CORPUS is set but {path} is absent")
        pytest.skip(f"{CORPUS_SKIP} ({path} is absent)")
    return path


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _unexpected_skips(config) -> list:
    """Under COLLECTOR_STRICT_SKIPS (CI), every skip is a failure, except the real-corpus tests
    on a machine without ../shared at all."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if not os.environ.get("COLLECTOR_STRICT_SKIPS") or reporter is None:
        return []
    return [r for r in reporter.stats.get("skipped", []) if SHARED.exists() or CORPUS_SKIP not in _skip_reason(r)]


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == 0 and _unexpected_skips(session.config):
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    unexpected = _unexpected_skips(config)
    if unexpected:
        terminalreporter.section("skips that fail the run (COLLECTOR_STRICT_SKIPS)", red=True)
        for r in unexpected:
            terminalreporter.line(f"{r.nodeid}: {_skip_reason(r)}")


def plate(rel: str) -> Path:
    return corpus("plates", "openalpr", "endtoend", rel)


@pytest.fixture(scope="session")
def pg_admin_url(request):
    if request.config.getoption("--db") != "postgresql":
        return None
    url = os.environ.get("COLLECTOR_TEST_POSTGRES_URL", DEFAULT_PG)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # the run asked for PostgreSQL: fail loudly, do not skip
        pytest.exit(f"PostgreSQL is not reachable at {url}: {exc}", returncode=3)
    finally:
        engine.dispose()
    return url


@pytest.fixture(scope="session")
def pg_database(pg_admin_url):
    """A database of its own for this test session, dropped at the end."""
    if pg_admin_url is None:
        yield None
        return
    with scratch_database(pg_admin_url, "collector_test") as url:
        yield url


@pytest.fixture
def database_url(tmp_path, pg_database):
    if pg_database is None:
        return f"sqlite:///{tmp_path / 'collector.sqlite3'}"
    engine = create_engine(pg_database)
    with engine.begin() as conn:  # an empty database for every test
        tables = [t.name for t in Base.metadata.sorted_tables]
        existing = set(conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
        present = [t for t in tables if t in existing]
        if present:
            conn.execute(text(f"TRUNCATE {', '.join(present)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return pg_database


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc=None, timeout: float = 30.0) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@contextlib.contextmanager
def gunicorn(settings: dict, log_path: Path, workers: int, threads: int, **env: str):
    """The app served as `make run` serves it (gunicorn.conf.py, `app:app`) on a free loopback
    port, configured through the environment from the test's ``settings`` plus ``env``
    (COLLECTOR_* names); yields the port. A traceback in the server's log fails the test."""
    import subprocess
    import sys

    port = free_port()
    environ = dict(os.environ, COLLECTOR_SECRET_KEY="test-secret", **env)
    for name in ("DATABASE_URL", "STORAGE_URL", "DATA_DIR", "S3_ENDPOINT_URL"):
        if settings.get(name):
            environ[f"COLLECTOR_{name}"] = str(settings[name])
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "--config", "gunicorn.conf.py", "--workers", str(workers),
             "--threads", str(threads), "--bind", f"127.0.0.1:{port}", "app:app"],
            cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port(port, proc, timeout=60)
            yield port
        finally:
            proc.terminate()
            proc.wait(30)
    assert b"Traceback" not in log_path.read_bytes(), log_path.read_text()[-3000:]


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3-compatible server on loopback, in a process of its own."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    port = free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """boto3's usual chain, pointed at the loopback server; a fresh bucket per test."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    bucket = f"photos-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    return {"endpoint": s3_server, "bucket": bucket}


@pytest.fixture
def settings(request, tmp_path, database_url):
    """The ``test_config`` of ``app``: a running app's settings are frozen, so a test that needs
    others says so with ``@pytest.mark.settings(QUOTA=3)`` (or a module overrides this fixture),
    or builds a second app with ``make_app(QUOTA=3)``."""
    marker = request.node.get_closest_marker("settings")
    return {
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": database_url,
        "STORAGE_URL": str(tmp_path / "photos"),
        "SECRET_KEY": "test-secret",
        "TESTING": True,
        **(marker.kwargs if marker else {}),
    }


@pytest.fixture
def s3_settings(settings, s3_env):
    """``settings`` with photo storage in a fresh bucket of the loopback S3 server."""
    settings["STORAGE_URL"] = f"s3://{s3_env['bucket']}/plates"
    settings["S3_ENDPOINT_URL"] = s3_env["endpoint"]
    return settings


@pytest.fixture
def make_app(settings):
    """``make_app(**overrides)``: an app on the test's database and folders with some settings
    changed (``settings`` plus ``overrides``), its database migrated (as `make run` does before
    serving: create_app never migrates); disposed of at the end of the test."""
    apps = []

    def make(**overrides):
        app = create_app({**settings, **overrides})
        apps.append(app)
        app.extensions["collector"].db.migrate()
        return app

    yield make
    for app in apps:
        app.extensions["collector"].db.dispose()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def svc(app):
    return app.extensions["collector"]


@pytest.fixture
def make_user(svc):
    from collector.web import accounts

    def make(email="ann@example.com", name="Ann", password="correct horse battery", organiser=False):
        return accounts.create_user(svc.db, email, name, password, "CC BY 4.0", organiser=organiser)

    return make


@pytest.fixture
def submit(svc):
    """Run bytes or a file through intake as ``user``."""

    def run(user, data, filename="photo.jpg"):
        if isinstance(data, Path):
            filename = data.name if filename == "photo.jpg" else filename
            data = data.read_bytes()
        return svc.intake.submit(user.id, io.BytesIO(data), filename)

    return run


def multipart(data: bytes | list[tuple[bytes, str]], name="plate.jpg", **fields) -> dict:
    """A ready multipart body: Werkzeug's test client would otherwise spool a large one to a
    temporary file of its own, which it leaves open (a ResourceWarning, an error here)."""
    from werkzeug.datastructures import FileStorage, MultiDict
    from werkzeug.test import encode_multipart

    files = data if isinstance(data, list) else [(data, name)]
    values = MultiDict([("photo", FileStorage(io.BytesIO(d), n)) for d, n in files] + list(fields.items()))
    boundary, body = encode_multipart(values)
    return {"data": body, "content_type": f"multipart/form-data; boundary={boundary}"}


def csrf_from(html: str) -> str:
    m = re.search(r'name="csrf-token" content="([^"]+)"', html) or re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert m, "no CSRF token on the page"
    return m.group(1)


class Auth:
    def __init__(self, client):
        self.client = client

    def register(self, email="ann@example.com", name="Ann", password="correct horse battery", consent=True, login=True):
        """Register; then, as a person would after the answer (which never logs in), log in."""
        token = csrf_from(self.client.get("/register").get_data(as_text=True))
        data = {"csrf_token": token, "name": name, "email": email, "password": password}
        if consent:
            data["consent"] = "y"
        r = self.client.post("/register", data=data)
        if login and r.status_code == 302:
            self.login(email, password)
        return r

    def login(self, email="ann@example.com", password="correct horse battery"):
        token = csrf_from(self.client.get("/login").get_data(as_text=True))
        return self.client.post("/login", data={"csrf_token": token, "email": email, "password": password})

    def csrf(self):
        return csrf_from(self.client.get("/upload").get_data(as_text=True))


@pytest.fixture
def auth(client):
    return Auth(client)
