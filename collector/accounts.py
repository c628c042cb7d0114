"""Accounts: registration, password checks with a log-in rate limit, API tokens, organisers."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from .models import ApiToken, LoginFailure, User, utcnow

# OWASP Password Storage Cheat Sheet, Argon2id: 19 MiB of memory, 2 iterations, 1 lane.
hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_DUMMY_HASH = hasher.hash("timing-equaliser")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = 10
FAILURE_WINDOW = dt.timedelta(minutes=15)
TOKEN_PREFIX = "pc_"


class AccountError(ValueError):
    """A sentence for the person filling in the form; ``field`` names the form field."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def normalise_email(email: str) -> str:
    return (email or "").strip().lower()


def create_user(db, email: str, name: str, password: str, licence: str, organiser: bool = False) -> User:
    email = normalise_email(email)
    name = (name or "").strip()
    if not EMAIL_RE.match(email) or len(email) > 254:
        raise AccountError("Enter a valid email address.", "email")
    if not name or len(name) > 120:
        raise AccountError("Enter your name (at most 120 characters).", "name")
    if len(password or "") < MIN_PASSWORD:
        raise AccountError(f"Choose a password of at least {MIN_PASSWORD} characters.", "password")
    if len(password) > 1024:
        raise AccountError("That password is too long.", "password")
    user = User(
        email=email,
        name=name,
        password_hash=hasher.hash(password),
        is_organiser=organiser,
        licence=licence,
        consented_at=utcnow(),
    )
    try:
        with db.write_transaction(lock=False) as tx:
            tx.add(user)
    except IntegrityError:
        raise AccountError("An account with this email already exists. Log in instead.", "email") from None
    return user


class RateLimited(Exception):
    pass


def authenticate(db, email: str, password: str, remote_addr: str | None, max_failures: int) -> User | None:
    """The user, or None for a wrong email or password; RateLimited after too many failures."""
    email = normalise_email(email)
    keys = [f"email:{email}"] + ([f"ip:{remote_addr}"] if remote_addr else [])
    since = utcnow() - FAILURE_WINDOW
    with db.Session() as session:
        recent = session.execute(
            select(LoginFailure.key, func.count()).where(LoginFailure.key.in_(keys), LoginFailure.created_at > since).group_by(LoginFailure.key)
        ).all()
        # An address is shared by everyone on the meetup wifi, so it gets more room than an email.
        limits = {k: (max_failures if k.startswith("email:") else max_failures * 10) for k in keys}
        if any(n >= limits[k] for k, n in recent):
            raise RateLimited()
        user = session.execute(select(User).where(User.email == email)).scalar_one_or_none()
    try:
        ok = hasher.verify(user.password_hash if user else _DUMMY_HASH, password or "") and user is not None
    except (VerificationError, InvalidHashError):
        ok = False
    with db.write_transaction(lock=False) as tx:
        if ok:
            tx.execute(delete(LoginFailure).where(LoginFailure.key == keys[0]))
            if hasher.check_needs_rehash(user.password_hash):
                tx.get(User, user.id).password_hash = hasher.hash(password)
        else:
            tx.add_all(LoginFailure(key=k) for k in keys)
            tx.execute(delete(LoginFailure).where(LoginFailure.created_at < utcnow() - 4 * FAILURE_WINDOW))
    return user if ok else None


@dataclass(frozen=True)
class NewToken:
    token: str  # shown once
    record: ApiToken


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(db, user_id: int) -> NewToken:
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = ApiToken(user_id=user_id, token_hash=_token_hash(token), prefix=token[:10])
    with db.write_transaction(lock=False) as tx:
        tx.add(record)
    return NewToken(token, record)


def revoke_token(db, user_id: int, token_id: int) -> bool:
    with db.write_transaction(lock=False) as tx:
        record = tx.get(ApiToken, token_id)
        if record is None or record.user_id != user_id or record.revoked_at:
            return False
        record.revoked_at = utcnow()
        return True


def user_for_token(session, token: str) -> User | None:
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        return None
    record = session.execute(
        select(ApiToken).where(ApiToken.token_hash == _token_hash(token), ApiToken.revoked_at.is_(None))
    ).scalar_one_or_none()
    return record.user if record else None


def user_by_email(session, email: str) -> User | None:
    return session.execute(select(User).where(User.email == normalise_email(email))).scalar_one_or_none()
