"""The one door in: every photo, from the form, the JSON API or the bulk import, comes here.

``Intake.submit`` runs one upload through named stages, each asked once and in one order:

1. **receive**: spool the stream to a private folder, counting and hashing in the same pass;
2. **known**: what the database already says from the hash alone (``decide`` without pixels):
   the same bytes accepted before, refused for their bytes before, or the contributor's cap;
3. **inspect** (``inspection.inspect``): format, bounded decode, metadata, fingerprint; no database;
4. **check**: the ordered ``checks.CHECKS``;
5. **decide**: exact, refused, cap, then near-duplicate, always in that order;
6. **store** the original and thumbnail under keys derived from the hash;
7. **commit**: ``decide`` again under the write lock, then the photo, its hash and its credit
   (``credits.adjust``) in one transaction.

A refusal or a failure after **store** takes back the objects this attempt created, so nothing
stored is left without its row (``_discard``); a crash in between leaves an object that
``flask storage-check`` reports and quarantines.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import bindparam, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from collector.intake import checks, credits, dedup, imaging
from collector.intake.checks import Rejection, reject
from collector.intake.credits import Progress, progress_of
from collector.intake.inspection import BYTES_ONLY_CODES, Inspection, inspect
from collector.organisers import reports
from collector.platform.config import Settings
from collector.platform.db import CommitUnconfirmed, Database
from collector.platform.models import Photo, UploadRejection, utcnow
from collector.platform.storage import Storage, StorageUnavailable, photo_key, thumb_key

CHUNK = 1 << 20
SPOOL_MAX_AGE = 3600  # seconds; no request lives this long (the server's timeouts are shorter)
log = logging.getLogger(__name__)


@dataclass
class Verdict:
    status: str  # accepted | already_uploaded | rejected
    code: str | None
    message: str
    progress: Progress
    photo_id: int | None = None
    sha256: str | None = None
    metadata: dict | None = None
    filename: str = ""

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    def as_dict(self) -> dict:
        return {
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "photo": {"id": self.photo_id, "sha256": self.sha256, "metadata": self.metadata} if self.photo_id else None,
            "progress": self.progress.as_dict(),
        }


@dataclass
class Spooled:
    path: Path
    size: int
    sha256: str
    head: bytes
    truncated: bool = False  # stopped reading at the byte limit


@contextmanager
def spool(stream: BinaryIO, max_bytes: int, spool_dir: Path | None = None) -> Iterator[Spooled]:
    """Copy the stream to a private temporary file, counting and hashing in the same pass."""
    if spool_dir is not None:
        spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", dir=spool_dir)
    path = Path(name)
    try:
        digest = hashlib.sha256()
        size = 0
        head = b""
        truncated = False
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(CHUNK):
                if size + len(chunk) > max_bytes:
                    truncated = True
                    size += len(chunk)
                    break
                if len(head) < 64:
                    head = (head + chunk)[:64]
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        yield Spooled(path, size, digest.hexdigest(), head, truncated)
    finally:
        path.unlink(missing_ok=True)


def sweep_spool(spool_dir: Path | None, max_age: float = SPOOL_MAX_AGE) -> list[Path]:
    """Remove spool files older than ``max_age`` seconds (left by killed workers); returns them."""
    removed: list[Path] = []
    if spool_dir is None or not spool_dir.is_dir():
        return removed
    cutoff = time.time() - max_age
    for path in spool_dir.glob("upload-*"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def clean_filename(name: str | None) -> str:
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()
    return name[:255] or "(unnamed)"


@dataclass(frozen=True)
class Stored:
    """The keys an attempt wrote, and which of them it created (and so may take back)."""

    key: str
    thumb_key: str
    created: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    """What ``decide`` found: a verdict that ends the upload (or None), whether a photo row
    holds these very bytes (their stored objects are then in use), and the nearest photo."""

    verdict: Verdict | None = None
    exact: bool = False
    near: dedup.Match | None = None


class Refused(Exception):
    """Raised inside the write transaction to roll it back with the decision's verdict."""

    def __init__(self, decision: Decision):
        super().__init__(decision.verdict.code)
        self.decision = decision


