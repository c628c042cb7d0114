"""Exact and near-duplicate lookup, all in the database, across every contributor.

Exact: the SHA-256 of the bytes, under a unique constraint. Near: the 256-bit PDQ hash of the
oriented picture, found through multi-index hashing (see ``HashBand``) so one lookup probes
272 index keys instead of scanning every photo, then the full Hamming distance is checked.
Choice of hash and threshold: README "Near-duplicates", from ../shared/research/dedup.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import HashBand, Photo

BANDS = 16
BAND_BITS = 16
# An index radius of 31 bits: with 16 bands, a match within 31 differs in at most one bit in
# some band, so probing each band value and its 16 one-bit neighbours finds every such match.
INDEX_RADIUS = BANDS * 2 - 1


def band_keys(pdq_hex: str) -> list[int]:
    """The 16 index keys of a hash: band number in the high bits, band value in the low 16."""
    raw = bytes.fromhex(pdq_hex)
    return [(i << BAND_BITS) | int.from_bytes(raw[2 * i : 2 * i + 2], "big") for i in range(BANDS)]


def probe_keys(pdq_hex: str) -> list[int]:
    keys = []
    for key in band_keys(pdq_hex):
        keys.append(key)
        keys.extend(key ^ (1 << b) for b in range(BAND_BITS))
    return keys


def distance(a_hex: str, b_hex: str) -> int:
    return (int(a_hex, 16) ^ int(b_hex, 16)).bit_count()


@dataclass(frozen=True)
class Match:
    photo_id: int
    user_id: int
    distance: int


def nearest(session: Session, variants: list[str]) -> Match | None:
    """The stored photo closest to any of ``variants`` (the 8 rotations and mirrors of one
    picture) within the index radius (31 bits), or None."""
    keys = sorted({k for v in variants for k in probe_keys(v)})
    candidates = session.execute(
        select(Photo.id, Photo.user_id, Photo.pdq).where(
            Photo.id.in_(select(HashBand.photo_id).where(HashBand.key.in_(keys)))
        )
    ).all()
    best: Match | None = None
    for photo_id, user_id, other in candidates:
        d = min(distance(v, other) for v in variants)
        if d <= INDEX_RADIUS and (best is None or d < best.distance):
            best = Match(photo_id, user_id, d)
    return best


def add_bands(session: Session, photo_id: int, pdq_hex: str) -> None:
    session.add_all(HashBand(key=k, photo_id=photo_id) for k in band_keys(pdq_hex))
