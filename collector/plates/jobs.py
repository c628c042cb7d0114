"""Plate reading off the upload path: rows claimed in the database, a lease, one write per photo.

Why the database and not a queue library: the photos table already says what is to do (a
credited photo without a ``plate_reads`` row is pending), so there is nothing to enqueue at
upload, nothing to lose when a queue and the database disagree, and the back-fill of photos
accepted before plate reading existed is the same query. It runs on the embedded default with
no extra service, and on PostgreSQL any number of workers on any number of machines share it:

- **Claim**: one short transaction. On PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED`` picks a
  photo no other worker is claiming; on SQLite the transaction starts with ``BEGIN IMMEDIATE``,
  which serialises claims. The claim is the ``plate_reads`` row itself (state ``reading``, a
  random token, the worker's name, ``claimed_at``); its primary key is the photo, so two claims
  of one photo cannot both be written.
- **Lease**: a claim older than the lease (default 10 minutes, far above the per-photo deadline)
  is claimed again: a worker killed mid-photo (kill -9, OOM, a lost machine) leaves its photo
  to the next worker. After ``MAX_ATTEMPTS`` claims the photo is marked ``error`` instead of
  being handed to a fourth worker to crash on.
- **Write once**: the result is written by ``UPDATE ... WHERE claim = token AND state =
  'reading'`` in the transaction that adds the plates; a worker whose lease was taken over
  finds nothing to update and throws its result away.
- **Bounded**: one photo at a time per process, onnxruntime on one thread, the photo decoded at
  the reading side (JPEG draft mode), and a per-photo deadline after which it is ``error``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import exists, func, insert, select, update
from sqlalchemy.orm import Session, aliased

from collector.intake import credits
from collector.platform.config import Settings
from collector.platform.models import Photo, PhotoPlate, PlateRead, ReviewAction, utcnow

CREDITED = ("accepted", "flagged")
MAX_ATTEMPTS = 3
LEASE = dt.timedelta(minutes=10)
DEADLINE_S = 60.0
SHAPE_TOLERANCE = 0.15  # plate boxes of "the same shape": aspect ratios within 15%


@dataclass(frozen=True)
class Claim:
    photo_id: int
    token: str
    worker: str


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:100]


def claim_next(db, worker: str, lease: dt.timedelta = LEASE) -> Claim | None:
    """Claim one photo to read: an expired lease first, else the oldest photo never claimed."""
    while True:
        now = utcnow()
        token = secrets.token_hex(16)
        with db.write_transaction(lock=False) as tx:
            stale = select(PlateRead).where(PlateRead.state == "reading", PlateRead.claimed_at < now - lease)
            stale = stale.order_by(PlateRead.claimed_at).limit(1)
            if not db.is_sqlite:
                stale = stale.with_for_update(skip_locked=True)
            row = tx.scalars(stale).first()
            if row is not None:
                if row.attempts >= MAX_ATTEMPTS:
                    row.state, row.read_at = "error", now
                    row.error = f"the reader stopped {row.attempts} times on this photo without an answer"
                    continue  # committed at the end of the block; look for the next one
                row.claim, row.worker, row.claimed_at, row.attempts = token, worker, now, row.attempts + 1
                return Claim(row.photo_id, token, worker)
            fresh = (select(Photo.id).where(Photo.status.in_(CREDITED), ~exists().where(PlateRead.photo_id == Photo.id))
                     .order_by(Photo.id).limit(1))
            if not db.is_sqlite:
                fresh = fresh.with_for_update(of=Photo, skip_locked=True)
            photo_id = tx.scalar(fresh)
            if photo_id is None:
                return None
            # The primary key has the last word: a claim that lost a race inserts nothing.
            stmt = _insert_ignore(db, PlateRead).values(photo_id=photo_id, state="reading", claim=token, worker=worker,
                                                        claimed_at=now, attempts=1)
            if tx.execute(stmt.returning(PlateRead.photo_id)).scalar() is not None:
                return Claim(photo_id, token, worker)


def _insert_ignore(db, model):
    if db.is_sqlite:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert
        return sqlite_insert(model).on_conflict_do_nothing()
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    return pg_insert(model).on_conflict_do_nothing()


def finish(db, claim: Claim, found: list, cpu_ms: int | None, settings: Settings, error: str | None = None) -> bool:
    """Write the outcome of ``claim``: True if written, False if the claim was taken over."""
    state = "error" if error else ("found" if found else "none")
    with db.write_transaction(lock=False) as tx:
        written = tx.execute(
            update(PlateRead).where(PlateRead.photo_id == claim.photo_id, PlateRead.claim == claim.token,
                                    PlateRead.state == "reading")
            .values(state=state, read_at=utcnow(), cpu_ms=cpu_ms, error=(error or None) and error[:300])
        ).rowcount
        if not written:
            return False
        for i, p in enumerate(found):
            x, y, w, h = p.box
            tx.execute(insert(PhotoPlate).values(photo_id=claim.photo_id, position=i, x=x, y=y, w=w, h=h,
                                                 machine_text=p.text, score=p.score, text=p.text, source="machine"))
        mark_similar(tx, claim.photo_id)
        settle(tx, claim.photo_id, settings)
        return True


def release(db, claim: Claim) -> None:
    """Give a claim back untouched (the store was unreachable): the photo is pending again."""
    with db.write_transaction(lock=False) as tx:
        tx.execute(PlateRead.__table__.delete().where(PlateRead.photo_id == claim.photo_id,
                                                      PlateRead.claim == claim.token, PlateRead.state == "reading"))


# -- what a reading does to the credit ------------------------------------------------------

def desired_hold(tx: Session, photo: Photo, read: PlateRead | None, settings: Settings) -> str | None:
    """Why this photo's credit should be held back now, or None when it should count."""
    if read is None or photo.status not in CREDITED or read.state == "reading":
        return None
    texts = tx.scalars(select(PhotoPlate.text).where(PhotoPlate.photo_id == photo.id)).all()
    if not texts:
        if settings["PLATE_POLICY"] == "hold" and read.state == "none" and read.reviewed_by_id is None:
            return "no_plate"
        return None
    if settings["DISTINCT_PLATES"]:
        # A repeat: an earlier photo of the same contributor, still counting, shows a plate
        # with one of this photo's texts.
        other = aliased(PhotoPlate)
        earlier = tx.scalar(
            select(Photo.id).join(other, other.photo_id == Photo.id)
            .outerjoin(PlateRead, PlateRead.photo_id == Photo.id)
            .where(Photo.user_id == photo.user_id, Photo.id < photo.id, Photo.status.in_(CREDITED),
                   other.text.in_(texts), PlateRead.credit_held.is_(None))
            .limit(1)
        )
        if earlier is not None:
            return "repeat_plate"
    return None


