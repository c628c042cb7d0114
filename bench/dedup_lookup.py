"""Near-duplicate lookup among N stored photos (default 1,000,000) on SQLite and PostgreSQL:
the in-process index (``dedup.NearIndex``) next to comparing every stored hash, in the same run.

    python bench/dedup_lookup.py [--rows N] [--queries Q] [--scans S] [--data random,clustered]
                                 [--postgres URL | --no-postgres] [--no-sqlite] [--json]

For each database and each kind of data, seeds N photo rows and their hashes into a fresh
database (a SQLite file; a PostgreSQL database of its own, dropped afterwards) with bulk
inserts / COPY, loads the index the way a fresh process does, then times, on the same queries:

- ``index``: ``dedup.nearest`` (8 dihedral variants: 128 exact band keys, then 272 one-bit
  neighbours of the picture's hash, then the full distance of every candidate), including its
  catch-up read (``photo_id > last seen``) before every lookup; the index's load time and memory;
- ``scan`` (the baseline): ``dedup.scan``, the same answer by comparing every stored hash in
  memory with numpy (S queries of each kind: it is slow); every scan's answer must equal the
  index's, or the bench fails;
- under the write lock: uploads that each run intake's own locked transaction
  (``Intake.decide``: exact, refused, cap and near, catching up with the previous upload's
  row; ``record_photo``: photo, burst check, hash, credit, hour; commit): ``decide``'s time,
  the lock-held time (from taking the lock to the commit returning; the commit does not wait
  for the disk under the lock) and the time until the commit is durable.

Data: ``random`` 256-bit hashes, or ``clustered`` like real photos: scenes of ~50 photos,
each 28-44 bits from its scene's centre (so ~60-90 apart, like different cars shot by one
fixed camera), half the scenes sharing half their bands with another scene (similar places).
Queries: ``new photo`` (a new member of a stored scene, or random: no match), ``near copy``
(a stored hash with 12 bits flipped, the other 7 variants random: a match).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from collector.intake import dedup  # noqa: E402
from collector.intake.pipeline import Intake, record_photo  # noqa: E402
from collector.platform.config import load_settings  # noqa: E402
from collector.platform.db import Database  # noqa: E402
from collector.platform.models import utcnow  # noqa: E402
from tests.scratch_db import scratch_database  # noqa: E402

CHUNK = 250_000


def random_words(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64, size=(n, 4), dtype=np.uint64, endpoint=False)


def flip_words(words: np.ndarray, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """Each row with a random number of distinct bits in [lo, hi] flipped."""
    out = words.copy()
    for start in range(0, len(words), 20_000):
        part = out[start : start + 20_000]
        n = len(part)
        ks = rng.integers(lo, hi + 1, size=n)
        bits = np.argsort(rng.random((n, 256)), axis=1)[:, :hi]  # distinct positions per row
        for k in range(hi):
            sel = np.flatnonzero(ks > k)
            pos = bits[sel, k]
            part[sel, pos // 64] ^= np.left_shift(np.uint64(1), (pos % 64).astype(np.uint64))
    return out


def clustered_words(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scenes = random_words(max(1, n // 50), seed + 1)
    share = np.flatnonzero(rng.random(len(scenes)) < 0.5)
    share = share[share > 0]
    partner = (rng.random(len(share)) * share).astype(np.int64)  # an earlier scene
    mask16 = rng.integers(0, 2, size=(len(share), 16)).astype(bool)  # which bands to copy
    for i in range(16):
        w, shift = i // 4, np.uint64(48 - 16 * (i % 4))
        m = mask16[:, i]
        band = np.uint64(0xFFFF) << shift
        s, p = share[m], partner[m]
        scenes[s, w] = (scenes[s, w] & ~band) | (scenes[p, w] & band)
    out = np.empty((n, 4), dtype=np.uint64)
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        centres = scenes[rng.integers(0, len(scenes), size=hi - lo)]
        out[lo:hi] = flip_words(centres, 28, 44, rng)
    return out, scenes


def hexes(words: np.ndarray) -> list[str]:
    s = words.astype(">u8").tobytes().hex()
    return [s[i : i + 64] for i in range(0, len(s), 64)]


def seed_sqlite(db: Database, words: np.ndarray) -> None:
    n = len(words)
    raw = db.engine.raw_connection()
    cur = raw.cursor()
    cur.execute("PRAGMA synchronous=OFF")
    cur.execute("BEGIN")
    cur.execute("INSERT INTO users (id, email, name, password_hash, is_organiser, licence, consented_at, created_at, accepted_count) "
                "VALUES (1, 'bench@example.com', 'Bench', 'x', 0, 'CC BY 4.0', '2026-01-01', '2026-01-01', 0)")
    for lo in range(0, n, CHUNK):
        hs = hexes(words[lo : lo + CHUNK])
        ids = range(lo + 1, lo + 1 + len(hs))
        cur.executemany(
            "INSERT INTO photos (id, user_id, sha256, storage_key, thumb_key, format, size_bytes, width, height, orientation, "
            "pdq, pdq_quality, sharpness, brightness, contrast, original_filename, status, burst, created_at) "
            "VALUES (?, 1, printf('%064x', ?), 'o', 't', 'JPEG', 1, 1000, 800, 1, ?, 100, 100, 100, 50, 'x.jpg', 'accepted', 0, '2026-01-01')",
            [(i, i, h) for i, h in zip(ids, hs, strict=True)],
        )
        cur.executemany("INSERT INTO photo_hashes (photo_id, user_id, pdq) VALUES (?, 1, ?)", zip(ids, hs, strict=True))
    cur.execute("COMMIT")
    cur.execute("ANALYZE")
    cur.execute("PRAGMA synchronous=NORMAL")
    raw.close()


def seed_postgres(db: Database, words: np.ndarray) -> None:
    n = len(words)
    raw = db.engine.raw_connection()
    conn = raw.driver_connection
    with conn.cursor() as cur:
        cur.execute("INSERT INTO users (id, email, name, password_hash, is_organiser, licence, consented_at, created_at, accepted_count) "
                    "VALUES (1, 'bench@example.com', 'Bench', 'x', false, 'CC BY 4.0', now(), now(), 0)")
        # Foreign keys are checked row by row during COPY; they are added back, checked once, after.
        fks = cur.execute("SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
                          "WHERE contype = 'f' AND conrelid::regclass::text = 'photo_hashes'").fetchall()
        for table, name, _ in fks:
            cur.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        with cur.copy("COPY photos (id, user_id, sha256, storage_key, thumb_key, format, size_bytes, width, height, orientation, "
                      "pdq, pdq_quality, sharpness, brightness, contrast, original_filename, status, burst, created_at) FROM STDIN") as copy:
            for lo in range(0, n, CHUNK):
                hs = hexes(words[lo : lo + CHUNK])
                copy.write("".join(f"{lo + j + 1}\t1\t{lo + j + 1:064x}\to\tt\tJPEG\t1\t1000\t800\t1\t{h}\t100\t100\t100\t50\tx.jpg\taccepted\tf\t2026-01-01\n"
                                   for j, h in enumerate(hs)))
        with cur.copy("COPY photo_hashes (photo_id, user_id, pdq) FROM STDIN") as copy:
            for lo in range(0, n, CHUNK):
                hs = hexes(words[lo : lo + CHUNK])
                copy.write("".join(f"{lo + j + 1}\t1\t{h}\n" for j, h in enumerate(hs)))
        for table, name, definition in fks:
            cur.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
        cur.execute("SELECT setval('photos_id_seq', %s)", (n,))
    conn.commit()
    conn.autocommit = True
    with conn.cursor() as cur:
        for table in ("photos", "photo_hashes"):
            cur.execute(f"VACUUM ANALYZE {table}")
    raw.close()


def percentiles(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"p50": round(statistics.median(s) * 1000, 3), "p99": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, 3)}


def make_queries(words: np.ndarray, scenes, q: int, seed: int) -> dict[str, list[list[str]]]:
    rng = np.random.default_rng(seed)
    n = len(words)
    if scenes is None:
        new = random_words(q * 8, seed + 2)
    else:  # a new photo of a known scene, and 7 variants that are new photos of other scenes
        new = flip_words(scenes[rng.integers(0, len(scenes), size=q * 8)], 28, 44, rng)
    near = flip_words(words[rng.integers(0, n, size=q)], 12, 12, rng)
    newq = [hexes(new[i * 8 : i * 8 + 8]) for i in range(q)]
    nearq = [hexes(near[i : i + 1]) + newq[(i + 1) % q][1:] for i in range(q)]
    return {"new photo": newq, "near copy": nearq}


def time_lookups(db: Database, queries: list[list[str]], cpu: list[float] | None = None) -> tuple[list[float], list]:
    """Wall times of the index's lookups and their answers (and, into ``cpu``, this thread's
    CPU time for each: on a shared machine a lookup that is descheduled shows in the wall time
    only)."""
    times, answers = [], []
    with db.Session() as session:
        for variants in queries:
            c, start = time.thread_time(), time.perf_counter()
            answers.append(dedup.nearest(session, variants))
            times.append(time.perf_counter() - start)
            if cpu is not None:
                cpu.append(time.thread_time() - c)
            session.rollback()
    return times, answers


def time_scans(words: np.ndarray, queries: list[list[str]]) -> tuple[list[float], list]:
    """The baseline: every stored hash compared, in memory, for each query."""
    ids, users = np.arange(1, len(words) + 1, dtype=np.int64), np.ones(len(words), dtype=np.int64)
    times, answers = [], []
    for variants in queries:
        start = time.perf_counter()
        answers.append(dedup.scan(words, ids, users, variants))
        times.append(time.perf_counter() - start)
    return times, answers


def under_lock(db: Database, uploads: int, seed: int) -> dict:
    """Uploads as intake commits them, with intake's own code: take the lock, ``decide``
    (exact, refused, cap, then near: the catch-up read and the lookup), ``record_photo``
    (burst check, photo row, hash, credit, hour), commit. The lock-held time is the database
    layer's own (``lock_seconds``: from taking the lock to the commit returning)."""
    fresh = hexes(random_words(8 * uploads, seed))  # each upload's hash and its 7 turned variants
    intake = Intake(db, None, load_settings({}, {"MAX_PHOTOS": 10**9}), spool_dir=Path(tempfile.gettempdir()))
    decides, holds, walls = [], [], []
    taken = utcnow() - dt.timedelta(days=1)  # a minute apart: no burst (a burst is a few seconds)
    for i in range(uploads):
        sha = hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()
        variants = fresh[8 * i : 8 * i + 8]
        h = variants[0]
        t0 = time.perf_counter()
        with db.write_transaction() as tx:
            t1 = time.perf_counter()
            decision = intake.decide(tx, 1, sha, variants)
            decides.append(time.perf_counter() - t1)
            assert decision.verdict is None, decision.verdict
            record_photo(tx, dict(
                user_id=1, sha256=sha, storage_key=f"o/{sha}", thumb_key=f"t/{sha}", format="JPEG", size_bytes=2_500_000,
                width=4032, height=3024, orientation=1, captured_at=taken + dt.timedelta(minutes=i), camera_make="Apple", camera_model="iPhone 5",
                pdq=h, pdq_quality=100, sharpness=120.0, brightness=110.0, contrast=50.0, original_filename="x.jpg",
                created_at=utcnow(), nearest_distance=decision.near.distance if decision.near else None))
        holds.append(tx.info["lock_seconds"])
        walls.append(time.perf_counter() - t0)
    return {"lookup": percentiles(decides), "transaction": percentiles(holds), "durable": percentiles(walls)}


