"""Near-duplicate lookup among N stored photos (default 1,000,000) on SQLite and PostgreSQL.

    python bench/dedup_lookup.py [--rows N] [--queries Q] [--postgres URL | --no-postgres]

Seeds N photo rows with random 256-bit PDQ hashes and their 16 index bands into a temporary
database (a fresh SQLite file; a fresh PostgreSQL database, dropped afterwards), then times
``dedup.nearest`` (the query intake runs: 8 dihedral variants x 272 band probes, then the full
distance check) for Q new photos (misses) and Q near copies (hits, 12 bits flipped), with one
variant for comparison, next to a full scan of every hash in the same database.
Random hashes share bands less often than real ones; expect real lookups to find more
candidates (see ../shared/research/dedup.md).
"""

from __future__ import annotations

import argparse
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

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from collector import dedup  # noqa: E402
from collector.db import Database  # noqa: E402

BATCH = 20_000


def rows(n: int, seed: int = 7):
    rnd = random.Random(seed)
    for i in range(1, n + 1):
        yield i, f"{rnd.getrandbits(256):064x}"


def seed_sqlite(db: Database, n: int) -> None:
    raw = db.engine.raw_connection()
    cur = raw.cursor()
    cur.execute("BEGIN")
    cur.execute("INSERT INTO users (id, email, name, password_hash, is_organiser, licence, consented_at, created_at, accepted_count) "
                "VALUES (1, 'bench@example.com', 'Bench', 'x', 0, 'CC BY 4.0', '2026-01-01', '2026-01-01', 0)")
    photos, bands, hashes = [], [], []
    for pid, h in rows(n):
        photos.append((pid, h, f"originals/{h}.jpg", f"thumbs/{h}.jpg", h))
        hashes.append((pid, h))
        bands.extend((k, pid) for k in dedup.band_keys(h))
        if len(photos) >= BATCH:
            _flush_sqlite(cur, photos, bands, hashes)
    _flush_sqlite(cur, photos, bands, hashes)
    cur.execute("COMMIT")
    cur.execute("ANALYZE")
    raw.close()


def _flush_sqlite(cur, photos, bands, hashes) -> None:
    cur.executemany(
        "INSERT INTO photos (id, user_id, sha256, storage_key, thumb_key, format, size_bytes, width, height, orientation, "
        "pdq, pdq_quality, sharpness, brightness, contrast, original_filename, status, created_at) "
        "VALUES (?, 1, ?, ?, ?, 'JPEG', 1, 1000, 800, 1, ?, 100, 100, 100, 50, 'x.jpg', 'accepted', '2026-01-01')",
        photos,
    )
    cur.executemany("INSERT INTO photo_hash_bands (key, photo_id) VALUES (?, ?)", bands)
    cur.executemany("INSERT INTO photo_hashes (photo_id, user_id, pdq) VALUES (?, 1, ?)", hashes)
    photos.clear()
    bands.clear()
    hashes.clear()


def seed_postgres(db: Database, n: int) -> None:
    raw = db.engine.raw_connection()
    conn = raw.driver_connection
    with conn.cursor() as cur:
        cur.execute("INSERT INTO users (id, email, name, password_hash, is_organiser, licence, consented_at, created_at, accepted_count) "
                    "VALUES (1, 'bench@example.com', 'Bench', 'x', false, 'CC BY 4.0', now(), now(), 0)")
        with cur.copy("COPY photos (id, user_id, sha256, storage_key, thumb_key, format, size_bytes, width, height, orientation, "
                      "pdq, pdq_quality, sharpness, brightness, contrast, original_filename, status, created_at) FROM STDIN") as copy:
            for pid, h in rows(n):
                copy.write_row((pid, 1, h, f"originals/{h}.jpg", f"thumbs/{h}.jpg", "JPEG", 1, 1000, 800, 1, h, 100, 100, 100, 50,
                                "x.jpg", "accepted", "2026-01-01"))
        with cur.copy("COPY photo_hashes (photo_id, user_id, pdq) FROM STDIN") as copy:
            for pid, h in rows(n):
                copy.write_row((pid, 1, h))
        with cur.copy("COPY photo_hash_bands (key, photo_id) FROM STDIN") as copy:
            for pid, h in rows(n):
                for k in dedup.band_keys(h):
                    copy.write_row((k, pid))
        cur.execute("SELECT setval('photos_id_seq', %s)", (n,))
    conn.commit()
    with conn.cursor() as cur:
        conn.autocommit = True
        cur.execute("VACUUM ANALYZE photos")
        cur.execute("VACUUM ANALYZE photo_hash_bands")
        cur.execute("VACUUM ANALYZE photo_hashes")
    raw.close()


