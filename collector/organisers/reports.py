"""What organisers see: headline numbers, the contributors table and accepted photos over time.
Every figure is aggregated in the database, through indexes."""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
from dataclasses import dataclass

from sqlalchemy import bindparam, case, func, or_, select

from collector.platform.models import AcceptedHour, Photo, UploadRejection, User, utcnow

CREDITED = ("accepted", "flagged")
STATES = {"paid": "Fee paid", "in_progress": "In progress", "not_started": "Not started", "checked_in": "Checked in"}
SORTS = {"accepted": "Accepted photos", "last_upload": "Last upload", "name": "Name"}


def stats(session, quota: int) -> dict:
    attendee = User.is_organiser.is_(False)
    row = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((User.accepted_count >= quota, 1), else_=0)), 0),
            func.coalesce(func.sum(case(((User.accepted_count > 0) & (User.accepted_count < quota), 1), else_=0)), 0),
            func.coalesce(func.sum(case((User.accepted_count <= 0, 1), else_=0)), 0),
            func.coalesce(func.sum(case((User.checked_in_at.is_not(None), 1), else_=0)), 0),
        ).where(attendee)
    ).one()
    by_code = dict(session.execute(select(UploadRejection.code, func.count()).group_by(UploadRejection.code)).all())
    review = dict(session.execute(
        select(Photo.review_reason, func.count()).where(Photo.status == "rejected").group_by(Photo.review_reason)
    ).all())
    return {
        "quota": quota,
        "contributors": row[0],
        "paid": int(row[1]),
        "in_progress": int(row[2]),
        "not_started": int(row[3]),
        "checked_in": int(row[4]),
        "photos_accepted": session.scalar(select(func.count()).select_from(Photo).where(Photo.status.in_(CREDITED))),
        "rejected_attempts": sum(by_code.values()),
        "rejected_by_code": dict(sorted(by_code.items(), key=lambda kv: -kv[1])),
        "rejected_in_review": dict(sorted(((k or "other"), v) for k, v in review.items())),
        "plates": _plate_counts(session),
    }


@dataclass
class ContributorQuery:
    q: str = ""
    state: str = ""
    sort: str = "accepted"
    page: int = 1
    per_page: int = 50


def _matching(q: str):
    """Name or email containing ``q`` (any case), or the pass code ``q`` (any case, spaces aside)."""
    like = f"%{q.strip().lower()}%"
    code = q.upper().replace(" ", "")
    return or_(func.lower(User.name).like(like), User.email.like(like), User.pass_code == code)


def _contributors_select(quota: int, cq: ContributorQuery):
    query = select(User).where(User.is_organiser.is_(False))
    if cq.q:
        query = query.where(_matching(cq.q))
    if cq.state == "paid":
        query = query.where(User.accepted_count >= quota)
    elif cq.state == "in_progress":
        query = query.where(User.accepted_count > 0, User.accepted_count < quota)
    elif cq.state == "not_started":
        query = query.where(User.accepted_count <= 0)
    elif cq.state == "checked_in":
        query = query.where(User.checked_in_at.is_not(None))
    order = {
        "accepted": (User.accepted_count.desc(), User.id),
        "last_upload": (User.last_upload_at.desc().nulls_last(), User.id),
        "name": (User.name, User.id),
    }.get(cq.sort, (User.accepted_count.desc(), User.id))
    return query.order_by(*order)


def contributors(session, quota: int, cq: ContributorQuery) -> tuple[list[User], int]:
    query = _contributors_select(quota, cq)
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    users = session.scalars(query.offset((cq.page - 1) * cq.per_page).limit(cq.per_page)).all()
    return users, total


def find(session, q: str, limit: int = 20) -> list[User]:
    """The door's search: the first ``limit`` contributors matching ``q`` (as the contributors
    table's search does), by name."""
    return session.scalars(_contributors_select(0, ContributorQuery(q=q, sort="name")).limit(limit)).all()


@dataclass
class ContributorPhotos:
    photos: list[Photo]  # all of them, newest first (MAX_PHOTOS bounds the credited ones)
    rejected: list[UploadRejection]  # the latest refused uploads, newest first


def contributor_photos(session, user_id: int, refusals: int = 500) -> ContributorPhotos:
    """What "My photos", the organiser's contributor page and ``GET /api/v1/me`` list: every
    photo of the contributor and their last ``refusals`` refused uploads."""
    photos = session.scalars(select(Photo).where(Photo.user_id == user_id).order_by(Photo.id.desc())).all()
    rejected = session.scalars(
        select(UploadRejection).where(UploadRejection.user_id == user_id).order_by(UploadRejection.id.desc()).limit(refusals)
    ).all()
    return ContributorPhotos(list(photos), list(rejected))


