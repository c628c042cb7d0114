"""Exact and near-duplicate lookup across every contributor.

Exact: the SHA-256 of the bytes, under a unique constraint. Near: the 256-bit PDQ hash of the
oriented picture, found through multi-index hashing (see ``NearIndex``) so one lookup probes
272 band keys instead of comparing every photo, then the full Hamming distance is checked.
Choice of hash and threshold: README "Near-duplicates", from ../shared/research/dedup.md.

The database holds the truth (``photo_hashes``: one narrow row per photo). Each process keeps
``NearIndex``, an in-memory copy of it with a band index that answers a lookup in a few
milliseconds at a million photos. It is a cache, never a second truth: before every lookup it
reads the rows added since the last one (``photo_id > last seen``, a primary-key range read),
in the caller's session, so under the write lock it sees exactly what the database holds, and
every worker on every machine answers the same. ``scan`` gives the same answer by comparing
every stored hash: the reference the tests and bench/dedup_lookup.py hold the index to.

The band index once lived in the database too (``photo_hash_bands``, 16 rows per photo, and
a SQL lookup beside the memory one); it cost a sixth of the write lock's time and 30-250 ms a
lookup at a million photos, so it went (migration 0011).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import exc as sa_exc
from sqlalchemy import insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from collector.platform.models import PhotoHash

log = logging.getLogger(__name__)

BANDS = 16
BAND_BITS = 16
# An index radius of 31 bits: with 16 bands, a match within 31 differs in at most one bit in
# some band, so probing each band value and its 16 one-bit neighbours finds every such match.
INDEX_RADIUS = BANDS * 2 - 1


def band_keys(pdq_hex: str) -> list[int]:
    """The 16 index keys of a hash: band number in the high bits, band value in the low 16."""
    raw = bytes.fromhex(pdq_hex)
    return [(i << BAND_BITS) | int.from_bytes(raw[2 * i : 2 * i + 2], "big") for i in range(BANDS)]


def probe_keys(pdq_hex: str) -> list[int]:
    keys = []
    for key in band_keys(pdq_hex):
        keys.append(key)
        keys.extend(key ^ (1 << b) for b in range(BAND_BITS))
    return keys


def distance(a_hex: str, b_hex: str) -> int:
    return (int(a_hex, 16) ^ int(b_hex, 16)).bit_count()


@dataclass(frozen=True)
class Match:
    photo_id: int
    user_id: int
    distance: int


def nearest(session: Session, variants: list[str]) -> Match | None:
    """The stored photo closest to ``variants`` (the picture's hash first, then its 7 other
    rotations and mirrors), within the index radius of 31 bits, or None. Ties go to the
    oldest photo (lowest id), so every worker gives the same answer.

    Two steps keep the common case cheap: the exact band values of all 8 variants (128 keys)
    find any photo within 15 bits of any variant; only when that finds nothing within the
    radius are the 16 one-bit neighbours of every band of the picture's own hash probed
    (272 keys), which finds every photo within 31 bits of it. So an unturned copy is found up
    to 31 bits, a turned or mirrored one up to 15 (a rotation alone moves a hash by ~10).

    Answered by the process's ``NearIndex`` for the session's database; a fresh process with
    many photos waits for its index to load (a few seconds at a million photos) on its first
    lookup.
    """
    return index_for(_engine_of(session)).nearest(session, variants)


def add_hash(session: Session, photo_id: int, user_id: int, pdq_hex: str) -> None:
    """Store a new photo's hash for the lookups (in the caller's transaction, which must hold
    the intake write lock: ``NearIndex`` relies on photo ids becoming visible in increasing
    order)."""
    session.execute(_INSERT_HASH, {"photo_id": photo_id, "user_id": user_id, "pdq": pdq_hex})


_INSERT_HASH = insert(PhotoHash.__table__)


def add_hash_cte(photo_id, user_id, pdq):
    """``add_hash`` as a data-modifying CTE (PostgreSQL) for a statement whose other CTE
    inserts the photo: ``photo_id`` is that CTE's id column, ``user_id`` and ``pdq`` bound
    parameters."""
    hashes = PhotoHash.__table__
    return (insert(hashes).from_select(["photo_id", "user_id", "pdq"], select(photo_id, user_id, pdq))
            .returning(hashes.c.photo_id).cte("new_hash"))


def scan(words: np.ndarray, ids: np.ndarray, users: np.ndarray, variants: list[str]) -> Match | None:
    """``nearest``'s answer by comparing every hash in ``words`` ((N, 4) uint64, with their
    photo and user ids), no index: the same two steps, each photo's distance the smallest to
    any variant it shares an exact band with in step one, to the picture's own in step two."""
    if len(ids) == 0:
        return None
    wanted = hashes_to_words(variants)
    shares = np.zeros(len(ids), dtype=bool)
    stored_bands = band_values(words)
    for v in band_values(wanted).T:  # (16,) bands of one variant
        shares |= (stored_bands == v[:, None]).any(axis=0)
    d = np.bitwise_count(wanted[:, None, :] ^ words[None, :, :]).sum(axis=2, dtype=np.uint16)  # (variants, N)
    best = d.min(axis=0)
    ok = np.flatnonzero(shares & (best <= INDEX_RADIUS))
    if ok.size == 0:
        best = d[0]
        ok = np.flatnonzero(best <= INDEX_RADIUS)
        if ok.size == 0:
            return None
    pick = ok[np.lexsort((ids[ok], best[ok]))[0]]
    return Match(int(ids[pick]), int(users[pick]), int(best[pick]))


