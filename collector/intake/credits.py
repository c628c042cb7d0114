"""Quota and progress: how far a contributor is toward paying the fee."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from collector.organisers import reports
from collector.platform.models import Photo, User, utcnow


@dataclass(frozen=True)
class Progress:
    accepted: int
    quota: int

    @property
    def complete(self) -> bool:
        return self.accepted >= self.quota

    @property
    def remaining(self) -> int:
        return max(self.quota - self.accepted, 0)

    def as_dict(self) -> dict:
        return {"accepted": self.accepted, "quota": self.quota, "complete": self.complete}


# Intake's statements name tables, not mapped classes: the same SQL, without the ORM's
# per-statement work (about 160 microseconds of CPU each, bench/intake_db.py).
USERS = User.__table__


def progress_of(session: Session, user_id: int, quota: int) -> Progress:
    accepted = session.scalar(select(USERS.c.accepted_count).where(USERS.c.id == user_id)) or 0
    return Progress(accepted, quota)


def adjust(session: Session, user_id: int, delta: int, photo_created_at: dt.datetime, *, new_upload: bool = False) -> int:
    """Move a contributor's credit by ``delta`` (+1 a photo counts, -1 it no longer does), in
    the caller's transaction, and keep the hourly counters in step; returns the new count.

    The one place a credit changes: intake (+1), review reject (-1) and restore (+1) all come
    here, so ``User.accepted_count`` and ``accepted_per_hour`` can never disagree. The hour is
    the photo's acceptance hour, whenever the change happens. ``new_upload`` (intake) also
    records when the contributor last added a photo.
    """
    params = {"adjust_uid": user_id} | ({"adjust_at": photo_created_at} if new_upload else {})
    count = session.execute(_adjust_prepared(delta, new_upload), params).scalar_one()
    reports.bump_hour(session, photo_created_at, delta)
    return count


@functools.lru_cache(maxsize=8)
def _adjust_prepared(delta: int, new_upload: bool):
    """``adjust_statement`` built once with bound parameters: building a statement and its
    cache key costs more CPU than SQLite takes to run it, under intake's lock."""
    return adjust_statement(bindparam("adjust_uid", type_=USERS.c.id.type), delta,
                            bindparam("adjust_at", type_=USERS.c.last_upload_at.type), new_upload)


def adjust_statement(user_id, delta: int, photo_created_at, new_upload: bool):
    """``adjust``'s update of the count (returning it); the hour is ``reports.bump_hour``'s.
    Intake's one-statement write on PostgreSQL sends both inside it, with bound parameters
    for ``user_id`` and ``photo_created_at``."""
    values: dict = {"accepted_count": USERS.c.accepted_count + delta}
    if new_upload:
        values["last_upload_at"] = photo_created_at
    return update(USERS).where(USERS.c.id == user_id).values(**values).returning(USERS.c.accepted_count)


# -- the meetup pass ------------------------------------------------------------------------

PASS_SALT = "meetup-pass"
CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # no 0/O, 1/I: read out loud at the door


def pass_token(secret: str, user_id: int) -> str:
    """Signed with the app's secret: names the contributor, cannot be forged or guessed."""
    return URLSafeSerializer(secret, salt=PASS_SALT).dumps({"u": user_id})


def user_id_from_token(secret: str, token: str) -> int | None:
    try:
        data = URLSafeSerializer(secret, salt=PASS_SALT).loads(token)
        return int(data["u"])
    except (BadSignature, KeyError, TypeError, ValueError):
        return None


def short_code(secret: str, user_id: int) -> str:
    digest = hmac.new(secret.encode(), f"pass-code:{user_id}".encode(), hashlib.sha256).digest()
    chars = [CODE_ALPHABET[b % len(CODE_ALPHABET)] for b in digest[:8]]
    return "".join(chars[:4]) + "-" + "".join(chars[4:])


def ensure_pass_code(db, secret: str, user_id: int) -> str:
    code = short_code(secret, user_id)
    with db.write_transaction(lock=False) as tx:
        user = tx.get(User, user_id)
        if user.pass_code != code:
            user.pass_code = code
    return code


@dataclass(frozen=True)
class PassCheck:
    user: User | None
    valid: bool
    reason: str
    checked_in_at: object = None
    checked_in_by: str | None = None


def check_pass(session, user_id: int | None, quota: int) -> PassCheck:
    user = session.get(User, user_id) if user_id else None
    if user is None:
        return PassCheck(None, False, "This pass is not one of ours: it was forged, altered or mistyped.")
    by = session.get(User, user.checked_in_by_id).name if user.checked_in_by_id else None
    if user.accepted_count < quota:
        rejected = session.scalar(select(func.count()).select_from(Photo).where(Photo.user_id == user.id, Photo.status == "rejected"))
        why = f"; {rejected} rejected in review" if rejected else ""
        return PassCheck(user, False, f"The fee is not paid: only {user.accepted_count} of {quota} photos are accepted{why}.",
                         user.checked_in_at, by)
    return PassCheck(user, True, f"{user.accepted_count} accepted photos.", user.checked_in_at, by)


def check_in(db, user_id: int, organiser_id: int, quota: int) -> bool:
    """Record the check-in once; False if already checked in or not valid."""
    with db.write_transaction(lock=False) as tx:
        return bool(tx.execute(
            update(User).where(User.id == user_id, User.checked_in_at.is_(None), User.accepted_count >= quota)
            .values(checked_in_at=utcnow(), checked_in_by_id=organiser_id)
        ).rowcount)
