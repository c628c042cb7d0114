"""Rate limits that hold across workers and machines: fixed-window counters in the database.

Each limit is a key (``login:pair:ADDRESS|EMAIL``, ``upload:user:7`` ...) with a count per
window. One ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` statement both counts and answers,
on SQLite and PostgreSQL alike, so two workers cannot both slip under a limit. The database is
the store because it is the one service every worker already shares; no extra server to run.

A fixed window lets a client spend up to twice the count around a window's edge; the numbers
below are chosen with that in mind.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass

from sqlalchemy import case, delete, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from collector.platform.models import RateCounter, UTCDateTime, utcnow


@dataclass(frozen=True)
class Limit:
    count: int
    seconds: int

    @property
    def window(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.seconds)


class RateLimited(Exception):
    """Too many requests: ``retry_after`` seconds to wait, and a sentence for the person."""

    code = "rate_limited"

    def __init__(self, retry_after: int, message: str):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))
        self.message = message


def _retry_after(window_start: dt.datetime, limit: Limit, now: dt.datetime) -> int:
    return max(1, math.ceil((window_start + limit.window - now).total_seconds()))


def hit(db, key: str, limit: Limit) -> int | None:
    """Count one event under ``key``; the seconds to wait when it is over the limit, else None."""
    now = utcnow()
    insert = sqlite_insert if db.is_sqlite else pg_insert
    now_value = literal(now, UTCDateTime)
    expired = RateCounter.window_start <= literal(now - limit.window, UTCDateTime)
    stmt = (
        insert(RateCounter)
        .values(key=key, window_start=now, count=1)
        .on_conflict_do_update(
            index_elements=[RateCounter.key],
            set_={
                "count": case((expired, 1), else_=RateCounter.count + 1),
                "window_start": case((expired, now_value), else_=RateCounter.window_start),
            },
        )
        .returning(RateCounter.count, RateCounter.window_start)
    )
    with db.write_transaction(lock=False) as tx:
        count, start = tx.execute(stmt).one()
        if random.random() < 0.01:  # forget counters nobody has touched for a day
            tx.execute(delete(RateCounter).where(RateCounter.window_start < now - dt.timedelta(days=1)))
    if isinstance(start, dt.datetime) and start.tzinfo is None:
        start = start.replace(tzinfo=dt.UTC)
    return _retry_after(start, limit, now) if count > limit.count else None


def enforce(db, key: str, limit: Limit, message: str) -> None:
    """Count one event under ``key``; over the limit, raise RateLimited with ``message``, in
    which ``{wait}`` becomes how long to wait."""
    wait = hit(db, key, limit)
    if wait is not None:
        raise RateLimited(wait, message.format(wait=wait_phrase(wait)))


def peek(session, key: str, limit: Limit) -> int | None:
    """Like ``hit`` without counting: the seconds to wait when the limit is already reached."""
    now = utcnow()
    row = session.execute(select(RateCounter.count, RateCounter.window_start).where(RateCounter.key == key)).one_or_none()
    if row is None or row.window_start + limit.window <= now or row.count < limit.count:
        return None
    return _retry_after(row.window_start, limit, now)


def count(session, key: str, limit: Limit) -> int:
    """Events counted under ``key`` in its current window."""
    row = session.execute(select(RateCounter.count, RateCounter.window_start).where(RateCounter.key == key)).one_or_none()
    if row is None or row.window_start + limit.window <= utcnow():
        return 0
    return row.count


def reset(db, key: str) -> None:
    with db.write_transaction(lock=False) as tx:
        tx.execute(delete(RateCounter).where(RateCounter.key == key))


def wait_phrase(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} seconds"
    return f"{math.ceil(seconds / 60)} minutes"
