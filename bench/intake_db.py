"""The database work of one accepted upload: today's intake calls next to the cut-down
sequence recommended for the intake rewrite, in the same run, on SQLite and PostgreSQL.

    python bench/intake_db.py [--uploads 300] [--stored 20000] [--postgres URL | --no-postgres]

Three sequences run against the same database (``--stored`` photos already in it), with the
same in-memory near-duplicate index, for ``--uploads`` new photos of one contributor each:

  today         the calls intake/pipeline.py makes for an accepted photo: ``known`` (one query), the
                near lookup in a second session, then under the write lock ``decide`` (one
                query + the near lookup's catch-up), the burst update, the ORM insert and
                flush, hash + 16 band rows, and ``credits.adjust``;
  Core insert   the same with ``INSERT ... RETURNING id`` instead of the ORM unit of work;
  no band rows  also without the 16 ``photo_hash_bands`` rows, which only the SQL lookup
                (``COLLECTOR_NEAR_INDEX=sql``, or a fresh process still loading) reads.

Printed per upload (median, p95): CPU ms of this process, wall ms, and wall ms with the write
lock held; the statements each sequence sends. The bench copies intake's calls as of this
commit: it measures the advice, it is not a test of intake.
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

from sqlalchemy import event, insert  # noqa: E402

from collector import create_app  # noqa: E402
from collector.intake import credits, dedup  # noqa: E402
from collector.intake.pipeline import mark_burst  # noqa: E402
from collector.platform.models import Photo, utcnow  # noqa: E402
from collector.web import accounts  # noqa: E402
from tests.scratch_db import scratch_database  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from dedup_lookup import hexes, random_words  # noqa: E402


def photo_values(user_id: int, sha: str, pdq: str, when: dt.datetime) -> dict:
    return dict(user_id=user_id, sha256=sha, storage_key=f"originals/{sha}.jpg", thumb_key=f"thumbs/{sha}.jpg", format="JPEG",
                size_bytes=3_000_000, width=4032, height=3024, orientation=1, captured_at=when, camera_make="Apple",
                camera_model="iPhone", pdq=pdq, pdq_quality=100, sharpness=100.0, brightness=120.0, contrast=50.0,
                original_filename="IMG.jpg")


def today(svc, user_id: int, sha: str, variants: list[str], when: dt.datetime, clock: dict) -> None:
    """The calls intake.py makes for an accepted photo (as of this commit)."""
    intake = svc.intake
    assert intake.known(user_id, sha) is None
    with svc.db.Session() as session:
        dedup.nearest(session, variants)
    t = time.perf_counter()
    with svc.db.write_transaction() as tx:
        assert intake.decide(tx, user_id, sha, variants, {}).verdict is None
        now = utcnow()
        photo = Photo(**photo_values(user_id, sha, variants[0], when), created_at=now)
        photo.burst = mark_burst(tx, user_id, when)
        tx.add(photo)
        tx.flush()
        dedup.add_bands(tx, photo.id, user_id, variants[0])
        credits.adjust(tx, user_id, +1, now, new_upload=True)
    clock["lock"] = time.perf_counter() - t


def recommended(svc, user_id: int, sha: str, variants: list[str], when: dt.datetime, clock: dict, bands: bool = True) -> None:
    """The same answers with a Core INSERT ... RETURNING id instead of the ORM unit of work
    (and, with ``bands=False``, without the 16 band rows the in-memory index does not read)."""
    intake = svc.intake
    assert intake.known(user_id, sha) is None
    with svc.db.Session() as session:
        dedup.nearest(session, variants)
    t = time.perf_counter()
    with svc.db.write_transaction() as tx:
        assert intake.decide(tx, user_id, sha, variants, {}).verdict is None
        now = utcnow()
        burst = mark_burst(tx, user_id, when)
        photo_id = tx.execute(insert(Photo).values(**photo_values(user_id, sha, variants[0], when), created_at=now, burst=burst,
                                                   status="accepted").returning(Photo.id)).scalar_one()
        if bands:
            dedup.add_bands(tx, photo_id, user_id, variants[0])
        else:
            tx.execute(insert(dedup.PhotoHash), [{"photo_id": photo_id, "user_id": user_id, "pdq": variants[0]}])
        credits.adjust(tx, user_id, +1, now, new_upload=True)
    clock["lock"] = time.perf_counter() - t


def no_bands(svc, user_id, sha, variants, when, clock) -> None:
    recommended(svc, user_id, sha, variants, when, clock, bands=False)


def facts_cost(svc, user_id: int, n: int = 300) -> tuple[float, float]:
    """CPU ms of intake's ``_facts`` (its statement rebuilt on every call) and of the same
    statement built once with bound parameters (SQLAlchemy then reuses its compiled form)."""
    from sqlalchemy import bindparam, select

    from collector.intake.pipeline import BYTES_ONLY_CODES, _facts
    from collector.platform.models import UploadRejection, User

    sha, uid = bindparam("sha"), bindparam("uid")

    def photo(col):
        return select(col).where(Photo.sha256 == sha).scalar_subquery()

    def refusal(col):
        return select(col).where(UploadRejection.sha256 == sha, UploadRejection.code.in_(BYTES_ONLY_CODES)).limit(1).scalar_subquery()

    once = select(photo(Photo.id).label("photo_id"), photo(Photo.user_id).label("owner_id"), photo(Photo.status).label("status"),
                  refusal(UploadRejection.code).label("refused_code"), refusal(UploadRejection.message).label("refused_message"),
                  select(User.accepted_count).where(User.id == uid).scalar_subquery().label("accepted"))
    out = []
    with svc.db.Session() as session:
        for fn in (lambda i: _facts(session, user_id, f"{i:064x}"), lambda i: session.execute(once, {"sha": f"{i:064x}", "uid": user_id}).one()):
            for _ in range(2):  # the first pass warms SQLAlchemy's caches
                times = []
                for i in range(n):
                    c = time.process_time()
                    fn(i)
                    times.append(time.process_time() - c)
            out.append(statistics.median(times) * 1000)
    return out[0], out[1]


def seed(svc, stored: int) -> int:
    user = accounts.create_user(svc.db, "seed@example.com", "Seed", "bench password 1", "CC BY 4.0")
    hs = hexes(random_words(stored, 3))
    with svc.db.write_transaction() as tx:
        now = utcnow()
        for lo in range(0, stored, 5000):
            ids = tx.execute(insert(Photo).returning(Photo.id),
                             [dict(photo_values(user.id, f"{i:064x}", h, None), created_at=now) for i, h in enumerate(hs[lo : lo + 5000], lo)]).scalars().all()
            for pid, h in zip(ids, hs[lo : lo + 5000], strict=True):
                dedup.add_bands(tx, pid, user.id, h)
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
        for k, (label, fn) in enumerate((("today", today), ("Core insert", recommended), ("no band rows", no_bands)) * 2):
            uid = accounts.create_user(svc.db, f"u{k}@example.com", "U", "bench password 1", "CC BY 4.0").id
            cpu, wall, lock, stmts = [], [], [], []
            for i in range(uploads):
                j = k * uploads + i
                variants = all_variants[j * 8 : j * 8 + 8]
                sha = uuid.uuid4().hex * 2
                when = dt.datetime(2026, 11, 20, 9) + dt.timedelta(seconds=10 * i + rnd.random())
                clock: dict = {}
                statements["n"] = 0
                c, w = time.process_time(), time.perf_counter()
                fn(svc, uid, sha, variants, when, clock)
                cpu.append(time.process_time() - c)
                wall.append(time.perf_counter() - w)
                lock.append(clock["lock"])
                stmts.append(statements["n"])
            if k >= 3:  # the first pass of each warms caches
                results[label] = (cpu, wall, lock, stmts)
        print(f"\n== {name}, {stored:,} photos stored, {uploads} uploads each (medians; p95 in brackets)")
        for label, (cpu, wall, lock, stmts) in results.items():
            print(f"  {label:<12} CPU {ms(cpu)}  wall {ms(wall)}  lock held {ms(lock)}  statements {statistics.median(stmts):.0f}")
        rebuilt, once = facts_cost(svc, uid)
        print(f"  intake._facts: {rebuilt:.2f} ms CPU with its statement rebuilt per call, {once:.2f} ms built once"
              f" (bound parameters): {rebuilt - once:.2f} ms saved per call, 2-3 calls per upload")
        t = results["today"]
        for label in ("Core insert", "no band rows"):
            r = results[label]
            print(f"  {label} saves per upload: CPU {1000 * (statistics.median(t[0]) - statistics.median(r[0])):.2f} ms, "
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