def run(name: str, db: Database, seed, kind: str, n: int, q: int, scans: int, say) -> dict:
    t, c = time.perf_counter(), time.process_time()
    if kind == "random":
        words, scenes = random_words(n, 7), None
    else:
        words, scenes = clustered_words(n, 7)
    seed(db, words)
    seeded, seed_cpu = time.perf_counter() - t, time.process_time() - c
    say(f"\n== {name}, {kind} hashes: seeded {n:,} photos in {seeded:.0f} s"
        f" ({seed_cpu:.0f} s CPU in this process; the database's own work is in the wall time)")
    out: dict = {"database": name, "data": kind, "rows": n, "seed_seconds": round(seeded, 1)}
    queries = make_queries(words, scenes, q, 11)

    index = dedup.index_for(db.engine)
    t = time.perf_counter()
    index.warm()
    out["index"] = {"load_seconds": round(time.perf_counter() - t, 2), "megabytes": round(index.stats()["bytes"] / 2**20, 1)}
    say(f"  index: loaded in {out['index']['load_seconds']:.1f} s, {out['index']['megabytes']:.0f} MB")

    time_lookups(db, queries["new photo"][:20])  # warm the caches
    for label, qs in queries.items():
        cpu: list[float] = []
        times, answers = time_lookups(db, qs, cpu)
        scan_times, scanned = time_scans(words, qs[:scans])
        if answers[:scans] != scanned:
            raise SystemExit(f"{name} {kind} {label}: the index and the full scan disagree")
        i, sc = percentiles(times), percentiles(scan_times)
        out.setdefault("index_lookup", {})[label] = {**i, "cpu": percentiles(cpu), "matched": sum(a is not None for a in answers), "queries": len(qs)}
        out.setdefault("scan", {})[label] = {**sc, "queries": len(scanned)}
        say(f"  {label:<10} index p50 {i['p50']:6.2f} p99 {i['p99']:6.2f} ms (CPU p50 {out['index_lookup'][label]['cpu']['p50']:.2f}"
            f" p99 {out['index_lookup'][label]['cpu']['p99']:.2f}) | scan p50 {sc['p50']:7.2f} p99 {sc['p99']:7.2f} ms"
            f" | {sc['p50'] / i['p50']:5.0f}x at p50 (matched {out['index_lookup'][label]['matched']} of {len(qs)};"
            f" the {len(scanned)} scans gave the same answers)")
    uploads = min(q, 200)
    under_lock(db, 20, 99)  # warm: the statements are built once per process
    out["under_lock"] = r = under_lock(db, uploads, 100)
    say(f"  under the write lock ({uploads} uploads): decide p50 {r['lookup']['p50']:6.2f} p99 {r['lookup']['p99']:6.2f} ms,"
        f" lock held p50 {r['transaction']['p50']:6.2f} p99 {r['transaction']['p99']:6.2f} ms"
        f" (until durable: p50 {r['durable']['p50']:6.2f} p99 {r['durable']['p99']:6.2f} ms)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--scans", type=int, default=30, help="baseline full scans of each kind (each ~0.1-0.5 s at 1M)")
    parser.add_argument("--data", default="random,clustered")
    parser.add_argument("--postgres", default=os.environ.get("COLLECTOR_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/postgres"),
                        help="an admin URL; the bench creates and drops a database of its own")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON document (the table goes to stderr)")
    args = parser.parse_args()
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    results = []
    for kind in args.data.split(","):
        if not args.no_sqlite:
            with tempfile.TemporaryDirectory() as tmp:
                db = Database(f"sqlite:///{tmp}/bench.sqlite3")
                db.migrate()
                results.append(run("SQLite", db, seed_sqlite, kind, args.rows, args.queries, args.scans, say))
                db.dispose()
        if not args.no_postgres:
            with scratch_database(args.postgres, "collector_bench") as url:
                db = Database(url)
                db.migrate()
                results.append(run("PostgreSQL", db, seed_postgres, kind, args.rows, args.queries, args.scans, say))
                db.dispose()
    if args.json:
        print(json.dumps({"benchmark": "dedup_lookup", "results": results}, indent=2))


if __name__ == "__main__":
    random.seed(0)
    main()