def flip(h: str, bits: int, rnd: random.Random) -> str:
    v = int(h, 16)
    for b in rnd.sample(range(256), bits):
        v ^= 1 << b
    return f"{v:064x}"


def percentiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return statistics.median(s) * 1000, s[min(len(s) - 1, int(len(s) * 0.99))] * 1000


def time_lookups(db: Database, queries: list[list[str]]) -> tuple[list[float], int]:
    times, found = [], 0
    with db.Session() as session:
        for variants in queries:
            start = time.perf_counter()
            match = dedup.nearest(session, variants)
            times.append(time.perf_counter() - start)
            found += match is not None
            session.rollback()
    return times, found


def full_scan(db: Database, query: str) -> int:
    """The baseline: every stored hash compared with the query, in the database."""
    with db.engine.connect() as conn:
        if db.is_sqlite:
            conn.connection.driver_connection.create_function(
                "hamming", 2, lambda a, b: (int(a, 16) ^ int(b, 16)).bit_count(), deterministic=True
            )
            return conn.execute(text("SELECT min(hamming(pdq, :q)) FROM photos"), {"q": query}).scalar()
        return conn.execute(
            text("SELECT min(bit_count(('x' || pdq)::bit(256) # ('x' || :q)::bit(256))) FROM photos"), {"q": query}
        ).scalar()


def run(name: str, db: Database, seed, n: int, q: int) -> None:
    start = time.perf_counter()
    seed(db, n)
    print(f"\n== {name}: seeded {n:,} photos and {16 * n:,} band rows in {time.perf_counter() - start:.0f} s")
    rnd = random.Random(11)
    stored = [h for _, h in rows(min(n, 50_000))]
    misses8 = [[f"{rnd.getrandbits(256):064x}" for _ in range(8)] for _ in range(q)]
    hits8 = [[flip(rnd.choice(stored), 12, rnd)] + [f"{rnd.getrandbits(256):064x}" for _ in range(7)] for _ in range(q)]
    time_lookups(db, misses8[:20])  # warm the caches
    for label, queries in (("new photo, 8 variants", misses8), ("near copy, 8 variants", hits8),
                           ("new photo, 1 variant", [m[:1] for m in misses8])):
        times, found = time_lookups(db, queries)
        p50, p99 = percentiles(times)
        print(f"  index  {label:<22} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  ({found}/{len(queries)} matched)")
    scans = []
    for variants in misses8[:5]:
        t0 = time.perf_counter()
        full_scan(db, variants[0])
        scans.append(time.perf_counter() - t0)
    p50, _ = percentiles(scans)
    print(f"  full scan, 1 variant            p50 {p50:7.1f} ms  (index is {p50 / percentiles(time_lookups(db, misses8[:50])[0])[0]:.0f}x faster with 8 variants)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--postgres", default=os.environ.get("COLLECTOR_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/postgres"))
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    args = parser.parse_args()

    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            db = Database(f"sqlite:///{tmp}/bench.sqlite3")
            db.migrate()
            run("SQLite", db, seed_sqlite, args.rows, args.queries)
            db.dispose()
    if not args.no_postgres:
        name = f"collector_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            db = Database(make_url(args.postgres).set(database=name).render_as_string(hide_password=False))
            db.migrate()
            run("PostgreSQL", db, seed_postgres, args.rows, args.queries)
            db.dispose()
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
