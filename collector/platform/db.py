"""The database: one engine per app, a session per app context, the write lock, and migrations.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and write transactions that
must not race (intake) start with ``BEGIN IMMEDIATE``, so they queue for the write lock up front
instead of failing with "database is locked" halfway. PostgreSQL gets the same guarantee from a
transaction-level advisory lock. Either way the lock is released at commit or rollback.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, scoped_session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
INTAKE_LOCK = 0x504C4154  # advisory lock id for "near-duplicate check + insert" ("PLAT")
MIGRATE_LOCK = 0x504C4D47
BUSY_TIMEOUT = 5  # seconds SQLite waits for a lock
LOCK_WAIT = 5  # seconds a writer waits for the intake lock on PostgreSQL before giving up
WAL_CHECKPOINT_BYTES = 1000 * 4096  # SQLite's wal_autocheckpoint default: 1000 pages of 4 KiB


def server_threads(argv: list[str] | None = None, environ=None) -> int:
    """The request threads of this process: gunicorn's ``--threads`` (from its command line or
    ``GUNICORN_CMD_ARGS``), else 8 (gunicorn's gthread setting in the README)."""
    environ = os.environ if environ is None else environ
    args = list(sys.argv if argv is None else argv) + shlex.split(environ.get("GUNICORN_CMD_ARGS", ""))
    for i, arg in enumerate(args):
        value = None
        if arg == "--threads" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--threads="):
            value = arg.split("=", 1)[1]
        if value and value.isdigit() and int(value) > 0:
            return int(value)
    return 8


# Beyond one connection per request thread: the near-duplicate index's background load, and
# the CLI's own session next to its write transactions.
SPARE_CONNECTIONS = 2


class Database:
    def __init__(self, url: str, scopefunc=None, pool_size: int | None = None):
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        kwargs: dict = {"future": True}
        memory = self.is_sqlite and self.url.database in (None, "", ":memory:")
        if self.is_sqlite:
            if not memory:
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
            # A few seconds of waiting for the write lock, then "database is locked", which
            # web/errors.py answers with 503 and Retry-After instead of holding the request for a minute.
            kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT, "check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["connect_args"] = {"connect_timeout": 5}  # an unreachable server fails in seconds
        if not memory:
            # One connection per request thread plus spares; the overflow only matters for code
            # that still takes a second connection per thread (it is bounded, not unlimited).
            self.pool_size = pool_size or server_threads() + SPARE_CONNECTIONS
            kwargs.update(pool_size=self.pool_size, max_overflow=self.pool_size, pool_timeout=30)
        self.engine: Engine = create_engine(self.url, **kwargs)
        if self.is_sqlite:
            _sqlite_transactions(self.engine)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        # One session per app context (request, CLI command), removed at teardown.
        self.session = scoped_session(self.Session, scopefunc=scopefunc)

    def release(self) -> None:
        """Hand the request session's connection back to the pool, if it only read.

        Its read transaction ends (a commit with nothing to write); loaded objects stay usable
        (``expire_on_commit=False``) and the next query takes a connection again. Called before
        a write transaction and by views before ``intake.submit``, so a thread never holds one
        connection while it waits for another. Outside an app context there is nothing to do.
        """
        try:
            if not self.session.registry.has():
                return
        except RuntimeError:  # no app context: no request session
            return
        session = self.session()
        if session.in_transaction() and not (session.new or session.dirty or session.deleted):
            session.commit()

    @contextmanager
    def write_transaction(self, lock: bool = True) -> Iterator[Session]:
        """A session for one write transaction, committed when the block ends without error.

        SQLite takes its (single) write lock at BEGIN. On PostgreSQL, ``lock`` also takes the
        intake advisory lock, which serialises "look for duplicates, then insert" across workers.
        The request session's read transaction ends first (``release``).

        With ``lock``, the commit does not wait for the disk while the lock is held, and the
        block returns only once the commit is durable (``_begin`` and ``_after_locked``); the
        session's ``info["intake_lock"]`` says it holds the lock (so it sees every committed
        row), and ``info["lock_seconds"]`` then says how long the lock was held.
        """
        self.release()
        with self.engine.connect() as conn:
            with Session(bind=conn, expire_on_commit=False) as session:
                try:
                    locked_at = self._begin(conn, lock)
                    session.info["intake_lock"] = locked_at is not None  # it reads the newest rows
                    yield session
                    session.commit()
                    conn.commit()
                except BaseException:
                    session.rollback()
                    conn.rollback()
                    if lock and self.is_sqlite:
                        with contextlib.suppress(Exception):  # a broken connection is discarded anyway
                            _pragma(conn, "wal_autocheckpoint=1000")
                    raise
                if locked_at is not None:
                    session.info["lock_seconds"] = time.perf_counter() - locked_at
                    self._after_locked(conn)

    def _begin(self, conn, lock: bool) -> float | None:
        """BEGIN (and the lock): the moment the lock was taken, or None without it."""
        if self.is_sqlite:
            if lock:
                # The WAL checkpoint that SQLite runs after some commits happens after it has
                # released the write lock, but inside the commit call: this one runs it after.
                _pragma(conn, "wal_autocheckpoint=0")
            conn.info["begin"] = "BEGIN IMMEDIATE"
            conn.begin()
            return time.perf_counter() if lock else None
        conn.begin()
        if not lock:
            return None
        # A writer stuck holding the lock must not queue every upload behind it for ever:
        # after LOCK_WAIT seconds this fails (503) like a locked SQLite file.
        # The same bound then applies to any row lock the locked transaction waits for (a
        # review changing the same contributor's count), so the lock is never held for longer.
        conn.execute(text("SELECT set_config('lock_timeout', :wait, true)"), {"wait": f"{LOCK_WAIT}s"})
        # The commit releases the lock without waiting for its WAL to reach the disk (the
        # flush takes milliseconds here, longer than everything else under the lock);
        # _after_locked waits for it before anyone is told the photo is in. One round trip:
        # synchronous_commit only matters at the commit.
        conn.execute(text("SELECT pg_advisory_xact_lock(:k), set_config('synchronous_commit', 'off', true)"), {"k": INTAKE_LOCK})
        return time.perf_counter()

    def _after_locked(self, conn) -> None:
        """Once the lock is released. PostgreSQL: make the commit durable. A transaction that
        takes an id commits synchronously, and flushing its commit record flushes the WAL
        before it, the earlier commit's included (as any later synchronous commit by another
        writer would: a decision made after seeing the row is never durable without it).
        SQLite: the checkpoint its commit skipped, when the WAL has grown past SQLite's own
        threshold (1000 pages)."""
        if self.is_sqlite:
            _pragma(conn, "wal_autocheckpoint=1000")
            wal = Path(f"{self.url.database}-wal")
            if self.url.database and wal.exists() and wal.stat().st_size > WAL_CHECKPOINT_BYTES:
                _pragma(conn, "wal_checkpoint(PASSIVE)")
            return
        try:
            with conn.begin():
                conn.execute(text("SELECT txid_current()"))
        except DBAPIError as exc:
            raise CommitUnconfirmed(str(exc.orig or exc)) from exc

    def migrate(self) -> None:
        """Bring the schema to the newest revision; several processes may call this at once.

        Never implicit: ``flask --app app db upgrade`` (``make run`` runs it), gunicorn.conf.py
        before the workers start, and the tests' fixtures call it."""
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

    def revision(self) -> str | None:
        """The schema revision the database is at (None: never migrated). Reads one row."""
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def _upgrade(self) -> None:
        cfg = _alembic_config()
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


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@functools.cache
def head_revision() -> str | None:
    """The newest revision of collector/platform/migrations, from the files alone (read once per process)."""
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def upgrade(url: str) -> None:
    """Bring the database at ``url`` to the newest revision (gunicorn.conf.py, before the workers)."""
    db = Database(url, pool_size=1)
    try:
        db.migrate()
    finally:
        db.dispose()


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


class CommitUnconfirmed(Exception):
    """The locked transaction committed, but the database failed before saying it was on
    disk: its rows may or may not survive a crash, so nothing it wrote may be taken back, and
    the client is told to try again (a retry finds the photo, or uploads it anew)."""


def _pragma(conn, pragma: str) -> None:
    """A PRAGMA on the driver's connection, outside any transaction SQLAlchemy would begin."""
    conn.connection.driver_connection.execute(f"PRAGMA {pragma}")
