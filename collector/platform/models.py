"""Typed models. No commits here: the domain function that owns a transaction commits it."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator):
    """Stored as naive UTC on every database, returned as an aware UTC datetime."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=dt.UTC)


class Base(DeclarativeBase):
    pass


# The integer primary key and the "when" columns that default to now, declared once for every
# table (SQLAlchemy's Annotated column types; the schema is unchanged).
IntId = Annotated[int, mapped_column(Integer, primary_key=True)]
DefaultNow = Annotated[dt.datetime, mapped_column(UTCDateTime, default=utcnow)]


class User(Base):
    __tablename__ = "users"

    id: Mapped[IntId]
    email: Mapped[str] = mapped_column(String(254), unique=True)  # stored lower-cased
    name: Mapped[str] = mapped_column(String(120))
    password_hash: Mapped[str] = mapped_column(String(255))
    is_organiser: Mapped[bool] = mapped_column(Boolean, default=False)
    licence: Mapped[str] = mapped_column(String(60))
    consented_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[DefaultNow]
    # Kept in the same transaction as every photo row that changes it; see intake/credits.py.
    accepted_count: Mapped[int] = mapped_column(Integer, default=0, index=True)
    last_upload_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    # The meetup pass: a short code people can read out at the door, and the check-in.
    pass_code: Mapped[str | None] = mapped_column(String(12), unique=True, index=True)
    checked_in_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    checked_in_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    # Part of every session and remember cookie (get_id); raised by log-out and password change,
    # which ends every earlier session of the account at once.
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    photos: Mapped[list[Photo]] = relationship(back_populates="user", order_by="Photo.id.desc()")

    # Flask-Login protocol
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_active(self) -> bool:
        return True

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        return f"{self.id}:{self.session_version}"


class ApiToken(Base):
    """Only a SHA-256 of the token is kept; the token itself is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[IntId]
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[DefaultNow]
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship()


class Photo(Base):
    __tablename__ = "photos"

    id: Mapped[IntId]
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    # The unique constraint has the last word on exact duplicates, across all contributors.
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    storage_key: Mapped[str] = mapped_column(String(200))
    thumb_key: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(10))  # JPEG, PNG, WEBP, HEIF
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)  # as displayed, after orientation
    height: Mapped[int] = mapped_column(Integer)
    orientation: Mapped[int] = mapped_column(Integer, default=1)
    captured_at: Mapped[dt.datetime | None] = mapped_column(DateTime)  # camera-local time, no zone
    camera_make: Mapped[str | None] = mapped_column(String(100))
    camera_model: Mapped[str | None] = mapped_column(String(100))
    gps_lat: Mapped[float | None] = mapped_column(Float)
    gps_lon: Mapped[float | None] = mapped_column(Float)
    pdq: Mapped[str] = mapped_column(String(64))  # 256-bit PDQ hash, hex
    pdq_quality: Mapped[int] = mapped_column(Integer)
    sharpness: Mapped[float] = mapped_column(Float)
    brightness: Mapped[float] = mapped_column(Float)
    contrast: Mapped[float] = mapped_column(Float)
    # Distance to the nearest other photo found at intake (None: none within the index radius).
    nearest_distance: Mapped[int | None] = mapped_column(Integer)
    original_filename: Mapped[str] = mapped_column(String(255))
    # accepted | flagged (kept, credited, worth a look) | rejected (in review: no credit, bytes blocked)
    status: Mapped[str] = mapped_column(String(20), default="accepted", index=True)
    # Taken within 2 seconds of another photo of the same contributor (set at intake).
    burst: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    review_reason: Mapped[str | None] = mapped_column(String(40))
    review_note: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[DefaultNow] = mapped_column(index=True)

    user: Mapped[User] = relationship(back_populates="photos")
    actions: Mapped[list[ReviewAction]] = relationship(order_by="ReviewAction.id")

    __table_args__ = (
        Index("ix_photos_user_status", "user_id", "status"),
        Index("ix_photos_user_captured", "user_id", "captured_at"),
    )


class ReviewAction(Base):
    """The audit log of review: who did what to which photo, when and why."""

    __tablename__ = "review_actions"

    id: Mapped[IntId]
    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id", ondelete="CASCADE"), index=True)
    organiser_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(20))  # reject | restore | flag
    reason: Mapped[str | None] = mapped_column(String(40))
    note: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[DefaultNow]

    organiser: Mapped[User] = relationship()


class AcceptedHour(Base):
    """Credited photos per hour of upload, kept in the transactions that change them, so the
    dashboard's chart reads 48 rows instead of aggregating every photo."""

    __tablename__ = "accepted_hours"

    hour: Mapped[dt.datetime] = mapped_column(UTCDateTime, primary_key=True)
    accepted: Mapped[int] = mapped_column(Integer, default=0)