@dataclass
class Intake:
    """Everything ``submit`` needs, built once per app by ``create_app``."""

    db: Database
    storage: Storage
    settings: Settings
    spool_dir: Path | None = field(default=None)
    _swept: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.spool_dir is None:
            self.spool_dir = Path(self.settings["DATA_DIR"]) / "spool"

    # -- the stages ----------------------------------------------------------------------

    def submit(self, user_id: int, stream: BinaryIO, filename: str | None) -> Verdict:
        filename = clean_filename(filename)
        self._sweep_spool_once()
        with spool(stream, self.settings["MAX_UPLOAD_MB"] * 1024 * 1024, self.spool_dir) as up:
            verdict = self._stages(user_id, up, filename)
        verdict.filename = filename
        if verdict.status == "rejected":
            self.record_rejection(user_id, verdict.code, verdict.message, filename, verdict.sha256, up.size)
        return verdict

    def _stages(self, user_id: int, up: Spooled, filename: str) -> Verdict:
        if verdict := self._received_verdict(user_id, up):
            return verdict
        ins = inspect(up.path, up.head, self.settings)
        if isinstance(ins, Rejection):
            return self._rejected(user_id, ins, up.sha256)
        described = ins.describe()
        if rejection := checks.first_rejection(ins, self.settings):
            return self._rejected(user_id, rejection, up.sha256, described)
        if verdict := self._near_verdict(user_id, up.sha256, ins, described):
            return verdict
        stored = self._store(user_id, up, ins, described)
        if isinstance(stored, Verdict):
            return stored
        return self._commit_or_take_back(user_id, up, ins, described, stored, filename)

    def _received_verdict(self, user_id: int, up: Spooled) -> Verdict | None:
        """The verdict on a spooled upload before its bytes are read: empty, over the size
        limit, or ``known`` from its hash alone."""
        if up.size == 0:
            return self._rejected(user_id, reject("empty_file"))
        if up.truncated:
            return self._rejected(user_id, reject("too_large", max_mb=self.settings["MAX_UPLOAD_MB"]))
        return self.known(user_id, up.sha256)

    def _near_verdict(self, user_id: int, sha256: str, ins: Inspection, described: dict) -> Verdict | None:
        """Near-duplicates outside the lock, where they are usually found; should one turn up,
        ``decide`` asks the exact and cap questions again first, so a retry racing its own
        first attempt is "already uploaded", never "near duplicate"."""
        with self.db.Session() as session:
            near = dedup.nearest(session, ins.fingerprint.variants)
            if near is None or near.distance > self.settings["NEAR_DUPLICATE_DISTANCE"]:
                return None
            return self.decide(session, user_id, sha256, ins.fingerprint.variants, described).verdict

    def _commit_or_take_back(self, user_id: int, up: Spooled, ins: Inspection, described: dict, stored: Stored,
                             filename: str) -> Verdict:
        """``_commit``; on a refusal or a failure, the stored objects this attempt created are
        taken back (unless a photo row holds these very bytes)."""
        try:
            return self._commit(user_id, up, ins, described, stored, filename)
        except Refused as refused:
            if not refused.decision.exact:
                self._discard(stored)
            return refused.decision.verdict
        except StorageUnavailable:
            self._discard(stored)
            return self._rejected(user_id, reject("storage_unavailable"), up.sha256, described)
        except CommitUnconfirmed:
            raise  # the row may be in: its objects stay (the client is told to try again)
        except IntegrityError:
            # Only reachable if a writer bypassed the lock: the unique constraint still decides,
            # and a row now holds these bytes, so their objects stay.
            return self.known(user_id, up.sha256) or self._rejected(user_id, reject("duplicate"), up.sha256)
        except BaseException:
            self._discard(stored)  # the database failed us: take back what this attempt wrote
            raise

    def known(self, user_id: int, sha256: str) -> Verdict | None:
        """The verdict the hash alone earns (``decide`` before any pixel is read), or None when
        the bytes are needed. Also answers clients that ask before sending a file."""
        with self.db.Session() as session:
            return self.decide(session, user_id, sha256).verdict

    def decide(self, session: Session, user_id: int, sha256: str, variants: list[str] | None = None,
               described: dict | None = None) -> Decision:
        """Exact, refused before, cap, then (given ``variants``) near: the first that applies.

        The same questions in the same order before the bytes are read, after, and under the
        lock, so two attempts racing each other get the answer a person expects.
        """
        facts = _facts(session, user_id, sha256)
        progress = Progress(facts.accepted or 0, self.settings["QUOTA"])

        def refused(rejection: Rejection, exact: bool = False, **kw) -> Decision:
            return Decision(Verdict("rejected", rejection.code, rejection.message, progress, sha256=sha256, **kw), exact)

        if facts.photo_id is not None:
            if facts.status == "rejected":  # refused in review: its bytes stay blocked for everyone
                return refused(reject("rejected_in_review"), exact=True)
            if facts.owner_id == user_id:
                # A retry after a lost response: the same answer, no second credit.
                photo = session.get(Photo, facts.photo_id)
                return Decision(Verdict("already_uploaded", "already_uploaded", checks.MESSAGES["already_uploaded"],
                                        progress, photo.id, photo.sha256, describe_photo(photo)), exact=True)
            return refused(reject("duplicate"), exact=True)
        if facts.refused_code is not None:
            return refused(Rejection(facts.refused_code, facts.refused_message))
        if progress.accepted >= self.settings["MAX_PHOTOS"]:
            return refused(reject("quota_cap", max_photos=self.settings["MAX_PHOTOS"]))
        near = dedup.nearest(session, variants) if variants is not None else None
        if near is not None and near.distance <= self.settings["NEAR_DUPLICATE_DISTANCE"]:
            whose = " (one of yours)" if near.user_id == user_id else ""
            return replace(refused(reject("near_duplicate", whose=whose), metadata=described), near=near)
        return Decision(near=near)

    def _store(self, user_id: int, up: Spooled, ins: Inspection, described: dict) -> Stored | Verdict:
        """Original, then thumbnail, under content-derived keys; nothing is kept unless both are."""
        key, tkey = photo_key(up.sha256, imaging.EXTENSIONS[ins.format]), thumb_key(up.sha256)
        created: list[str] = []
        try:
            if self.storage.put_file(key, up.path, up.sha256):
                created.append(key)
            if self.storage.put_bytes(tkey, imaging.thumbnail_jpeg(ins.small)):
                created.append(tkey)
        except StorageUnavailable:
            self._discard(Stored(key, tkey, tuple(created)))
            return self._rejected(user_id, reject("storage_unavailable"), up.sha256, described)
        return Stored(key, tkey, tuple(created))

    def _commit(self, user_id: int, up: Spooled, ins: Inspection, described: dict, stored: Stored,
                filename: str) -> Verdict:
        meta, fp = ins.metadata, ins.fingerprint
        with self.db.write_transaction() as tx:
            # The same questions again, now that no other worker can insert in between.
            decision = self.decide(tx, user_id, up.sha256, fp.variants, described)
            if decision.verdict is not None:
                raise Refused(decision)
            self._ensure_stored(stored, up, ins)
            near = decision.near
            photo_id, accepted = record_photo(tx, dict(
                user_id=user_id, sha256=up.sha256, storage_key=stored.key, thumb_key=stored.thumb_key,
                format=ins.format, size_bytes=up.size, width=ins.width, height=ins.height,
                orientation=meta.orientation, captured_at=meta.captured_at, camera_make=meta.camera_make,
                camera_model=meta.camera_model, gps_lat=meta.gps_lat, gps_lon=meta.gps_lon,
                pdq=fp.pdq, pdq_quality=fp.pdq_quality, sharpness=fp.sharpness, brightness=fp.brightness,
                contrast=fp.contrast, nearest_distance=near.distance if near else None,
                original_filename=filename, created_at=utcnow(),
            ))
        return Verdict("accepted", None, "Accepted: thank you!", Progress(accepted, self.settings["QUOTA"]),
                       photo_id, up.sha256, described)

    def _ensure_stored(self, stored: Stored, up: Spooled, ins: Inspection) -> None:
        """Objects this attempt found already there belong to a racing upload of the same bytes,
        which may have taken them back when it was refused; under the lock, make sure."""
        if stored.key not in stored.created and not self.storage.exists(stored.key):
            self.storage.put_file(stored.key, up.path, up.sha256)
        if stored.thumb_key not in stored.created and not self.storage.exists(stored.thumb_key):
            self.storage.put_bytes(stored.thumb_key, imaging.thumbnail_jpeg(ins.small))

    def _discard(self, stored: Stored) -> None:
        for key in stored.created:
            try:
                self.storage.delete(key)
            except (FileNotFoundError, StorageUnavailable, OSError):
                log.warning("could not take back %s; flask storage-check will report it", key)

    # -- answers -------------------------------------------------------------------------

    def progress(self, user_id: int) -> Progress:
        with self.db.Session() as session:
            return progress_of(session, user_id, self.settings["QUOTA"])

    def _rejected(self, user_id: int, rejection: Rejection, sha256: str | None = None, described: dict | None = None) -> Verdict:
        return Verdict("rejected", rejection.code, rejection.message, self.progress(user_id), sha256=sha256, metadata=described)

    def record_rejection(self, user_id: int, code: str, message: str, filename: str, sha256: str | None, size: int | None) -> None:
        with self.db.write_transaction(lock=False) as tx:
            tx.add(UploadRejection(user_id=user_id, code=code, message=message, filename=filename, sha256=sha256, size_bytes=size))

    # -- the spool folder ----------------------------------------------------------------

    def _sweep_spool_once(self) -> None:
        """Spool files hold whole originals (GPS included): a worker killed mid-upload leaves
        one behind. The first upload a process takes removes those older than any request."""
        if self._swept:
            return
        self._swept = True
        sweep_spool(self.spool_dir)

