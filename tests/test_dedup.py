"""The in-memory near-duplicate index answers exactly what comparing every stored hash
answers (``dedup.scan``, itself checked against plain Python), on random and clustered
hashes, across two apps on one database (two workers), through a background load, a failed
load, a rebuild and a deletion."""

from __future__ import annotations

import concurrent.futures
import random
import threading
import time

import numpy as np
import pytest
from sqlalchemy import delete, insert, select, text
from sqlalchemy import exc as sa_exc

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
            dedup.add_hash(tx, pid, user_id, h)
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


def scanned(session, variants: list[str]) -> dedup.Match | None:
    """The reference: every hash the database holds, compared."""
    rows = session.execute(text("SELECT photo_id, user_id, pdq FROM photo_hashes")).all()
    if not rows:
        return None
    ids, users, pdqs = zip(*rows, strict=True)
    return dedup.scan(dedup.hashes_to_words(list(pdqs)), np.array(ids), np.array(users), variants)


def same_answers(db, qs: list[list[str]]) -> int:
    """Compare the index and the full scan on every query; returns how many matched something."""
    found = 0
    with db.Session() as session:
        for variants in qs:
            mem = dedup.nearest(session, variants)
            ref = scanned(session, variants)
            assert mem == ref, variants
            found += ref is not None
    return found


def plain_nearest(stored: list[tuple[int, int, str]], variants: list[str]) -> dedup.Match | None:
    """``nearest``'s rule in plain Python: first the photos sharing a 16-bit band exactly with
    any variant, each at its smallest distance to any variant; if none is within 31 bits, every
    photo at its distance to the picture's own hash. Closest first, then the oldest."""
    def bands(h: str) -> list[str]:
        return [h[4 * i : 4 * i + 4] for i in range(16)]

    wanted = [int(v, 16) for v in variants]
    own = [{(i, b) for i, b in enumerate(bands(v))} for v in variants]
    first = [(min((int(h, 16) ^ w).bit_count() for w in wanted), pid, uid) for pid, uid, h in stored
             if any(set(enumerate(bands(h))) & o for o in own)]
    first = [t for t in first if t[0] <= 31]
    second = [((int(h, 16) ^ wanted[0]).bit_count(), pid, uid) for pid, uid, h in stored]
    best = min(first or [t for t in second if t[0] <= 31], default=None)
    return dedup.Match(best[1], best[2], best[0]) if best else None


def test_scan_follows_the_rule_in_plain_python():
    rnd = random.Random(17)
    hashes = clustered(400, rnd)
    stored = [(pid, pid % 7, h) for pid, h in enumerate(hashes, start=1)]
    words = dedup.hashes_to_words(hashes)
    ids, users = np.array([s[0] for s in stored]), np.array([s[1] for s in stored])
    found = 0
    for variants in queries(hashes, rnd, 150):
        expected = plain_nearest(stored, variants)
        assert dedup.scan(words, ids, users, variants) == expected, variants
        found += expected is not None
    assert 40 < found < 150
    # a turned copy found by one of its other variants, at its distance to that variant
    base = hashes[0]
    turned = [hx(rnd.getrandbits(256)) for _ in range(3)] + [base] + [hx(rnd.getrandbits(256)) for _ in range(4)]
    assert dedup.scan(words, ids, users, turned) == dedup.Match(1, 1, 0)


@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_memory_index_equals_full_scan(app, kind):
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
        match = dedup.nearest(tx, [target] * 8)
        assert match == scanned(tx, [target] * 8)
        assert match.distance == 0 and match.user_id in (ua, ub)
    same_answers(da, queries(first + second, rnd, 60))


def test_lookups_wait_for_a_background_load(app, monkeypatch):
    """A large collection loads on a thread of its own; lookups from several threads wait for
    that one load and then answer right."""
    db = app.extensions["collector"].db
    rnd = random.Random(3)
    stored = clustered(800, rnd)
    seed(db, stored, user(db, "a@example.com"))
    monkeypatch.setattr(dedup.NearIndex, "SYNC_LOAD_ROWS", 100)
    monkeypatch.setattr(dedup.NearIndex, "LOAD_CHUNK", 128)  # several chunks
    loads, loaders = [], set()
    real_load = dedup.NearIndex._load

    def slow_load(self, session):
        loads.append(1)
        loaders.add(threading.current_thread().name)
        time.sleep(0.3)  # so the lookups below arrive while it runs
        real_load(self, session)

    monkeypatch.setattr(dedup.NearIndex, "_load", slow_load)
    index = dedup.index_for(db.engine)
    target = stored[123]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: nearest_in_new_session(db, [target] * 8), range(4)))
    assert all(a is not None and a.distance == 0 for a in answers)
    assert len(loads) == 1 and loaders == {"near-index-load"}
    assert index.ready and index.n == 800 and index.base == 800
    same_answers(db, queries(stored, rnd, 30))