class PhotoHash(Base):
    """The PDQ hash and owner of each photo in a narrow table of its own, which every
    process's near-duplicate index (``dedup.NearIndex``) loads and catches up from by
    ``photo_id``: a million rows read in a few seconds, where the wide photos table is slower."""

    __tablename__ = "photo_hashes"

    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer)
    pdq: Mapped[str] = mapped_column(String(64))


class UploadRejection(Base):
    """Every refused upload attempt, for the contributor's page and the organisers' dashboard."""

    __tablename__ = "upload_rejections"

    id: Mapped[IntId]
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(String(40), index=True)
    message: Mapped[str] = mapped_column(String(500))
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[DefaultNow]

    # by sha256: a file refused for its bytes alone (a bomb, a corrupt file) is answered again
    # from this table without being decoded again (intake.decide)
    __table_args__ = (Index("ix_upload_rejections_user_created", "user_id", "created_at"),
                      Index("ix_upload_rejections_sha256", "sha256"))


class RateCounter(Base):
    """One fixed-window counter per limit key (see web/limits.py), shared by every worker and machine."""

    __tablename__ = "rate_counters"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    window_start: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    count: Mapped[int] = mapped_column(Integer, default=0)


class ResumableUpload(Base):
    """One tus upload in progress (or finished, kept until it expires so a lost reply can be
    asked for again). The state lives here so any worker on any machine can take the next
    PATCH; the bytes live on the shared storage as one part object per PATCH (see web/resumable.py).
    """

    __tablename__ = "resumable_uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # random, in the upload URL
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    length: Mapped[int] = mapped_column(BigInteger)
    offset: Mapped[int] = mapped_column(BigInteger, default=0)
    # The end offset of each stored part, comma-separated, in order: "1048576,2097152,..."
    parts: Mapped[str] = mapped_column(String(2000), default="")
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str | None] = mapped_column(String(64))  # as declared by the client, if any
    # receiving | finishing (one worker runs intake) | done (verdict kept)
    state: Mapped[str] = mapped_column(String(20), default="receiving")
    verdict: Mapped[str | None] = mapped_column(String(4000))  # the verdict as JSON
    created_at: Mapped[DefaultNow]
    updated_at: Mapped[DefaultNow]
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class PlateRead(Base):
    """The plate job of one photo and its outcome. A credited photo without a row is pending.

    A worker claims a photo by writing this row (``state`` reading, a random ``claim`` token and
    ``claimed_at``); the result is written only by the holder of that token, in the transaction
    that moves the state on, so a photo is never written twice. A lease older than the worker's
    lease time is claimed again: a worker killed mid-photo leaves the photo to another.
    """

    __tablename__ = "plate_reads"

    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[str] = mapped_column(String(10))  # reading | found | none | error
    claim: Mapped[str] = mapped_column(String(32))
    worker: Mapped[str] = mapped_column(String(100))
    claimed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    read_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    cpu_ms: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(300))
    # Why the photo's credit is held back (no_plate | repeat_plate), None when it counts.
    credit_held: Mapped[str | None] = mapped_column(String(20))
    # An organiser looked at it: approved a photo without a plate, or corrected the text.
    reviewed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    # Another contributor's photo with the same plate text and a box of the same shape.
    similar_to_id: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (Index("ix_plate_reads_state_claimed", "state", "claimed_at"),)


class PhotoPlate(Base):
    """One plate in one photo: its box in the oriented photo's pixels and its text.

    ``text`` is the text that counts: an organiser's correction when there is one (``source``
    organiser), else the machine's. The machine's own reading stays in ``machine_text``.
    """

    __tablename__ = "photo_plates"

    id: Mapped[IntId]
    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)  # 0 = the best plate of the photo
    x: Mapped[int | None] = mapped_column(Integer)
    y: Mapped[int | None] = mapped_column(Integer)
    w: Mapped[int | None] = mapped_column(Integer)
    h: Mapped[int | None] = mapped_column(Integer)
    machine_text: Mapped[str | None] = mapped_column(String(20))
    score: Mapped[float | None] = mapped_column(Float)
    text: Mapped[str] = mapped_column(String(20))
    source: Mapped[str] = mapped_column(String(10))  # machine | organiser

    __table_args__ = (
        Index("ux_photo_plates_photo_position", "photo_id", "position", unique=True),
        Index("ix_photo_plates_text", "text"),
    )

    @property
    def box(self) -> tuple[int, int, int, int] | None:
        return None if self.x is None else (self.x, self.y, self.w, self.h)