def settle(tx: Session, photo_id: int, settings: Settings) -> int:
    """Hold back or give back the photo's credit as the policy says; returns the credit change.
    ``credits.adjust`` moves the count, in the caller's transaction."""
    photo = tx.get(Photo, photo_id)
    read = tx.get(PlateRead, photo_id)
    if photo is None or read is None:
        return 0
    want = desired_hold(tx, photo, read, settings)
    delta = 0
    if want and not read.credit_held:
        delta = -1
    elif read.credit_held and not want:
        delta = +1
    if delta:
        credits.adjust(tx, photo.user_id, delta, photo.created_at)
    read.credit_held = want
    return delta


def settle_user(tx: Session, user_id: int, settings: Settings) -> int:
    """Settle every photo of a contributor, oldest first (a correction can change which photo
    of a plate is the first)."""
    ids = tx.scalars(select(PlateRead.photo_id).join(Photo, Photo.id == PlateRead.photo_id)
                     .where(Photo.user_id == user_id).order_by(Photo.id)).all()
    return sum(settle(tx, pid, settings) for pid in ids)


def clear_hold(tx: Session, photo_id: int, organiser_id: int) -> bool:
    """For review: the photo leaves the credited set; True if its credit was already held back
    (so review must not take it a second time). The organiser has looked at it, so a later
    restore is not held back again for want of a plate."""
    read = tx.get(PlateRead, photo_id)
    if read is None or not read.credit_held:
        return False
    read.credit_held = None
    read.reviewed_by_id = organiser_id
    return True


