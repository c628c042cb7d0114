"""Migrations carry existing data forward: an upgrade never loses what was stored before."""

from __future__ import annotations

import io

from alembic import command
from sqlalchemy import inspect, text

from collector import create_app
from collector.platform.db import Database, _alembic_config, head_revision

from . import photos


def _at_revision(db: Database, revision: str | None):
    """An open connection to ``db`` with its schema at ``revision`` (None: no tables at all)."""
    cfg = _alembic_config()
    conn = db.engine.connect()
    if db.is_sqlite:
        conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
    with conn.begin():
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base") if _has_tables(conn) else None
        if revision is not None:
            command.upgrade(cfg, revision)
    return conn


def test_create_app_does_not_migrate_and_a_request_says_what_to_run(settings, database_url, caplog):
    db = Database(database_url)
    _at_revision(db, None).close()
    db.dispose()
    app = create_app(settings)
    try:
        svc = app.extensions["collector"]
        assert svc.db.revision() is None  # building the app applied nothing
        r = app.test_client().get("/")
        assert r.status_code == 503 and "db upgrade" in r.get_data(as_text=True)
        assert "the database is not at the latest migration: run `make flask ARGS='db upgrade'`" in caplog.text
        result = app.test_cli_runner().invoke(args=["db", "upgrade"])
        assert result.exit_code == 0, result.output
        assert svc.db.revision() == head_revision()
        assert app.test_client().get("/").status_code == 200
    finally:
        app.extensions["collector"].db.dispose()


def test_upgrade_from_the_first_revision_keeps_every_row(settings, database_url):
    db = Database(database_url)
    with _at_revision(db, "0001") as conn, conn.begin():
        conn.execute(text(
            "INSERT INTO users (id, email, name, password_hash, is_organiser, licence, consented_at, created_at, accepted_count) "
            "VALUES (1, 'old@example.com', 'Old', 'x', false, 'CC BY 4.0', '2026-01-01', '2026-01-01', 1)"))
        conn.execute(text(
            "INSERT INTO photos (user_id, sha256, storage_key, thumb_key, format, size_bytes, width, height, orientation, "
            "pdq, pdq_quality, sharpness, brightness, contrast, original_filename, status, created_at) VALUES "
            "(1, :sha, 'k', 't', 'JPEG', 1, 900, 600, 1, :pdq, 100, 100, 100, 50, 'old.jpg', 'accepted', '2026-01-01')"),
            {"sha": "a" * 64, "pdq": "0" * 64})
        conn.execute(text("INSERT INTO photo_hash_bands (key, photo_id) SELECT 5, id FROM photos"))
    db.dispose()

    app = create_app(settings)
    try:
        result = app.test_cli_runner().invoke(args=["db", "upgrade"])  # as `make run` does first
        assert result.exit_code == 0, result.output
        svc = app.extensions["collector"]
        with svc.db.engine.connect() as conn:
            assert conn.execute(text("SELECT email, accepted_count, checked_in_at FROM users")).one() == ("old@example.com", 1, None)
            assert conn.execute(text("SELECT original_filename, status, review_reason FROM photos")).one() == ("old.jpg", "accepted", None)
            assert "photo_hash_bands" not in inspect(conn).get_table_names()  # the index is in memory now
            assert conn.execute(text("SELECT user_id, pdq FROM photo_hashes")).one() == (1, "0" * 64)
        # and the upgraded database works
        v = svc.intake.submit(1, io.BytesIO(photos.named("canon")), "new.jpg")
        assert v.accepted and v.progress.accepted == 2, v.message
    finally:
        app.extensions["collector"].db.dispose()


def _has_tables(conn) -> bool:
    return "alembic_version" in inspect(conn).get_table_names()


def test_downgrade_below_0011_rebuilds_the_band_rows(settings, database_url):
    """The band table went in 0011; going back rebuilds its 16 rows per photo from the hashes."""
    from collector.intake import dedup

    app = create_app(settings)
    try:
        assert app.test_cli_runner().invoke(args=["db", "upgrade"]).exit_code == 0
        svc = app.extensions["collector"]
        with svc.db.write_transaction(lock=False) as tx:
            tx.execute(text(
                "INSERT INTO users (id, email, name, password_hash, is_organiser, licence, consented_at, created_at, accepted_count) "
                "VALUES (1, 'a@example.com', 'A', 'x', false, 'CC BY 4.0', '2026-01-01', '2026-01-01', 0)"))
        for i, data in enumerate(photos.distinct(2)):
            v = svc.intake.submit(1, io.BytesIO(data), f"{i}.jpg")
            assert v.accepted, v.message
        with svc.db.engine.connect() as conn:
            hashes = conn.execute(text("SELECT photo_id, pdq FROM photo_hashes ORDER BY photo_id")).all()
        assert len(hashes) == 2
        cfg = _alembic_config()
        with svc.db.engine.connect() as conn, conn.begin():
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0010_plates")
            rows = conn.execute(text("SELECT photo_id, key FROM photo_hash_bands")).all()
            assert sorted(rows) == sorted((pid, k) for pid, pdq in hashes for k in dedup.band_keys(pdq))
            command.upgrade(cfg, "head")
            assert "photo_hash_bands" not in inspect(conn).get_table_names()
    finally:
        app.extensions["collector"].db.dispose()
