"""Accounts: registration, password checks with log-in rate limits, sessions, API tokens."""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from collector.platform.models import ApiToken, User, utcnow
from collector.web import limits
from collector.web.limits import Limit, RateLimited

# OWASP Password Storage Cheat Sheet, Argon2id: 19 MiB of memory, 2 iterations, 1 lane.
hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = 10
FAILURE_WINDOW = 15 * 60  # seconds
TOKEN_PREFIX = "pc_"


class AccountError(ValueError):
    """A sentence for the person filling in the form; ``field`` names the form field."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class DuplicateEmail(AccountError):
    pass


def normalise_email(email: str) -> str:
    return (email or "").strip().lower()


def _check_password(password: str) -> None:
    if len(password or "") < MIN_PASSWORD:
        raise AccountError(f"Choose a password of at least {MIN_PASSWORD} characters.", "password")
    if len(password) > 1024:
        raise AccountError("That password is too long.", "password")


@functools.cache
def _dummy_hash() -> str:
    """A hash to verify against when the email is unknown, so that a wrong email costs as much
    time as a wrong password. Made on first use (an Argon2 hash takes ~20 ms and 19 MiB), not
    at import."""
    return hasher.hash("timing-equaliser")


def create_user(db, email: str, name: str, password: str, licence: str, organiser: bool = False) -> User:
    email = normalise_email(email)
    name = (name or "").strip()
    if not EMAIL_RE.match(email) or len(email) > 254:
        raise AccountError("Enter a valid email address.", "email")
    if not name or len(name) > 120:
        raise AccountError("Enter your name (at most 120 characters).", "name")
    _check_password(password)
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
        raise DuplicateEmail("An account with this email already exists. Log in instead.", "email") from None
    return user


def _too_many_logins(wait: int) -> RateLimited:
    return RateLimited(wait, f"Too many failed log-ins for this email from here. Wait {limits.wait_phrase(wait)}, then try again.")


def authenticate(db, email: str, password: str, remote_addr: str | None, max_failures: int) -> User | None:
    """The user, or None for a wrong email or password; RateLimited after too many failures.

    Failures are counted per (address, email) pair, so a guesser is stopped without locking out
    the owner elsewhere, nor everyone else behind the guesser's address (a meetup wifi). Two
    wider ceilings bound what one address can try across unknown emails (x30) and what many
    addresses can try on one account (x10); even past them, a first attempt for an email from
    an address is still checked, so the owner logging in correctly is never refused.
    """
    email = normalise_email(email)
    addr = remote_addr or "unknown"
    pair_key, addr_key, account_key = f"login:pair:{addr}|{email}", f"login:addr:{addr}", f"login:account:{email}"
    pair = Limit(max_failures, FAILURE_WINDOW)
    per_addr = Limit(max_failures * 30, FAILURE_WINDOW)
    per_account = Limit(max_failures * 10, FAILURE_WINDOW)
    with db.Session() as session:
        wait = limits.peek(session, pair_key, pair)
        if wait is not None:
            raise _too_many_logins(wait)
        user = session.execute(select(User).where(User.email == email)).scalar_one_or_none()
        tried_before = limits.count(session, pair_key, pair) > 0
        addr_wait = limits.peek(session, addr_key, per_addr)
        account_wait = limits.peek(session, account_key, per_account) if tried_before else None
    if account_wait is not None or (addr_wait is not None and (tried_before or user is None)):
        raise _too_many_logins(account_wait or addr_wait)
    try:
        ok = hasher.verify(user.password_hash if user else _dummy_hash(), password or "") and user is not None
    except (VerificationError, InvalidHashError):
        ok = False
    if ok:
        limits.reset(db, pair_key)
        if hasher.check_needs_rehash(user.password_hash):
            with db.write_transaction(lock=False) as tx:
                tx.get(User, user.id).password_hash = hasher.hash(password)
        return user
    for key, limit in ((pair_key, pair), (addr_key, per_addr), (account_key, per_account)):
        limits.hit(db, key, limit)
    if addr_wait is not None:  # past the address's ceiling every failure reads the same
        raise _too_many_logins(addr_wait)
    return None


def end_sessions(db, user_id: int) -> None:
    """Invalidate every session and remember cookie of the account (see User.session_version)."""
    with db.write_transaction(lock=False) as tx:
        tx.execute(update(User).where(User.id == user_id).values(session_version=User.session_version + 1))


def set_password(db, user_id: int, password: str) -> None:
    """Change the password and end every earlier session of the account."""
    _check_password(password)
    with db.write_transaction(lock=False) as tx:
        tx.execute(
            update(User)
            .where(User.id == user_id)
            .values(password_hash=hasher.hash(password), session_version=User.session_version + 1)
        )


@dataclass(frozen=True)
class NewToken:
    token: str  # shown once
    record: ApiToken


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TooManyTokens(AccountError):
    pass


def create_token(db, user_id: int, max_active: int | None = None) -> NewToken:
    """A new token; TooManyTokens when the account already has ``max_active`` active ones."""
    if max_active is not None:
        with db.Session() as session:
            active = session.scalar(
                select(func.count()).select_from(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
            )
        if active >= max_active:
            raise TooManyTokens(f"You already have {active} active API tokens: revoke one you no longer use, then create a new one.")
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
