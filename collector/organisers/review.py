"""Organiser review: reject a photo (its credit goes down at once, its bytes stay blocked) or
restore it, with every action kept in an audit log."""

from __future__ import annotations

from sqlalchemy import func, or_, select, update

from collector.intake import checks, credits, dedup
from collector.organisers import reports
from collector.plates import jobs
from collector.platform.models import Photo, ReviewAction

REASONS = {
    "not_a_plate": "Not a number plate",
    "unreadable": "The plate cannot be read",
    "inappropriate": "Inappropriate content",
    "duplicate": "A duplicate of another photo",
    "other": "Other",
}
CREDITED = reports.CREDITED  # the statuses that count toward the fee


class ReviewError(ValueError):
    pass


def _note(note: str | None) -> str | None:
    return (note or "").strip()[:500] or None


def _move(tx, photo_id: int, where, audit: ReviewAction, **values):
    """Change the photo only if ``where`` still holds (a conditional update: two organisers
    acting at once change it once) and then log ``audit``; the photo's (user_id, created_at)
    when it changed, else None."""
    row = tx.execute(
        update(Photo).where(Photo.id == photo_id, where).values(**values).returning(Photo.user_id, Photo.created_at)
    ).first()
    if row is not None:
        tx.add(audit)
    return row


def reject(db, photo_id: int, organiser_id: int, reason: str, note: str | None = None) -> bool:
    """True when the photo went from credited to rejected (and its contributor lost a credit)."""
    note = _note(note)
    if reason not in REASONS:
        raise ReviewError(f"unknown reason {reason!r}")
    if reason == "other" and not note:
        raise ReviewError("Say why in the note when the reason is 'other'.")
    audit = ReviewAction(photo_id=photo_id, organiser_id=organiser_id, action="reject", reason=reason, note=note)
    with db.write_transaction(lock=False) as tx:
        moved = _move(tx, photo_id, Photo.status.in_(CREDITED), audit, status="rejected", review_reason=reason, review_note=note)
        # A credit the plate policy held back is gone already: take it only once.
        if moved and not jobs.clear_hold(tx, photo_id, organiser_id):
            credits.adjust(tx, moved.user_id, -1, moved.created_at)
        return moved is not None


def restore(db, photo_id: int, organiser_id: int, note: str | None = None) -> bool:
    """A rejected photo counts again; a flagged one loses its flag. True if anything changed."""
    note = _note(note)
    with db.write_transaction(lock=False) as tx:
        audit = ReviewAction(photo_id=photo_id, organiser_id=organiser_id, action="restore", note=note)
        if moved := _move(tx, photo_id, Photo.status == "rejected", audit, status="accepted", review_reason=None, review_note=None):
            credits.adjust(tx, moved.user_id, +1, moved.created_at)
            return True
        audit = ReviewAction(photo_id=photo_id, organiser_id=organiser_id, action="unflag", note=note)
        return _move(tx, photo_id, Photo.status == "flagged", audit, status="accepted") is not None


def flag(db, photo_id: int, organiser_id: int, note: str | None = None) -> bool:
    """Mark an accepted photo for a second look: it keeps its credit, and the export leaves it
    out unless asked (--include-flagged)."""
    audit = ReviewAction(photo_id=photo_id, organiser_id=organiser_id, action="flag", note=_note(note))
    with db.write_transaction(lock=False) as tx:
        return _move(tx, photo_id, Photo.status == "accepted", audit, status="flagged") is not None


# "Worth a look" filters for the review grid; each is a SQL condition on Photo.
def filter_condition(name: str):
    if name == "no_date":
        return Photo.captured_at.is_(None)
    if name == "borderline_quality":
        return or_(Photo.sharpness < checks.MIN_SHARPNESS * 4, Photo.contrast < checks.MIN_CONTRAST * 3,
                   Photo.brightness < checks.MIN_BRIGHTNESS * 2.5, Photo.brightness > 230)
    if name == "near_threshold":
        return Photo.nearest_distance.is_not(None)
    if name == "burst":
        return Photo.burst.is_(True)
    if name in ("rejected", "flagged"):
        return Photo.status == name
    return jobs.filter_condition(name)


FILTERS = {
    "": "All photos",
    "no_date": "No capture date",
    "borderline_quality": "Borderline quality",
    "near_threshold": f"Within {dedup.INDEX_RADIUS} bits of an earlier photo",
    "burst": "Taken in a burst (within 2 s)",
    "flagged": "Flagged",
    "rejected": "Rejected in review",
    **jobs.FILTERS,
}


def filters(near_duplicate_distance: int) -> dict[str, str]:
    """The filters worth offering under this NEAR_DUPLICATE_DISTANCE.

    "near_threshold" lists the photos intake let in although an earlier photo was within the
    index radius (``Photo.nearest_distance``): only a NEAR_DUPLICATE_DISTANCE below that radius
    lets any in, so at the default (31, the radius) it could never match and is not offered."""
    if near_duplicate_distance >= dedup.INDEX_RADIUS:
        return {k: v for k, v in FILTERS.items() if k != "near_threshold"}
    return FILTERS


def review_page(session, filter_name: str, page: int, per_page: int = 48):
    query = select(Photo).order_by(Photo.id.desc())
    cond = filter_condition(filter_name)
    if cond is not None:
        query = query.where(cond)
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    photos = session.scalars(query.offset((page - 1) * per_page).limit(per_page)).all()
    return photos, total
