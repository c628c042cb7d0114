"""The one door in: every photo, from the form, the JSON API or the bulk import, comes here.

``submit`` reads the upload once (size and SHA-256 in the same pass), identifies and decodes it
once, reads its metadata, runs the checks, deduplicates in the database, stores the bytes under
a key derived from the hash, and only then commits the photo row with its credit. The lookups
are repeated under the write lock, so racing uploads on any number of workers cannot both win.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from . import checks, dedup, imaging, reports
from .checks import Rejection, reject
from .credits import Progress, progress_of
from .metadata import Metadata, read_metadata
from .models import Photo, UploadRejection, User, utcnow
from .storage import StorageUnavailable, photo_key, thumb_key

CHUNK = 1 << 20


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
def spool(stream: BinaryIO, max_bytes: int, tmp_dir: str | None = None) -> Iterator[Spooled]:
    """Copy the stream to a temporary file, counting and hashing in the same pass."""
    fd, name = tempfile.mkstemp(prefix="upload-", dir=tmp_dir)
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


def clean_filename(name: str | None) -> str:
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()
    return name[:255] or "(unnamed)"


@dataclass
class Intake:
    """Everything ``submit`` needs, built once per app by ``create_app``."""

    db: object  # collector.db.Database
    storage: object  # collector.storage.Storage
    settings: dict
    tmp_dir: str | None = field(default=None)

    def submit(self, user_id: int, stream: BinaryIO, filename: str | None) -> Verdict:
        filename = clean_filename(filename)
        s = self.settings
        with spool(stream, s["MAX_UPLOAD_MB"] * 1024 * 1024, self.tmp_dir) as up:
            verdict = self._submit(user_id, up, filename)
        verdict.filename = filename
        if verdict.status == "rejected":
            self.record_rejection(user_id, verdict.code, verdict.message, filename, verdict.sha256, up.size)
        return verdict

    def _submit(self, user_id: int, up: Spooled, filename: str) -> Verdict:
        s = self.settings
        if up.size == 0:
            return self._rejected(user_id, reject("empty_file"))
        if up.truncated:
            return self._rejected(user_id, reject("too_large", max_mb=s["MAX_UPLOAD_MB"]))

        session = self.db.Session()
        try:
            early = self._exact_or_quota(session, user_id, up.sha256)
        finally:
            session.close()
        if early:
            return early

        fmt, other = imaging.sniff(up.head)
        if rejection := checks.check_format(fmt, other):
            return self._rejected(user_id, rejection, up.sha256)
        try:
            decoded = imaging.decode(up.path, fmt, s["MAX_PIXELS"])
        except imaging.DecodeError as exc:
            if exc.code == "too_many_pixels":
                return self._rejected(user_id, reject("too_many_pixels", pixels=f"{_pixels_of(exc)}", max_pixels=f"{s['MAX_PIXELS']:,}"), up.sha256)
            return self._rejected(user_id, reject("corrupt"), up.sha256)

        meta = read_metadata(decoded.exif)
        if decoded.orientation_applied:
            small, (width, height) = decoded.small, (decoded.stored_width, decoded.stored_height)
        else:
            small = imaging.orient(decoded.small, meta.orientation)
            width, height = imaging.displayed_size(decoded.stored_width, decoded.stored_height, meta.orientation)
        described = describe(meta, width, height, fmt)

        for rejection in (
            checks.check_metadata_sound(meta),
            checks.check_size(width, height, s["MIN_SIDE"]),
            checks.check_metadata_policy(meta, s["CAPTURED_AFTER"], s["REQUIRE_EXIF"]),
        ):
            if rejection:
                return self._rejected(user_id, rejection, up.sha256, described)
        fp = imaging.fingerprint(small)
        if rejection := checks.check_quality(fp):
            return self._rejected(user_id, rejection, up.sha256, described)

        session = self.db.Session()
        try:
            near = dedup.nearest(session, fp.variants)
        finally:
            session.close()
        if near and near.distance <= s["NEAR_DUPLICATE_DISTANCE"]:
            return self._near_duplicate(user_id, near, up.sha256, described)

        # Store first, commit second: a crash in between leaves an unreferenced object, never
        # a row without its bytes. Keys are content-addressed, so a retry rewrites nothing.
        key, tkey = photo_key(up.sha256, imaging.EXTENSIONS[fmt]), thumb_key(up.sha256)
        try:
            self.storage.put_file(key, up.path, up.sha256)
            self.storage.put_bytes(tkey, imaging.thumbnail_jpeg(small))
        except StorageUnavailable:
            return self._rejected(user_id, reject("storage_unavailable"), up.sha256, described)

        photo = Photo(
            user_id=user_id,
            sha256=up.sha256,
            storage_key=key,
            thumb_key=tkey,
            format=fmt,
            size_bytes=up.size,
            width=width,
            height=height,
            orientation=meta.orientation,
            captured_at=meta.captured_at,
            camera_make=meta.camera_make,
            camera_model=meta.camera_model,
            gps_lat=meta.gps_lat,
            gps_lon=meta.gps_lon,
            pdq=fp.pdq,
            pdq_quality=fp.pdq_quality,
            sharpness=fp.sharpness,
            brightness=fp.brightness,
            contrast=fp.contrast,
            nearest_distance=near.distance if near else None,
            original_filename=filename,
        )
        try:
            with self.db.write_transaction() as tx:
                # The same questions again, now that no other worker can insert in between.
                early = self._exact_or_quota(tx, user_id, up.sha256)
                if early:
                    return early
                near = dedup.nearest(tx, fp.variants)
                if near and near.distance <= s["NEAR_DUPLICATE_DISTANCE"]:
                    return self._near_duplicate(user_id, near, up.sha256, described)
                photo.nearest_distance = near.distance if near else None
                photo.created_at = utcnow()
                if meta.captured_at is not None:
                    photo.burst = mark_burst(tx, user_id, meta.captured_at)
                tx.add(photo)
                tx.flush()
                dedup.add_bands(tx, photo.id, user_id, fp.pdq)
                reports.bump_hour(tx, photo.created_at, +1)
                tx.execute(
                    update(User)
                    .where(User.id == user_id)
                    .values(accepted_count=User.accepted_count + 1, last_upload_at=utcnow())
                )
                accepted = tx.scalar(select(User.accepted_count).where(User.id == user_id))
        except IntegrityError:
            # Only reachable if a writer bypassed the lock: the unique constraint still decides.
            session = self.db.Session()
            try:
                early = self._exact_or_quota(session, user_id, up.sha256)
            finally:
                session.close()
            return early or self._rejected(user_id, reject("duplicate"), up.sha256)
        return Verdict(
            "accepted",
            None,
            "Accepted: thank you!",
            Progress(accepted, s["QUOTA"]),
            photo.id,
            up.sha256,
            described,
        )

    # -- helpers -------------------------------------------------------------------------

    def progress(self, user_id: int) -> Progress:
        session = self.db.Session()
        try:
            return progress_of(session, user_id, self.settings["QUOTA"])
        finally:
            session.close()

    def _rejected(self, user_id: int, rejection: Rejection, sha256: str | None = None, described: dict | None = None) -> Verdict:
        return Verdict("rejected", rejection.code, rejection.message, self.progress(user_id), sha256=sha256, metadata=described)

    def _exact_or_quota(self, session, user_id: int, sha256: str) -> Verdict | None:
        existing = session.execute(select(Photo).where(Photo.sha256 == sha256)).scalar_one_or_none()
        if existing is not None:
            if existing.status == "rejected":  # refused in review: its bytes stay blocked for everyone
                return self._rejected(user_id, reject("rejected_in_review"), sha256)
            if existing.user_id == user_id:
                # A retry after a lost response: the same answer, no second credit.
                return Verdict(
                    "already_uploaded",
                    "already_uploaded",
                    checks.MESSAGES["already_uploaded"],
                    progress_of(session, user_id, self.settings["QUOTA"]),
                    existing.id,
                    existing.sha256,
                    describe_photo(existing),
                )
            return self._rejected(user_id, reject("duplicate"), sha256)
        count = session.scalar(select(User.accepted_count).where(User.id == user_id)) or 0
        if count >= self.settings["MAX_PHOTOS"]:
            return self._rejected(user_id, reject("quota_cap", max_photos=self.settings["MAX_PHOTOS"]), sha256)
        return None

    def _near_duplicate(self, user_id: int, near: dedup.Match, sha256: str, described: dict) -> Verdict:
        whose = " (one of yours)" if near.user_id == user_id else ""
        return self._rejected(user_id, reject("near_duplicate", whose=whose), sha256, described)

    def record_rejection(self, user_id: int, code: str, message: str, filename: str, sha256: str | None, size: int | None) -> None:
        with self.db.write_transaction(lock=False) as tx:
            tx.add(UploadRejection(user_id=user_id, code=code, message=message, filename=filename, sha256=sha256, size_bytes=size))


BURST_SECONDS = 2


def mark_burst(session, user_id: int, captured_at: dt.datetime) -> bool:
    """Flag the contributor's photos taken within BURST_SECONDS of this one; True if any."""
    window = dt.timedelta(seconds=BURST_SECONDS)
    return bool(session.execute(
        update(Photo).where(Photo.user_id == user_id, Photo.captured_at.between(captured_at - window, captured_at + window))
        .values(burst=True)
    ).rowcount)


def _pixels_of(exc: imaging.DecodeError) -> str:
    m = re.search(r"(\d+)x(\d+)", str(exc)) or re.search(r"\((\d+) pixels\)", str(exc))
    if m and m.lastindex == 2:
        return f"{int(m.group(1)) * int(m.group(2)):,}"
    return f"{int(m.group(1)):,}" if m else "too many"


def describe(meta: Metadata, width: int, height: int, fmt: str) -> dict:
    d = meta.as_dict()
    d.update(width=width, height=height, format=fmt)
    return d


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