def mark_similar(tx: Session, photo_id: int) -> None:
    """Flag a possible crop or re-shoot: another contributor's photo shows a plate with the same
    text in a box of the same shape (a crop keeps the plate's shape; a re-encode keeps both)."""
    read = tx.get(PlateRead, photo_id)
    photo = tx.get(Photo, photo_id)
    if read is None or photo is None:
        return
    read.similar_to_id = None
    mine = tx.scalars(select(PhotoPlate).where(PhotoPlate.photo_id == photo_id)).all()
    for p in mine:
        others = tx.execute(
            select(PhotoPlate.photo_id, PhotoPlate.w, PhotoPlate.h).join(Photo, Photo.id == PhotoPlate.photo_id)
            .where(PhotoPlate.text == p.text, Photo.user_id != photo.user_id, Photo.id != photo_id)
            .order_by(PhotoPlate.photo_id).limit(50)
        ).all()
        for other_id, w, h in others:
            if p.w and p.h and w and h and abs((p.w / p.h) / (w / h) - 1) <= SHAPE_TOLERANCE:
                read.similar_to_id = other_id
                return


# -- organisers ------------------------------------------------------------------------------

class PlateError(ValueError):
    pass


def correct(db, photo_id: int, organiser_id: int, text: str, settings: Settings) -> str:
    """An organiser's plate text for the photo (its best plate, or a new plate without a box
    when none was found). Kept, audited, and wins over the machine's. Returns the text."""
    from collector.plates.reader import MAX_LEN, normalise

    new = normalise(text)
    if not new or len(new) > MAX_LEN + 4:
        raise PlateError("Type the plate's letters and digits (at most 14).")
    with db.write_transaction(lock=False) as tx:
        photo = tx.get(Photo, photo_id)
        if photo is None:
            raise PlateError("No such photo.")
        read = tx.get(PlateRead, photo_id)
        if read is None:
            read = PlateRead(photo_id=photo_id, state="none", claim=secrets.token_hex(16), worker="organiser",
                             claimed_at=utcnow(), attempts=0, read_at=utcnow())
            tx.add(read)
        elif read.state == "reading":
            raise PlateError("The plate is being read right now; try again in a minute.")
        plate = tx.scalar(select(PhotoPlate).where(PhotoPlate.photo_id == photo_id).order_by(PhotoPlate.position).limit(1))
        old = plate.text if plate else None
        if plate is None:
            plate = PhotoPlate(photo_id=photo_id, position=0, text=new, source="organiser")
            tx.add(plate)
        plate.text, plate.source = new, "organiser"
        read.reviewed_by_id = organiser_id
        tx.add(ReviewAction(photo_id=photo_id, organiser_id=organiser_id, action="plate",
                            note=f"plate text {old or '(none)'} -> {new}"))
        tx.flush()
        mark_similar(tx, photo_id)
        settle_user(tx, photo.user_id, settings)
        return new


def approve(db, photo_id: int, organiser_id: int, settings: Settings) -> bool:
    """An organiser says a photo without a readable plate is fine: a held credit comes back."""
    with db.write_transaction(lock=False) as tx:
        read = tx.get(PlateRead, photo_id)
        if read is None or read.state == "reading":
            return False
        read.reviewed_by_id = organiser_id
        tx.add(ReviewAction(photo_id=photo_id, organiser_id=organiser_id, action="approve", note="no plate: approved"))
        tx.flush()
        settle(tx, photo_id, settings)
        return True


# -- queries for pages, reports and export --------------------------------------------------

def status_of(read: PlateRead | None) -> str:
    """found | none | pending | error, as the report and the pages say it."""
    if read is None or read.state == "reading":
        return "pending"
    return read.state


