"""Exact and near-duplicate lookup, all in the database, across every contributor.

Exact: the SHA-256 of the bytes, under a unique constraint. Near: the 256-bit PDQ hash of the
oriented picture, found through multi-index hashing (see ``HashBand``) so one lookup probes
272 index keys instead of scanning every photo, then the full Hamming distance is checked.
Choice of hash and threshold: README "Near-duplicates", from ../shared/research/dedup.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from .models import HashBand, PhotoHash

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
    """The stored photo closest to ``variants`` (the picture's hash first, then its 7 other
    rotations and mirrors), within the index radius of 31 bits, or None.

    Two steps keep the common case cheap: the exact band values of all 8 variants (128 keys)
    find any photo within 15 bits of any variant; only when that finds nothing within the
    radius are the 16 one-bit neighbours of every band of the picture's own hash probed
    (272 keys), which finds every photo within 31 bits of it. So an unturned copy is found up
    to 31 bits, a turned or mirrored one up to 15 (a rotation alone moves a hash by ~10).
    """
    best = _closest(session, variants, sorted({k for v in variants for k in band_keys(v)}))
    if best is None:
        best = _closest(session, variants[:1], probe_keys(variants[0]))
    return best


def _closest(session: Session, variants: list[str], keys: list[int]) -> Match | None:
    best: Match | None = None
    wanted = [int(v, 16) for v in variants]
    for photo_id, user_id, other in session.execute(_candidates_sql(session), {"keys": _keys_param(session, keys)}):
        stored = int(other, 16)
        d = min((stored ^ w).bit_count() for w in wanted)
        if d <= INDEX_RADIUS and (best is None or d < best.distance):
            best = Match(photo_id, user_id, d)
    return best


# One bound parameter for the whole key list (an array in PostgreSQL, a JSON array in SQLite):
# hundreds of separate parameters cost more to bind and plan than the lookup itself.
# The band index drives the query (a few thousand candidates at a million photos), then each
# candidate is fetched by primary key: never a pass over the photos table.
_CANDIDATES = {
    "postgresql": "SELECT h.photo_id, h.user_id, h.pdq FROM (SELECT DISTINCT b.photo_id FROM photo_hash_bands b "
    "WHERE b.key = ANY(:keys)) c JOIN photo_hashes h ON h.photo_id = c.photo_id",
    "sqlite": "SELECT h.photo_id, h.user_id, h.pdq FROM (SELECT DISTINCT b.photo_id FROM photo_hash_bands b "
    "WHERE b.key IN (SELECT value FROM json_each(:keys))) c JOIN photo_hashes h ON h.photo_id = c.photo_id",
}


def _candidates_sql(session: Session):
    return text(_CANDIDATES[session.get_bind().dialect.name])


def _keys_param(session: Session, keys: list[int]):
    return keys if session.get_bind().dialect.name == "postgresql" else json.dumps(keys)


def add_bands(session: Session, photo_id: int, user_id: int, pdq_hex: str) -> None:
    """Index a new photo's hash (in the caller's transaction)."""
    session.add(PhotoHash(photo_id=photo_id, user_id=user_id, pdq=pdq_hex))
    session.add_all(HashBand(key=k, photo_id=photo_id) for k in band_keys(pdq_hex))
