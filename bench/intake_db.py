"""The database work of one accepted upload: intake's own calls next to the ORM unit of work
they replaced, in the same run, on SQLite and PostgreSQL.

    python bench/intake_db.py [--uploads 300] [--stored 20000] [--postgres URL | --no-postgres]

Two sequences run against the same database (``--stored`` photos already in it), with the
same in-memory near-duplicate index, for ``--uploads`` new photos of one contributor each:

  today         intake/pipeline.py's own calls for an accepted photo: ``known`` (one query),
                the near lookup in a second session, then under the write lock ``decide``
                (one query + the near lookup's catch-up) and ``record_photo`` (burst update,
                photo ``INSERT ... RETURNING id``, hash, credit, hour), all as statements on
                the tables (one statement of CTEs on PostgreSQL);
  ORM (before)  the same answers through the ORM as intake wrote them before: a ``Photo``
                object added and flushed, ORM-enabled updates for the burst and the credit.

Printed per upload (median, p95): CPU ms of this process, wall ms, the write lock's hold time
(the database layer's ``lock_seconds``: from taking the lock to the commit returning), and the
statements each sequence sends.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import event, insert, update  # noqa: E402

from collector import create_app  # noqa: E402
from collector.intake import dedup  # noqa: E402
from collector.intake.pipeline import record_photo  # noqa: E402
from collector.organisers import reports  # noqa: E402
from collector.platform.models import Photo, User, utcnow  # noqa: E402
from collector.web import accounts  # noqa: E402
from tests.scratch_db import scratch_database  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from dedup_lookup import hexes, random_words  # noqa: E402


def photo_values(user_id: int, sha: str, pdq: str, when: dt.datetime) -> dict:
    return dict(user_id=user_id, sha256=sha, storage_key=f"originals/{sha}.jpg", thumb_key=f"thumbs/{sha}.jpg", format="JPEG",
                size_bytes=3_000_000, width=4032, height=3024, orientation=1, captured_at=when, camera_make="Apple",
                camera_model="iPhone", pdq=pdq, pdq_quality=100, sharpness=100.0, brightness=120.0, contrast=50.0,
                original_filename="IMG.jpg")


def today(svc, user_id: int, sha: str, variants: list[str], when: dt.datetime) -> float:
    """Intake's own calls for an accepted photo; returns the lock's hold time."""
    intake = svc.intake
    assert intake.known(user_id, sha) is None
    with svc.db.Session() as session:
        dedup.nearest(session, variants)
    with svc.db.write_transaction() as tx:
        assert intake.decide(tx, user_id, sha, variants, {}).verdict is None
        record_photo(tx, dict(photo_values(user_id, sha, variants[0], when), created_at=utcnow()))
    return tx.info["lock_seconds"]


def orm_before(svc, user_id: int, sha: str, variants: list[str], when: dt.datetime) -> float:
    """The same answers through the ORM, as intake wrote them before ``record_photo``."""
    intake = svc.intake
    assert intake.known(user_id, sha) is None
    with svc.db.Session() as session:
        dedup.nearest(session, variants)
    with svc.db.write_transaction() as tx:
        assert intake.decide(tx, user_id, sha, variants, {}).verdict is None
        now = utcnow()
        photo = Photo(**photo_values(user_id, sha, variants[0], when), created_at=now)
        window = dt.timedelta(seconds=2)
        photo.burst = bool(tx.execute(update(Photo).where(Photo.user_id == user_id, Photo.captured_at.between(when - window, when + window))
                                      .values(burst=True)).rowcount)
        tx.add(photo)
        tx.flush()
        tx.execute(insert(dedup.PhotoHash), [{"photo_id": photo.id, "user_id": user_id, "pdq": variants[0]}])
        tx.execute(update(User).where(User.id == user_id).values(accepted_count=User.accepted_count + 1, last_upload_at=now)
                   .returning(User.accepted_count)).scalar_one()
        reports.bump_hour(tx, now, +1)
    return tx.info["lock_seconds"]


def seed(svc, stored: int) -> int:
    user = accounts.create_user(svc.db, "seed@example.com", "Seed", "bench password 1", "CC BY 4.0")
    hs = hexes(random_words(stored, 3))
    with svc.db.write_transaction() as tx:
        now = utcnow()
        for lo in range(0, stored, 5000):
            ids = tx.execute(insert(Photo).returning(Photo.id),
                             [dict(photo_values(user.id, f"{i:064x}", h, None), created_at=now) for i, h in enumerate(hs[lo : lo + 5000], lo)]).scalars().all()
            for pid, h in zip(ids, hs[lo : lo + 5000], strict=True):
                dedup.add_hash(tx, pid, user.id, h)
    return user.id


def run(name: str, settings: dict, uploads: int, stored: int) -> None:
    app = create_app(settings)
    app.extensions["collector"].db.migrate()  # a new database: create_app never migrates
    svc = app.extensions["collector"]
    try:
        seed(svc, stored)
        statements = {"n": 0}
        event.listen(svc.db.engine, "before_cursor_execute", lambda *a: statements.__setitem__("n", statements["n"] + 1))
        rnd = random.Random(5)
        results = {}
        words = random_words(uploads * 6 * 8, 17)
        all_variants = hexes(words)
        for k, (label, fn) in enumerate((("today", today), ("ORM (before)", orm_before)) * 2):
            uid = accounts.create_user(svc.db, f"u{k}@example.com", "U", "bench password 1", "CC BY 4.0").id
            cpu, wall, lock, stmts = [], [], [], []
            for i in range(uploads):
                j = k * uploads + i
                variants = all_variants[j * 8 : j * 8 + 8]
                sha = uuid.uuid4().hex * 2
                when = dt.datetime(2026, 11, 20, 9) + dt.timedelta(seconds=10 * i + rnd.random())
                statements["n"] = 0
                c, w = time.process_time(), time.perf_counter()
                lock.append(fn(svc, uid, sha, variants, when))
                cpu.append(time.process_time() - c)
                wall.append(time.perf_counter() - w)
                stmts.append(statements["n"])
            if k >= 2:  # the first pass of each warms caches
                results[label] = (cpu, wall, lock, stmts)
        print(f"\n== {name}, {stored:,} photos stored, {uploads} uploads each (medians; p95 in brackets)")
        for label, (cpu, wall, lock, stmts) in results.items():
            print(f"  {label:<12} CPU {ms(cpu)}  wall {ms(wall)}  lock held {ms(lock)}  statements {statistics.median(stmts):.0f}")
        t = results["today"]
        r = results["ORM (before)"]
        print(f"  today minus ORM (before), per upload: CPU {1000 * (statistics.median(t[0]) - statistics.median(r[0])):.2f} ms, "
              f"wall {1000 * (statistics.median(t[1]) - statistics.median(r[1])):.2f} ms, "
              f"lock {1000 * (statistics.median(t[2]) - statistics.median(r[2])):.2f} ms")
    finally:
        svc.db.dispose()


def ms(samples: list[float]) -> str:
    s = sorted(samples)
    return f"{statistics.median(s) * 1000:6.2f} [{s[int(len(s) * 0.95)] * 1000:6.2f}] ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=300)
    parser.add_argument("--stored", type=int, default=20_000)
    parser.add_argument("--postgres", default=os.environ.get("COLLECTOR_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/postgres"))
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run("SQLite", {"DATA_DIR": tmp, "SECRET_KEY": "bench", "MAX_PHOTOS": 10**6}, args.uploads, args.stored)
    if not args.no_postgres:
        with scratch_database(args.postgres, "collector_bench") as url, tempfile.TemporaryDirectory() as tmp:
            run("PostgreSQL", {"DATA_DIR": tmp, "DATABASE_URL": url, "SECRET_KEY": "bench", "MAX_PHOTOS": 10**6}, args.uploads, args.stored)


if __name__ == "__main__":
    main()