# The statements of every upload name tables, not mapped classes (see credits.USERS).
PHOTOS = Photo.__table__


def _facts_statement():
    """What the database says of some bytes and a contributor, in one round trip: the photo
    holding the bytes (id, owner, status), a refusal of the bytes alone, the credit count.
    Built once: building it cost more CPU than running it (bench/intake_db.py)."""
    sha, uid = bindparam("sha"), bindparam("uid")
    photos, refusals, users = PHOTOS.c, UploadRejection.__table__.c, credits.USERS.c

    def photo(col):
        return select(col).where(photos.sha256 == sha).scalar_subquery()

    def refusal(col):
        return (select(col).where(refusals.sha256 == sha, refusals.code.in_(BYTES_ONLY_CODES))
                .limit(1).scalar_subquery())

    return select(
        photo(photos.id).label("photo_id"), photo(photos.user_id).label("owner_id"), photo(photos.status).label("status"),
        refusal(refusals.code).label("refused_code"), refusal(refusals.message).label("refused_message"),
        select(users.accepted_count).where(users.id == uid).scalar_subquery().label("accepted"),
    )


_FACTS = _facts_statement()


def _facts(session: Session, user_id: int, sha256: str):
    return session.execute(_FACTS, {"sha": sha256, "uid": user_id}).one()