def safe_cell(value):
    """Neutralise text a spreadsheet would run as a formula (OWASP's CSV injection advice).

    Numbers stay numbers (a negative longitude is no formula); None becomes an empty cell.
    The dashboard's CSV and the dataset export's manifest.csv both write through this.
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        return value
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def contributors_csv(session, quota: int, cq: ContributorQuery) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "email", "accepted", "paid", "last_upload", "checked_in_at", "registered"])
    columns = _contributors_select(quota, cq).with_only_columns(
        User.name, User.email, User.accepted_count, User.last_upload_at, User.checked_in_at, User.created_at
    )
    for name, email, accepted, last, checked, created in session.execute(columns):
        writer.writerow([
            safe_cell(name), safe_cell(email), accepted, "yes" if accepted >= quota else "no",
            last.isoformat(timespec="seconds") if last else "",
            checked.isoformat(timespec="seconds") if checked else "",
            created.isoformat(timespec="seconds"),
        ])
    return buf.getvalue()


def hour_of(when: dt.datetime) -> dt.datetime:
    return when.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def bump_hour(session, when: dt.datetime, delta: int) -> None:
    """Add ``delta`` to the credited photos of ``when``'s hour, in the caller's transaction."""
    session.execute(_bump_hour_prepared(session.get_bind().dialect.name, delta), {"bump_hour": hour_of(when)})


@functools.lru_cache(maxsize=8)
def _bump_hour_prepared(dialect: str, delta: int):
    """``bump_hour_statement`` built once per dialect and delta, the hour a bound parameter."""
    return bump_hour_statement(dialect, bindparam("bump_hour", type_=AcceptedHour.__table__.c.hour.type), delta)


def bump_hour_statement(dialect: str, hour, delta: int):
    """``bump_hour``'s upsert of ``hour`` (``hour_of``'s value, or a bound parameter for a
    caller that sends it inside a larger statement)."""
    table = AcceptedHour.__table__
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table).values(hour=hour, accepted=delta)
    return stmt.on_conflict_do_update(index_elements=[table.c.hour], set_={"accepted": table.c.accepted + delta})


def accepted_per_hour(session, hours: int = 48, now: dt.datetime | None = None) -> tuple[list[tuple[dt.datetime, int]], int]:
    """(hour, photos accepted that hour) for the last ``hours`` hours, and the total before them."""
    start = hour_of(now or utcnow()) - dt.timedelta(hours=hours - 1)
    counts = dict(session.execute(select(AcceptedHour.hour, AcceptedHour.accepted).where(AcceptedHour.hour >= start)).all())
    before = session.scalar(select(func.coalesce(func.sum(AcceptedHour.accepted), 0)).where(AcceptedHour.hour < start))
    series = [(start + dt.timedelta(hours=i), int(counts.get(start + dt.timedelta(hours=i), 0))) for i in range(hours)]
    return series, int(before)


def recent_chart(session, hours: int = 48, at_least: int = 6) -> str:
    """The dashboard's chart of the last ``hours`` hours. Before any earlier photo, it starts at
    the first hour with photos (keeping ``at_least`` hours), not at 40 empty ones."""
    series, before = accepted_per_hour(session, hours)
    if before == 0:
        first = next((i for i, (_, n) in enumerate(series) if n), len(series))
        series = series[max(min(first, len(series) - at_least), 0):]
    return chart_svg(series, before)


def chart_svg(series: list[tuple[dt.datetime, int]], before: int, width: int = 720, height: int = 220) -> str:
    """Bars per hour and a cumulative line, as inline SVG: no script, no CDN."""
    pad_l, pad_b, pad_t = 40, 24, 12
    w, h = width - pad_l - 8, height - pad_b - pad_t
    top = max([c for _, c in series] + [1])
    cumulative, total = [], before
    for _, c in series:
        total += c
        cumulative.append(total)
    ctop = max(cumulative + [1])
    bw = w / max(len(series), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Accepted photos per hour over the last {len(series)} hours; {total} in all" class="chart">']
    for i, (hour, c) in enumerate(series):
        bh = h * c / top
        x = pad_l + i * bw
        parts.append(f'<rect x="{x:.1f}" y="{pad_t + h - bh:.1f}" width="{max(bw - 1, 1):.1f}" height="{bh:.1f}" class="bar">'
                     f'<title>{hour:%d %b %H:00} UTC: {c}</title></rect>')
        if hour.hour % 6 == 0:
            parts.append(f'<text x="{x:.1f}" y="{height - 6}" class="tick">{hour:%d %H}h</text>')
    points = " ".join(f"{pad_l + (i + 0.5) * bw:.1f},{pad_t + h - h * v / ctop:.1f}" for i, v in enumerate(cumulative))
    parts.append(f'<polyline points="{points}" class="cumulative" fill="none"/>')
    parts.append(f'<text x="4" y="{pad_t + 10}" class="tick">{top}/h</text>')
    parts.append(f'<text x="{width - 8}" y="{pad_t + 10}" text-anchor="end" class="tick cum">total {total}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _plate_counts(session) -> dict[str, int]:
    from collector.plates import jobs  # jobs -> credits -> reports: imported when first needed

    return jobs.counts(session)
