"""The database: one engine per app, a session per app context, and the write lock.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and write transactions that
must not race (intake) start with ``BEGIN IMMEDIATE``, so they queue for the write lock up front
instead of failing with "database is locked" halfway. PostgreSQL gets the same guarantee from a
transaction-level advisory lock. Either way the lock is released at commit or rollback.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, scoped_session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
INTAKE_LOCK = 0x504C4154  # advisory lock id for "near-duplicate check + insert" ("PLAT")
MIGRATE_LOCK = 0x504C4D47
BUSY_TIMEOUT = 5  # seconds SQLite waits for a lock
LOCK_WAIT = 5  # seconds a writer waits for the intake lock on PostgreSQL before giving up


class Database:
    def __init__(self, url: str, scopefunc=None):
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        kwargs: dict = {"future": True}
        if self.is_sqlite:
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            # A few seconds of waiting for the write lock, then "database is locked", which
            # errors.py answers with 503 and Retry-After instead of holding the request for a minute.
            kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT, "check_same_thread": False}
        else:
            kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=10)
            kwargs["connect_args"] = {"connect_timeout": 5}  # an unreachable server fails in seconds
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            _sqlite_transactions(self.engine)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        # One session per app context (request, CLI command), removed at teardown.
        self.session = scoped_session(self.Session, scopefunc=scopefunc)

    @contextmanager
    def write_transaction(self, lock: bool = True) -> Iterator[Session]:
        """A session for one write transaction, committed when the block ends without error.

        SQLite takes its (single) write lock at BEGIN. On PostgreSQL, ``lock`` also takes the
        intake advisory lock, which serialises "look for duplicates, then insert" across workers.
        """
        with self.engine.connect() as conn:
            if self.is_sqlite:
                conn.info["begin"] = "BEGIN IMMEDIATE"
                conn.begin()
            else:
                conn.begin()
                if lock:
                    # A writer stuck holding the lock must not queue every upload behind it for
                    # ever: after LOCK_WAIT seconds this fails (503) like a locked SQLite file.
                    conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT}s'"))
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": INTAKE_LOCK})
                    conn.execute(text("SET LOCAL lock_timeout = 0"))
            with Session(bind=conn, expire_on_commit=False) as session:
                try:
                    yield session
                    session.commit()
                    conn.commit()
                except BaseException:
                    session.rollback()
                    conn.rollback()
                    raise

    def migrate(self) -> None:
        """Bring the schema to the newest revision; several processes may call this at once."""
        if self.is_sqlite:
            lock_path = Path(self.url.database or "collector").with_suffix(".migrate-lock")
            with open(lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._upgrade()
        else:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATE_LOCK})
                conn.commit()
                try:
                    self._upgrade()
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATE_LOCK})
                    conn.commit()

    def _upgrade(self) -> None:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.connect() as conn:
            if self.is_sqlite:
                # SQLite changes a table by copying it (Alembic's batch mode), which foreign
                # keys would refuse; the pragma only takes effect outside a transaction, so it
                # is set on the driver connection before SQLAlchemy begins one.
                conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
            try:
                with conn.begin():
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
                    if self.is_sqlite:
                        broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                        if broken:
                            raise RuntimeError(f"migration left rows with broken references: {broken[:5]}")
            finally:
                if self.is_sqlite:
                    conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_transactions(engine: Engine) -> None:
    """Let SQLAlchemy, not pysqlite, emit BEGIN, so that BEGIN IMMEDIATE is possible.

    This is SQLAlchemy's documented recipe for SQLite transactions (pysqlite's own handling
    defers BEGIN and breaks SAVEPOINT); WAL lets readers go on while one writer writes.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT * 1000}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql(conn.info.pop("begin", "BEGIN"))
