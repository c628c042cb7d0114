"""The in-memory near-duplicate index answers exactly what the SQL band index answers, on
random and clustered hashes, across two apps on one database (two workers), through a
background load, a rebuild and a deletion."""

from __future__ import annotations

import random
import time

import pytest
from sqlalchemy import delete, insert, select

from collector.intake import dedup
from collector.platform.models import Photo, User, utcnow
from collector.platform.storage import photo_key, thumb_key

pytestmark = pytest.mark.filterwarnings("error")


def flip(h: int, bits: int, rnd: random.Random) -> int:
    for b in rnd.sample(range(256), bits):
        h ^= 1 << b
    return h


def hx(v: int) -> str:
    return f"{v:064x}"


def clustered(n: int, rnd: random.Random) -> list[str]:
    """Hashes like real photos: groups of near copies (bursts, re-encodes) at 0-45 bits from a
    centre, and centres that share bands with each other (similar scenes)."""
    out: list[str] = []
    centres = [rnd.getrandbits(256) for _ in range(max(1, n // 20))]
    for c in range(len(centres)):
        if c and rnd.random() < 0.5:  # similar scene: half the bands copied from another centre
            other = centres[rnd.randrange(c)]
            mask = int("".join(rnd.choice(("ffff", "0000")) for _ in range(16)), 16)
            centres[c] = (other & mask) | (centres[c] & ~mask & ((1 << 256) - 1))
    while len(out) < n:
        out.append(hx(flip(rnd.choice(centres), rnd.randrange(0, 46), rnd)))
    return out


def seed(db, hashes: list[str], user_id: int, start_id: int | None = None) -> list[int]:
    """Photo rows with these hashes, inserted the way intake does (under the write lock)."""
    ids = []
    with db.write_transaction() as tx:
        first = start_id or (tx.scalar(select(Photo.id).order_by(Photo.id.desc()).limit(1)) or 0) + 1
        rows = []
        for i, h in enumerate(hashes):
            pid, sha = first + i, f"{first + i:064x}"
            ids.append(pid)
            rows.append(dict(id=pid, user_id=user_id, sha256=sha, storage_key=photo_key(sha, "jpg"), thumb_key=thumb_key(sha),
                             format="JPEG", size_bytes=1, width=1000, height=800, orientation=1, pdq=h, pdq_quality=100,
                             sharpness=1.0, brightness=100.0, contrast=50.0, original_filename="x.jpg"))
        tx.execute(insert(Photo), rows)
        for pid, h in zip(ids, hashes, strict=True):
            dedup.add_bands(tx, pid, user_id, h)
    return ids


def queries(stored: list[str], rnd: random.Random, n: int) -> list[list[str]]:
    """New photos, near copies at 0-40 bits, and turned copies (a near variant among 8)."""
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append([hx(rnd.getrandbits(256)) for _ in range(8)])
        elif kind == 1:
            out.append([hx(flip(int(rnd.choice(stored), 16), rnd.randrange(0, 41), rnd))]
                       + [hx(rnd.getrandbits(256)) for _ in range(7)])
        else:
            near = hx(flip(int(rnd.choice(stored), 16), rnd.randrange(0, 20), rnd))
            others = [hx(rnd.getrandbits(256)) for _ in range(7)]
            others.insert(rnd.randrange(1, 8), near)
            out.append(others[:8])
    return out


def user(db, email: str) -> int:
    with db.write_transaction(lock=False) as tx:
        tx.execute(insert(User).values(email=email, name="x", password_hash="x", licence="CC BY 4.0", consented_at=utcnow()))
        return tx.scalar(select(User.id).where(User.email == email))


def same_answers(db, qs: list[list[str]]) -> int:
    """Compare memory and SQL on every query; returns how many matched something."""
    found = 0
    with db.Session() as session:
        for variants in qs:
            mem = dedup.nearest(session, variants, method="memory")
            ref = dedup.sql_nearest(session, variants)
            assert mem == ref, variants
            found += ref is not None
    return found


@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_memory_index_equals_sql_lookup(app, kind):
    db = app.extensions["collector"].db
    rnd = random.Random(5 if kind == "random" else 6)
    uid = user(db, "a@example.com")
    if kind == "random":
        stored = [hx(rnd.getrandbits(256)) for _ in range(3000)]
    else:
        stored = clustered(3000, rnd)
    seed(db, stored, uid)
    found = same_answers(db, queries(stored, rnd, 300))
    assert 80 < found < 300  # both hits and misses were compared
    assert dedup.index_for(db.engine).ready


def test_two_workers_on_one_database_catch_up(make_app):
    """Two apps = two processes' indexes: each sees what the other committed, at once."""
    a, b = make_app(), make_app()
    da, dbb = a.extensions["collector"].db, b.extensions["collector"].db
    assert dedup.index_for(da.engine) is not dedup.index_for(dbb.engine)
    rnd = random.Random(9)
    ua, ub = user(da, "a@example.com"), user(dbb, "b@example.com")
    first = clustered(500, rnd)
    seed(da, first, ua)
    same_answers(da, queries(first, rnd, 30))
    same_answers(dbb, queries(first, rnd, 30))  # b loads what a wrote
    second = clustered(500, rnd)
    seed(dbb, second, ub)
    # a's index was loaded before b wrote: the lookup under the write lock catches up.
    target = second[17]
    with da.write_transaction() as tx:
        match = dedup.nearest(tx, [target] * 8, method="memory")
        assert match == dedup.sql_nearest(tx, [target] * 8)
        assert match.distance == 0 and match.user_id in (ua, ub)
    same_answers(da, queries(first + second, rnd, 60))


def test_background_load_answers_from_the_database_meanwhile(app, monkeypatch):
    db = app.extensions["collector"].db
    rnd = random.Random(3)
    stored = clustered(800, rnd)
    seed(db, stored, user(db, "a@example.com"))
    monkeypatch.setattr(dedup.NearIndex, "SYNC_LOAD_ROWS", 100)
    monkeypatch.setattr(dedup.NearIndex, "LOAD_CHUNK", 128)  # several chunks
    index = dedup.index_for(db.engine)
    qs = queries(stored, rnd, 30)
    same_answers(db, qs[:1])  # starts the load in the background; the database answers
    deadline = time.monotonic() + 60
    while not index.ready and time.monotonic() < deadline:
        time.sleep(0.05)
    assert index.ready and index.n == 800 and index.base == 800
    same_answers(db, qs)


def test_rebuild_folds_recent_rows_into_the_band_index(app):
    db = app.extensions["collector"].db
    rnd = random.Random(4)
    uid = user(db, "a@example.com")
    stored = clustered(300, rnd)
    seed(db, stored, uid)
    index = dedup.index_for(db.engine)
    same_answers(db, queries(stored, rnd, 10))
    assert index.base == 300
    more = clustered(4500, rnd)
    seed(db, more, uid)
    same_answers(db, queries(stored + more, rnd, 30))  # catches up: 4,500 recent rows, rebuild starts
    deadline = time.monotonic() + 60
    while (index.rebuilding or index.base < 4800) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert index.base == 4800 and not index.recent
    same_answers(db, queries(stored + more, rnd, 60))


def test_deleted_photo_is_not_returned(app):
    db = app.extensions["collector"].db
    rnd = random.Random(8)
    uid = user(db, "a@example.com")
    base = rnd.getrandbits(256)
    near, nearer = hx(flip(base, 10, rnd)), hx(flip(base, 3, rnd))
    ids = seed(db, [near, nearer], uid)
    with db.Session() as session:
        assert dedup.nearest(session, [hx(base)] * 8, method="memory").photo_id == ids[1]
    with db.write_transaction() as tx:  # the photo goes, its hash rows with it (cascade)
        tx.execute(delete(dedup.PhotoHash).where(dedup.PhotoHash.photo_id == ids[1]))
        tx.execute(delete(dedup.HashBand).where(dedup.HashBand.photo_id == ids[1]))
        tx.execute(delete(Photo).where(Photo.id == ids[1]))
    with db.Session() as session:
        mem = dedup.nearest(session, [hx(base)] * 8, method="memory")
        assert mem == dedup.sql_nearest(session, [hx(base)] * 8)
        assert mem.photo_id == ids[0] and mem.distance == 10


def test_late_commit_below_the_last_id_is_found(app):
    """An id committed after a higher one (a writer that bypassed the lock) is read again."""
    db = app.extensions["collector"].db
    rnd = random.Random(12)
    uid = user(db, "a@example.com")
    seed(db, [hx(rnd.getrandbits(256)) for _ in range(5)], uid)
    with db.Session() as session:
        dedup.nearest(session, [hx(rnd.getrandbits(256))] * 8, method="memory")
    seed(db, [hx(rnd.getrandbits(256))], uid, start_id=10)  # 6..9 not there yet
    with db.Session() as session:
        dedup.nearest(session, [hx(rnd.getrandbits(256))] * 8, method="memory")
    late = hx(rnd.getrandbits(256))
    seed(db, [late], uid, start_id=7)
    with db.Session() as session:
        match = dedup.nearest(session, [late] * 8, method="memory")
    assert match is not None and match.photo_id == 7 and match.distance == 0


def test_pairs_within_finds_every_close_pair():
    """Export's split grouping: the vectorised multi-index search equals comparing all pairs."""
    rnd = random.Random(21)
    hashes = clustered(600, rnd) + [hx(rnd.getrandbits(256)) for _ in range(200)]
    ints = [int(h, 16) for h in hashes]
    brute = {(i, j) for i in range(len(ints)) for j in range(i + 1, len(ints)) if (ints[i] ^ ints[j]).bit_count() <= 31}
    assert len(brute) > 50
    assert set(dedup.pairs_within(hashes)) == brute
    assert dedup.pairs_within(hashes[:1]) == []