# -- the in-memory index ----------------------------------------------------------------------

_INDEXES: weakref.WeakKeyDictionary[Engine, NearIndex] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def index_for(engine: Engine) -> NearIndex:
    """The process's index for one database (one per engine: two apps = two workers)."""
    with _REGISTRY_LOCK:
        index = _INDEXES.get(engine)
        if index is None:
            index = _INDEXES[engine] = NearIndex(engine)
        return index


def _engine_of(session: Session) -> Engine:
    bind = session.get_bind()
    return getattr(bind, "engine", bind)


def hashes_to_words(pdq_hexes: list[str]) -> np.ndarray:
    """Hex PDQ hashes as an (N, 4) array of native uint64, most significant word first."""
    raw = bytes.fromhex("".join(pdq_hexes))
    return np.frombuffer(raw, dtype=">u8").reshape(-1, 4).astype(np.uint64)


def band_values(words: np.ndarray) -> np.ndarray:
    """(16, N) uint16: band i of every hash (bytes 2i, 2i+1 of the hash, big-endian)."""
    out = np.empty((BANDS, len(words)), dtype=np.uint16)
    for i in range(BANDS):
        out[i] = (words[:, i // 4] >> np.uint64(48 - 16 * (i % 4))) & np.uint64(0xFFFF)
    return out


@dataclass
class _Load:
    """One background load of a ``NearIndex``: done when it ends, with its error if it failed
    (each waiting lookup raises its own load's error, not a later attempt's)."""

    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class NearIndex:
    """An in-memory copy of ``photo_hashes`` with a multi-index over its 16 bands.

    Rows live in growing numpy arrays (hash as 4 uint64, photo id, user id). Rows ``[0, base)``
    are indexed by a CSR band index: ``postings`` lists row numbers sorted by band key
    (band << 16 | value) and ``offsets[key]`` says where each key's rows start, so a probe of
    272 keys is 272 slices gathered in one numpy step. Rows added since (``[base, n)``) are
    indexed in a dict of key -> rows, folded into a new CSR in a background thread once it
    passes an eighth of the base. Memory: 32 bytes of hash + 64 bytes of postings + 16 of ids
    per photo, plus 8 MB of offsets: about 120 MB at a million photos.

    Catch-up: ``photo_id > last seen``. Photo ids become visible in increasing order because
    every insert into ``photo_hashes`` happens under the intake write lock (SQLite's single
    writer; PostgreSQL's advisory lock, held until after the commit), so reading past the last
    id never skips a row. Ids that are missing inside a read range (a rolled-back insert, or a
    writer that bypassed the lock) are read again for ``GAP_SECONDS``. Deletions (photos are
    never deleted by the app, but a cascade could) are caught where they matter: a match is
    confirmed by primary key before it is returned, and a vanished one is dropped and the
    search repeated.

    A fresh process with up to ``SYNC_LOAD_ROWS`` photos loads in its first lookup's session.
    With more, a background thread loads on a connection of its own and lookups wait for it,
    up to ``LOAD_WAIT_SECONDS``; intake's first lookup of each upload is outside the write
    lock, so that is where they wait.
    """

    SYNC_LOAD_ROWS = 50_000  # about half a second
    LOAD_WAIT_SECONDS = 120.0  # ~3-15 s at a million photos here
    LOAD_CHUNK = 100_000
    GAP_SECONDS = 300.0

    def __init__(self, engine: Engine):
        self.engine = engine
        self.lock = threading.RLock()
        self.n = 0
        self.last_id = 0
        self.words = np.empty((0, 4), dtype=np.uint64)
        self.ids = np.empty(0, dtype=np.int64)
        self.users = np.empty(0, dtype=np.int64)
        self.alive = np.empty(0, dtype=bool)
        self.base = 0
        self.offsets = np.zeros((BANDS << BAND_BITS) + 1, dtype=np.int64)
        self.postings = np.empty(0, dtype=np.int32)
        self.recent: dict[int, list[int]] = {}
        self.gaps: dict[int, float] = {}  # photo id -> when it was first seen missing
        self.ready = False
        self.loading: _Load | None = None  # the running background load
        self.rebuilding = False
        self.load_seconds: float | None = None

    # -- public ----------------------------------------------------------------------------

    def nearest(self, session: Session, variants: list[str]) -> Match | None:
        """``dedup.nearest`` for this index's database."""
        if not self.ready:
            self._wait_for_load(session)
        self.catch_up(session)
        passed_over: list[int] = []
        while True:
            with self.lock:
                match = self._search(variants, passed_over)
            if match is None or self._still_there(session, match.photo_id):
                return match
            if session.info.get("intake_lock"):  # the newest snapshot: the photo is gone
                with self.lock:
                    self.alive[self._row_of(match.photo_id)] = False
            else:
                # Possibly only not yet there for this session: a SQLite read transaction keeps
                # the snapshot it started with, and another thread may have added newer rows to
                # the index meanwhile. Marking them dead here once made a worker accept a near
                # copy of a photo another worker had just taken (tests/test_dedup.py).
                passed_over.append(match.photo_id)

    def catch_up(self, session: Session) -> int:
        """Read the rows added since the last call (and any open gaps); returns how many.

        The read runs outside the index's lock (a slow database never holds up the other
        threads' searches); rows another thread appended meanwhile are skipped by id."""
        with self.lock:
            last = int(self.last_id)
            if self.gaps:
                self._expire_gaps()
            gaps = sorted(self.gaps)
        # The id is written into the statement (an int, never text from outside): with a bound
        # parameter PostgreSQL soon switches to a generic plan that guesses a third of the
        # table matches and scans it (20 ms at a million photos) instead of the primary key.
        sql = f"SELECT photo_id, user_id, pdq FROM photo_hashes WHERE photo_id > {last}"
        if gaps:
            sql += " OR photo_id IN (" + ", ".join(str(int(i)) for i in gaps) + ")"
        # Sent as it is (no parameters to bind): a new text() a lookup would cost a compilation.
        rows = session.connection().exec_driver_sql(sql + " ORDER BY photo_id").all()
        if rows:
            with self.lock:
                self._append(rows)
        return len(rows)

    def warm(self) -> None:
        """Load everything now, in the calling thread (tests, benches, start-up scripts)."""
        with self.engine.connect() as conn, Session(bind=conn) as session:
            self._load(session)

    def stats(self) -> dict:
        return {
            "photos": self.n,
            "indexed": self.base,
            "recent": self.n - self.base,
            "bytes": int(self.words[: self.n].nbytes + self.ids[: self.n].nbytes + self.users[: self.n].nbytes
                         + self.postings.nbytes + self.offsets.nbytes),
            "load_seconds": self.load_seconds,
        }

    # -- loading ---------------------------------------------------------------------------

    def _wait_for_load(self, session: Session) -> None:
        """Load now when small; else start a background load (or join the running one) and
        wait for it. A failed load raises its error here, and the next lookup tries again."""
        with self.lock:
            if self.ready:
                return
            load = self.loading
            if load is None:
                top = session.execute(text("SELECT max(photo_id) FROM photo_hashes")).scalar() or 0
                if top <= self.SYNC_LOAD_ROWS:
                    self._load(session)
                    return
                self.loading = load = _Load()
                threading.Thread(target=self._background_load, args=(load,), name="near-index-load", daemon=True).start()
        if not load.done.wait(self.LOAD_WAIT_SECONDS):
            raise sa_exc.TimeoutError("the near-duplicate index is still loading: busy, try again shortly")
        if not self.ready:
            raise load.error or RuntimeError("the near-duplicate index did not load")

    def _background_load(self, load: _Load) -> None:
        try:
            self.warm()
        except Exception as exc:  # the lookups waiting for this load raise it; a later one tries again
            log.exception("near-duplicate index: loading failed")
            load.error = exc
        finally:
            with self.lock:
                self.loading = None
            load.done.set()

    def _load(self, session: Session) -> None:
        start = time.perf_counter()
        while True:
            rows = session.execute(
                text("SELECT photo_id, user_id, pdq FROM photo_hashes WHERE photo_id > :last ORDER BY photo_id LIMIT :n"),
                {"last": self.last_id, "n": self.LOAD_CHUNK},
            ).all()
            if rows:
                with self.lock:
                    self._append(rows, index_recent=False)
            if len(rows) < self.LOAD_CHUNK:
                break
        with self.lock:
            n = self.n
        offsets, postings = _build_csr(self.words[:n])
        with self.lock:
            self._install(offsets, postings, n)
            self.ready = True
            self.load_seconds = time.perf_counter() - start
        log.info("near-duplicate index: %d photos loaded in %.1f s", n, self.load_seconds)

    # -- rows ------------------------------------------------------------------------------

    def _append(self, rows, index_recent: bool = True) -> None:
        new_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        known = new_ids <= self.last_id
        if known.any():  # gaps filled by late commits: keep only ids not held yet
            fresh = [r for r, k in zip(rows, known, strict=True) if not k or int(r[0]) in self.gaps]
            for r in fresh:
                self.gaps.pop(int(r[0]), None)
            rows = fresh
            if not rows:
                return
            new_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        m = len(rows)
        self._reserve(self.n + m)
        lo, hi = self.n, self.n + m
        self.words[lo:hi] = hashes_to_words([r[2] for r in rows])
        self.ids[lo:hi] = new_ids
        self.users[lo:hi] = np.fromiter((r[1] for r in rows), dtype=np.int64, count=m)
        self.alive[lo:hi] = True
        # Ids skipped inside the range read are looked for again for a while.
        top = int(new_ids.max())
        if top > self.last_id:
            expected = top - self.last_id
            seen = np.count_nonzero(new_ids > self.last_id)
            if seen < expected and self.last_id > 0 and index_recent:  # not while loading history
                present = set(new_ids.tolist())
                now = time.monotonic()
                for missing in range(self.last_id + 1, top):
                    if missing not in present:
                        self.gaps.setdefault(missing, now)
                        if len(self.gaps) >= 1000:
                            break
            self.last_id = top
        self.n = hi
        if index_recent:
            self._index_recent(lo, hi)
            if self.n - self.base > max(4096, self.base // 8) and not self.rebuilding:
                self.rebuilding = True
                threading.Thread(target=self._rebuild, name="near-index-rebuild", daemon=True).start()

    def _expire_gaps(self) -> None:
        limit = time.monotonic() - self.GAP_SECONDS
        for k in [k for k, t in self.gaps.items() if t < limit]:
            del self.gaps[k]

    def _reserve(self, size: int) -> None:
        if size <= len(self.ids):
            return
        cap = max(size, 2 * len(self.ids), 1024)
        for name in ("words", "ids", "users", "alive"):
            old = getattr(self, name)
            new = np.empty((cap,) + old.shape[1:], dtype=old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def _index_recent(self, lo: int, hi: int) -> None:
        keys = (np.arange(BANDS, dtype=np.int64)[:, None] << BAND_BITS) | band_values(self.words[lo:hi]).astype(np.int64)
        for j, row in enumerate(range(lo, hi)):
            for k in keys[:, j].tolist():
                self.recent.setdefault(k, []).append(row)

    def _rebuild(self) -> None:
        try:
            with self.lock:
                n = self.n
                words = self.words[:n]  # rows below n never change; growth makes a new array
            offsets, postings = _build_csr(words)
            with self.lock:
                self._install(offsets, postings, n)
        finally:
            self.rebuilding = False

    def _install(self, offsets: np.ndarray, postings: np.ndarray, base: int) -> None:
        self.offsets, self.postings, self.base = offsets, postings, base
        self.recent = {}
        if self.n > base:
            self._index_recent(base, self.n)

    def _row_of(self, photo_id: int) -> int:
        return int(np.flatnonzero(self.ids[: self.n] == photo_id)[0])

    def _still_there(self, session: Session, photo_id: int) -> bool:
        return session.execute(text("SELECT 1 FROM photo_hashes WHERE photo_id = :p"), {"p": photo_id}).first() is not None

    # -- search ----------------------------------------------------------------------------

    def _search(self, variants: list[str], passed_over: list[int]) -> Match | None:
        best = self._closest(variants, sorted({k for v in variants for k in band_keys(v)}), passed_over)
        if best is None:
            best = self._closest(variants[:1], probe_keys(variants[0]), passed_over)
        return best

    def _closest(self, variants: list[str], keys: list[int], passed_over: list[int]) -> Match | None:
        rows = self._candidates(keys)
        if rows.size == 0:
            return None
        wanted = hashes_to_words(variants)
        # (variants, 4 words, candidates): numpy's inner loops run along the candidates; the
        # other way round, a (candidates, variants, 4) broadcast runs a short loop per element
        # and costs ten times as much.
        cand = np.ascontiguousarray(np.take(self.words, rows, axis=0).T)  # take: 10x faster than words[rows]
        d = np.bitwise_count(wanted[:, :, None] ^ cand[None, :, :]).sum(axis=1, dtype=np.uint16).min(axis=0)
        ok = np.flatnonzero(d <= INDEX_RADIUS)
        ok = ok[self.alive[rows[ok]]]
        if passed_over:
            ok = ok[~np.isin(self.ids[rows[ok]], passed_over)]
        if ok.size == 0:
            return None
        rows, d = rows[ok], d[ok]
        ids = self.ids[rows]
        best = np.lexsort((ids, d))[0]  # smallest distance, then lowest id
        r = rows[best]
        return Match(int(self.ids[r]), int(self.users[r]), int(d[best]))

    def _candidates(self, keys: list[int]) -> np.ndarray:
        k = np.asarray(keys, dtype=np.int64)
        starts, ends = self.offsets[k], self.offsets[k + 1]
        lengths = ends - starts
        total = int(lengths.sum())
        parts = []
        if total:
            shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
            parts.append(self.postings[shift + np.arange(total)])
        if self.recent:
            hits = self.recent.keys() & set(keys)  # one C-level intersection, not 272 lookups
            if hits:
                parts.append(np.fromiter((r for key in hits for r in self.recent[key]), dtype=np.int32))
        if not parts:
            return np.empty(0, dtype=np.int64)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]  # repeats are harmless


def _build_csr(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The band index of ``words``: postings sorted by key = band << 16 | value, and offsets."""
    n = len(words)
    bands = band_values(words)
    postings = np.empty(BANDS * n, dtype=np.int32)
    counts = np.empty(BANDS << BAND_BITS, dtype=np.int64)
    for i in range(BANDS):
        # A stable sort of 16-bit values is numpy's radix sort: linear, ~10 ms a band at 1M.
        postings[i * n : (i + 1) * n] = np.argsort(bands[i], kind="stable")
        counts[i << BAND_BITS : (i + 1) << BAND_BITS] = np.bincount(bands[i], minlength=1 << BAND_BITS)
    offsets = np.zeros((BANDS << BAND_BITS) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets, postings


def pairs_within(pdq_hexes: list[str], radius: int = INDEX_RADIUS) -> list[tuple[int, int]]:
    """Every pair (i, j), i < j, of hashes in the list within ``radius`` bits (at most 31).

    The same multi-index search as ``nearest``, for a whole collection at once: for each band
    and each of its 17 probes (the value and its one-bit neighbours), hashes are matched to
    the hashes holding that value by a sorted search, in numpy, so the cost is 272 vectorised
    passes instead of 272 dictionary probes per photo in Python (export's split grouping)."""
    if radius > INDEX_RADIUS:
        raise ValueError(f"radius {radius} is beyond the index radius {INDEX_RADIUS}")
    n = len(pdq_hexes)
    if n < 2:
        return []
    words = hashes_to_words(pdq_hexes)
    bands = band_values(words)
    found: list[np.ndarray] = []
    for b in range(BANDS):
        order = np.argsort(bands[b], kind="stable")
        offsets = np.zeros((1 << BAND_BITS) + 1, dtype=np.int64)
        np.cumsum(np.bincount(bands[b], minlength=1 << BAND_BITS), out=offsets[1:])
        values = bands[b].astype(np.int64)
        for flip in (0, *(1 << i for i in range(BAND_BITS))):
            probe = values ^ flip
            lo = offsets[probe]
            counts = offsets[probe + 1] - lo
            total = int(counts.sum())
            if not total:
                continue
            left = np.repeat(np.arange(n), counts)
            right = order[np.repeat(lo - (np.cumsum(counts) - counts), counts) + np.arange(total)]
            keep = left < right  # each unordered pair once (the flipped probe finds it from both ends)
            if keep.any():
                found.append(left[keep] * n + right[keep])
    if not found:
        return []
    codes = np.sort(np.concatenate(found))
    codes = codes[np.concatenate(([True], codes[1:] != codes[:-1]))]  # np.unique hashes: 10x slower
    i, j = codes // n, codes % n
    d = np.bitwise_count(words[i] ^ words[j]).sum(axis=1)
    close = d <= radius
    return list(zip(i[close].tolist(), j[close].tolist(), strict=True))