def nearest_in_new_session(db, variants):
    with db.Session() as session:
        return dedup.nearest(session, variants)


def test_a_failed_load_is_reported_and_tried_again(app, monkeypatch):
    db = app.extensions["collector"].db
    rnd = random.Random(13)
    stored = clustered(300, rnd)
    seed(db, stored, user(db, "a@example.com"))
    monkeypatch.setattr(dedup.NearIndex, "SYNC_LOAD_ROWS", 100)
    real_warm, calls = dedup.NearIndex.warm, []

    def flaky_warm(self):
        calls.append(1)
        if len(calls) == 1:
            raise sa_exc.OperationalError("SELECT", {}, Exception("server closed the connection"))
        real_warm(self)

    monkeypatch.setattr(dedup.NearIndex, "warm", flaky_warm)
    with pytest.raises(sa_exc.OperationalError):  # the web layer answers 503 for it
        nearest_in_new_session(db, [stored[5]] * 8)
    assert not dedup.index_for(db.engine).ready
    assert nearest_in_new_session(db, [stored[5]] * 8).distance == 0
    assert len(calls) == 2


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
        assert dedup.nearest(session, [hx(base)] * 8).photo_id == ids[1]
    with db.write_transaction() as tx:  # the photo goes, its hash rows with it (cascade)
        tx.execute(delete(dedup.PhotoHash).where(dedup.PhotoHash.photo_id == ids[1]))
        tx.execute(delete(Photo).where(Photo.id == ids[1]))
    with db.Session() as session:
        mem = dedup.nearest(session, [hx(base)] * 8)
        assert mem == scanned(session, [hx(base)] * 8)
        assert mem.photo_id == ids[0] and mem.distance == 10


def test_a_reader_with_an_older_snapshot_does_not_hide_a_new_photo(app):
    """A SQLite read transaction keeps its first snapshot. When another thread has put a newer
    photo in the index meanwhile, that reader does not find it, as its snapshot says, and the
    photo stays in the index for the lookup under the lock (it was once marked gone here, and
    two workers accepted near copies of one photo)."""
    db = app.extensions["collector"].db
    rnd = random.Random(14)
    uid = user(db, "a@example.com")
    seed(db, [hx(rnd.getrandbits(256)) for _ in range(5)], uid)
    new = hx(rnd.getrandbits(256))
    with db.Session() as old:
        assert dedup.nearest(old, [new] * 8) is None  # its snapshot starts here
        (new_id,) = seed(db, [new], uid)  # another worker's upload commits
        with db.Session() as fresh:  # another thread of this process catches up
            assert dedup.nearest(fresh, [new] * 8) == dedup.Match(new_id, uid, 0)
        seen = dedup.nearest(old, [new] * 8)
        assert seen == (None if db.is_sqlite else dedup.Match(new_id, uid, 0))  # what each snapshot holds
    with db.write_transaction() as tx:
        assert dedup.nearest(tx, [new] * 8) == dedup.Match(new_id, uid, 0)


def test_late_commit_below_the_last_id_is_found(app):
    """An id committed after a higher one (a writer that bypassed the lock) is read again."""
    db = app.extensions["collector"].db
    rnd = random.Random(12)
    uid = user(db, "a@example.com")
    seed(db, [hx(rnd.getrandbits(256)) for _ in range(5)], uid)
    with db.Session() as session:
        dedup.nearest(session, [hx(rnd.getrandbits(256))] * 8)
    seed(db, [hx(rnd.getrandbits(256))], uid, start_id=10)  # 6..9 not there yet
    with db.Session() as session:
        dedup.nearest(session, [hx(rnd.getrandbits(256))] * 8)
    late = hx(rnd.getrandbits(256))
    seed(db, [late], uid, start_id=7)
    with db.Session() as session:
        match = dedup.nearest(session, [late] * 8)
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