def record_photo(tx: Session, row: dict) -> tuple[int, int]:
    """The writes of an accepted upload, under the lock after ``decide``: the photo row (its
    burst neighbours flagged), its hash, the credit and the hour. Statements on the tables,
    a handful of round trips. Returns (photo id, the contributor's new count);
    bench/dedup_lookup.py times this at a million photos."""
    if tx.get_bind().dialect.name == "postgresql":
        return _record_photo_in_one_statement(tx, row)
    user_id, captured = row["user_id"], row.get("captured_at")
    row = {**row, "burst": captured is not None and mark_burst(tx, user_id, captured)}
    photo_id = tx.execute(_INSERT_PHOTO, row).scalar_one()
    dedup.add_hash(tx, photo_id, user_id, row["pdq"])
    return photo_id, credits.adjust(tx, user_id, +1, row["created_at"], new_upload=True)


def _record_photo_in_one_statement(tx: Session, row: dict) -> tuple[int, int]:
    """``record_photo`` on PostgreSQL: the same five writes as data-modifying CTEs of
    one statement, one round trip under the lock instead of five. They all run on one snapshot,
    so the burst update does not see the new row, as when it runs first."""
    captured, created = row.get("captured_at"), row["created_at"]
    columns = {**PHOTO_DEFAULTS, **row}
    columns.pop("burst")  # the statement's own: whether the burst update found neighbours
    # Parameter names are not column names: SQLAlchemy would read "created_at" as a value for
    # every table's created_at column it updates.
    params = {f"new_{k}": v for k, v in columns.items()} | {"new_hour": reports.hour_of(created)}
    if captured is not None:
        params["burst_from"], params["burst_to"] = burst_window(captured)
    photo_id, accepted = tx.execute(_one_statement(tuple(sorted(columns)), captured is not None), params).one()
    return photo_id, accepted