def plates_of(session: Session, photo_ids: list[int]) -> dict[int, list[PhotoPlate]]:
    out: dict[int, list[PhotoPlate]] = {pid: [] for pid in photo_ids}
    for chunk in range(0, len(photo_ids), 500):
        ids = photo_ids[chunk:chunk + 500]
        for p in session.scalars(select(PhotoPlate).where(PhotoPlate.photo_id.in_(ids)).order_by(PhotoPlate.position)):
            out[p.photo_id].append(p)
    return out


def reads_of(session: Session, photo_ids: list[int]) -> dict[int, PlateRead]:
    out: dict[int, PlateRead] = {}
    for chunk in range(0, len(photo_ids), 500):
        ids = photo_ids[chunk:chunk + 500]
        out.update({r.photo_id: r for r in session.scalars(select(PlateRead).where(PlateRead.photo_id.in_(ids)))})
    return out


def counts(session: Session) -> dict[str, int]:
    """Over credited photos: plates read (by the machine or an organiser), none found, errors,
    pending, and credits held back by the policy."""
    has_plate = exists().where(PhotoPlate.photo_id == Photo.id)
    credited = Photo.status.in_(CREDITED)
    found = session.scalar(select(func.count()).select_from(Photo).where(credited, has_plate)) or 0
    rows = dict(session.execute(
        select(PlateRead.state, func.count()).join(Photo, Photo.id == PlateRead.photo_id)
        .where(credited, ~has_plate).group_by(PlateRead.state)
    ).all())
    total = session.scalar(select(func.count()).select_from(Photo).where(credited)) or 0
    held = session.scalar(select(func.count()).select_from(PlateRead).where(PlateRead.credit_held.is_not(None))) or 0
    none, error = rows.get("none", 0), rows.get("error", 0)
    return {"plates_found": found, "plates_none": none, "plates_error": error,
            "plates_pending": total - found - none - error, "plates_credit_held": held}


def distinct_plates(session: Session, user_id: int) -> tuple[int, list[tuple[str, int]]]:
    """(distinct plate texts among the contributor's credited photos, [(text, photos)] for texts
    seen on more than one of them, most first)."""
    rows = session.execute(
        select(PhotoPlate.text, func.count(func.distinct(PhotoPlate.photo_id))).join(Photo, Photo.id == PhotoPlate.photo_id)
        .where(Photo.user_id == user_id, Photo.status.in_(CREDITED)).group_by(PhotoPlate.text)
    ).all()
    repeats = sorted(((t, n) for t, n in rows if n > 1), key=lambda tn: (-tn[1], tn[0]))
    return len(rows), repeats


def filter_condition(name: str):
    """Review filters on Photo: no plate found, a plate text shared with another photo, a
    possible crop or re-shoot of another contributor's photo, credit held back."""
    if name == "no_plate":
        return exists().where(PlateRead.photo_id == Photo.id, PlateRead.state.in_(("none", "error")),
                              PlateRead.reviewed_by_id.is_(None))
    if name == "same_plate":
        mine, other = aliased(PhotoPlate), aliased(PhotoPlate)
        return exists().where(mine.photo_id == Photo.id, other.text == mine.text, other.photo_id != Photo.id)
    if name == "possible_crop":
        return exists().where(PlateRead.photo_id == Photo.id, PlateRead.similar_to_id.is_not(None))
    if name == "credit_held":
        return exists().where(PlateRead.photo_id == Photo.id, PlateRead.credit_held.is_not(None))
    return None


FILTERS = {
    "no_plate": "No plate found",
    "same_plate": "Same plate text as another photo",
    "possible_crop": "Possible crop or re-shoot",
    "credit_held": "Credit held (plate policy)",
}


# -- the worker -----------------------------------------------------------------------------

class Deadline(Exception):
    pass


