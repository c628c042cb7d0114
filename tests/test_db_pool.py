"""A request thread holds at most one pooled connection at a time, and the pool is sized from
the server's thread count, so concurrent uploads never wait for (or fail on) the pool."""

from __future__ import annotations

import threading
from collections import defaultdict

import pytest
from sqlalchemy import event

from collector.platform.db import SPARE_CONNECTIONS, Database, server_threads
from collector.web import accounts

from .conftest import multipart, plate


class Checkouts:
    """Connections each thread holds at once, from the pool's checkout and checkin events."""

    def __init__(self, engine):
        self.held: dict[int, int] = defaultdict(int)
        self.most: dict[int, int] = defaultdict(int)
        self.total = 0
        self.lock = threading.Lock()
        event.listen(engine, "checkout", self._out)
        event.listen(engine, "checkin", self._in)
        self.engine = engine

    def _out(self, *_):
        with self.lock:
            t = threading.get_ident()
            self.held[t] += 1
            self.total += 1
            self.most[t] = max(self.most[t], self.held[t])

    def _in(self, *_):
        with self.lock:
            self.held[threading.get_ident()] -= 1

    def close(self):
        event.remove(self.engine, "checkout", self._out)
        event.remove(self.engine, "checkin", self._in)


@pytest.fixture
def token_client(app, svc):
    user = accounts.create_user(svc.db, "ann@example.com", "Ann", "correct horse battery", "CC BY 4.0")
    token = accounts.create_token(svc.db, user.id).token
    return app.test_client(), {"Authorization": f"Bearer {token}"}


def test_token_upload_holds_one_connection_at_a_time(svc, token_client):
    client, headers = token_client
    data = plate("br/JST2699.jpg").read_bytes()
    count = Checkouts(svc.db.engine)
    try:
        r = client.post("/api/v1/photos", **multipart(data, "a.jpg"), headers=headers)
        assert r.status_code == 201, r.json
        assert count.total >= 3  # token check, first lookups, the write transaction
        assert max(count.most.values()) == 1, dict(count.most)
        r = client.post("/api/v1/photos", **multipart(data, "a.jpg"), headers=headers)  # a retry
        assert r.status_code == 200 and r.json["status"] == "already_uploaded"
        assert max(count.most.values()) == 1, dict(count.most)
    finally:
        count.close()


def test_refused_upload_holds_one_connection_at_a_time(svc, token_client, make_user, submit):
    client, headers = token_client
    data = plate("br/JST2699.jpg").read_bytes()
    submit(make_user("bob@example.com", "Bob"), data)  # someone else sent it first
    count = Checkouts(svc.db.engine)
    try:
        r = client.post("/api/v1/photos", **multipart(data, "a.jpg"), headers=headers)
        assert r.json["code"] == "duplicate"
        assert max(count.most.values()) == 1, dict(count.most)
    finally:
        count.close()


def test_release_hands_back_the_request_sessions_connection(app, svc, token_client):
    _, headers = token_client
    with app.test_request_context(headers=headers):
        count = Checkouts(svc.db.engine)
        try:
            from collector.web.api import token_user

            user = token_user()
            assert user is not None and count.held[threading.get_ident()] == 1
            svc.db.release()
            assert count.held[threading.get_ident()] == 0
            assert user.email == "ann@example.com"  # still usable after the release
            with svc.db.write_transaction(lock=False):
                assert count.held[threading.get_ident()] == 1
        finally:
            count.close()


def test_pool_size_follows_the_server_threads(tmp_path):
    assert server_threads(["gunicorn", "--workers", "4", "--threads", "16", "app:create_app()"], {}) == 16
    assert server_threads(["gunicorn", "--threads=3"], {}) == 3
    assert server_threads(["gunicorn"], {"GUNICORN_CMD_ARGS": "--bind 127.0.0.1:8000 --threads 12"}) == 12
    assert server_threads(["flask"], {}) == 8
    db = Database(f"sqlite:///{tmp_path / 'x.sqlite3'}", pool_size=None)
    try:
        assert db.pool_size == server_threads() + SPARE_CONNECTIONS
        assert db.engine.pool.size() == db.pool_size
    finally:
        db.dispose()
    db = Database(f"sqlite:///{tmp_path / 'y.sqlite3'}", pool_size=4)
    try:
        assert db.engine.pool.size() == 4
    finally:
        db.dispose()