# Scalar column defaults: an INSERT inside a CTE gets none from SQLAlchemy.
PHOTO_DEFAULTS = {c.name: c.default.arg for c in PHOTOS.c if c.default is not None and c.default.is_scalar}


@functools.lru_cache(maxsize=16)
def _one_statement(columns: tuple[str, ...], burst_check: bool):
    """The statement of ``_record_photo_in_one_statement`` for one set of columns, built once
    with bound parameters: building it and its cache key costs ~1 ms of CPU, not spent under
    the lock this way."""
    p = {name: bindparam(f"new_{name}", type_=PHOTOS.c[name].type) for name in columns}
    ctes, burst = [], literal(False)
    if burst_check:
        taken = PHOTOS.c.captured_at.type
        flagged = burst_statement(p["user_id"], bindparam("burst_from", type_=taken), bindparam("burst_to", type_=taken))
        ctes.append(flagged.returning(PHOTOS.c.id).cte("flagged"))
        burst = select(ctes[0].c.id).exists()
    photo = insert(PHOTOS).values({**p, "burst": burst}).returning(PHOTOS.c.id).cte("new_photo")
    credit = credits.adjust_statement(p["user_id"], +1, p["created_at"], new_upload=True).cte("credit")
    hour = reports.bump_hour_statement("postgresql", bindparam("new_hour", type_=PHOTOS.c.created_at.type), +1)
    return (select(photo.c.id, select(credit.c.accepted_count).scalar_subquery())
            .add_cte(*ctes, dedup.add_hash_cte(photo.c.id, p["user_id"], p["pdq"]), hour.returning(literal(1)).cte("hour")))


BURST_SECONDS = 2


def mark_burst(session, user_id: int, captured_at: dt.datetime) -> bool:
    """Flag the contributor's photos taken within BURST_SECONDS of this one; True if any."""
    taken_from, taken_to = burst_window(captured_at)
    return bool(session.execute(_MARK_BURST, {"burst_uid": user_id, "burst_from": taken_from, "burst_to": taken_to}).rowcount)


def burst_window(captured_at: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    window = dt.timedelta(seconds=BURST_SECONDS)
    return captured_at - window, captured_at + window


def burst_statement(user_id, taken_from, taken_to):
    return update(PHOTOS).where(PHOTOS.c.user_id == user_id, PHOTOS.c.captured_at.between(taken_from, taken_to)).values(burst=True)


# Built once, executed with parameters: building a statement costs more CPU than SQLite
# takes to run it, under the lock (the columns of an INSERT come from the parameters' keys).
_INSERT_PHOTO = insert(PHOTOS).returning(PHOTOS.c.id)
_MARK_BURST = burst_statement(bindparam("burst_uid", type_=PHOTOS.c.user_id.type),
                              bindparam("burst_from", type_=PHOTOS.c.captured_at.type), bindparam("burst_to", type_=PHOTOS.c.captured_at.type))


def describe_photo(photo: Photo) -> dict:
    return {
        "captured_at": photo.captured_at.isoformat() if photo.captured_at else None,
        "camera_make": photo.camera_make,
        "camera_model": photo.camera_model,
        "orientation": photo.orientation,
        "gps_lat": photo.gps_lat,
        "gps_lon": photo.gps_lon,
        "width": photo.width,
        "height": photo.height,
        "format": photo.format,
    }