@contextmanager
def deadline(seconds: float):
    """Interrupt the photo after ``seconds`` (checked between the OCR's model runs, each bounded
    by the reading side). Only the main thread can take signals; elsewhere it is a no-op."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _ring(signum, frame):
        raise Deadline

    previous = signal.signal(signal.SIGALRM, _ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def read_one(db, storage, claim: Claim, settings: Settings, deadline_s: float = DEADLINE_S) -> str:
    """Read the claimed photo and write the outcome; returns the state written (or 'lost')."""
    from collector.plates import reader as plates
    from collector.platform.storage import StorageUnavailable

    with db.Session() as s:
        photo = s.get(Photo, claim.photo_id)
    found: list = []
    error = None
    t0 = time.process_time()
    try:
        # The bytes first: a storage read is bounded by the photo's size and the store's own
        # timeouts, and an alarm must not land between opening a file and closing it.
        with storage.open(photo.storage_key) as fh:
            data = fh.read(photo.size_bytes + 1)
        with deadline(deadline_s):
            image = plates.open_photo(data, photo.format, photo.orientation, settings["MAX_PIXELS"])
            sx, sy = photo.width / image.width, photo.height / image.height
            for p in plates.reader().read(image):
                x, y, w, h = p.box
                box = (round(x * sx), round(y * sy), max(1, round(w * sx)), max(1, round(h * sy)))
                found.append(plates.Plate(box, p.text, p.score))
    except StorageUnavailable:
        release(db, claim)
        return "released"
    except Deadline:
        error = f"reading took longer than {deadline_s:g} s"
    except FileNotFoundError:
        error = "the photo's file is missing from storage"
    except Exception as exc:  # noqa: BLE001 - one photo's failure (Pillow, OpenCV, onnxruntime) is that photo's error
        error = f"{type(exc).__name__}: {exc}"
        logging.getLogger(__name__).warning("plate reading failed on photo %s: %s", claim.photo_id, error)
    cpu_ms = round((time.process_time() - t0) * 1000)
    ok = finish(db, claim, found, cpu_ms, settings, error)
    return ("error" if error else ("found" if found else "none")) if ok else "lost"


def run(db, storage, settings: Settings, *, until_idle: bool = False, lease: dt.timedelta = LEASE,
        deadline_s: float = DEADLINE_S, poll_s: float = 2.0, limit: int | None = None,
        stop_with: int | None = None, on_event: Callable[[str, int, str], None] | None = None) -> int:
    """The worker loop: claim, read, write, until idle (``until_idle``), ``limit`` photos, or
    the process ``stop_with`` is gone. Returns the photos handled."""
    worker = worker_name()
    done = 0
    while limit is None or done < limit:
        if stop_with and not _alive(stop_with):
            break
        claim = claim_next(db, worker, lease)
        if claim is None:
            if until_idle:
                break
            time.sleep(poll_s)
            continue
        if on_event:
            on_event("reading", claim.photo_id, worker)
        state = read_one(db, storage, claim, settings, deadline_s)
        if on_event:
            on_event(state, claim.photo_id, worker)
        if state == "released":
            time.sleep(poll_s)
        else:
            done += 1
    return done


def _alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie waiting for its parent counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def report_rows(session: Session):
    """One dict per photo: photo_id, sha256, status, text, score, box (and every plate)."""
    last = 0
    while True:
        photos = session.execute(select(Photo.id, Photo.sha256, Photo.status).where(Photo.id > last)
                                 .order_by(Photo.id).limit(1000)).all()
        if not photos:
            return
        ids = [p.id for p in photos]
        reads, plates = reads_of(session, ids), plates_of(session, ids)
        for pid, sha, photo_status in photos:
            ps = plates[pid]
            best = ps[0] if ps else None
            status = status_of(reads.get(pid))
            if ps and status in ("none", "pending"):
                status = "found"  # an organiser typed the plate
            yield {
                "photo_id": pid, "sha256": sha, "status": status,
                "text": best.text if best else None,
                "score": best.score if best else None,
                "box": list(best.box) if best and best.box else None,
                "source": best.source if best else None,
                "plates": [{"text": p.text, "score": p.score, "box": list(p.box) if p.box else None, "source": p.source}
                           for p in ps],
                "photo_status": photo_status,
            }
        last = ids[-1]

