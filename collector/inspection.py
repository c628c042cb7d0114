"""What the bytes say, with no database: format, pixels, metadata and fingerprint.

``inspect`` is the pure stage of intake: a spooled file in, an ``Inspection`` (or the
``Rejection`` that the bytes alone earn) out. It touches neither the database nor storage, so
the fuzz tests and the hostile-file bench run it as it is, and the verdict it gives a file is
the same whoever sends it and whenever.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import checks, imaging
from .checks import Rejection, reject
from .metadata import Metadata, read_metadata

# Refusals that depend only on the bytes (never on who sent them, when, or on the database):
# intake remembers them by SHA-256, so a bomb is refused again without being decoded again.
BYTES_ONLY_CODES = frozenset({"not_an_image", "unsupported_format", "corrupt", "too_many_pixels", "too_complex"})


@dataclass
class Inspection:
    format: str  # one of imaging.EXTENSIONS
    width: int  # as displayed (orientation applied)
    height: int
    metadata: Metadata
    fingerprint: imaging.Fingerprint
    small: object  # PIL.Image.Image, RGB, oriented, long side <= imaging.HASH_SIDE

    def describe(self) -> dict:
        """The metadata a contributor sees in the verdict (and the API returns)."""
        d = self.metadata.as_dict()
        d.update(width=self.width, height=self.height, format=self.format)
        return d


def inspect(path: Path, head: bytes, max_pixels: int) -> Inspection | Rejection:
    """Identify, decode once (bounded), read metadata and fingerprint the file at ``path``."""
    fmt, other = imaging.sniff(head)
    if rejection := checks.check_format(fmt, other):
        return rejection
    try:
        decoded = imaging.decode(path, fmt, max_pixels)
    except imaging.DecodeError as exc:
        return decode_rejection(exc, max_pixels)
    meta = read_metadata(decoded.exif)
    if decoded.orientation_applied:
        small, (width, height) = decoded.small, (decoded.stored_width, decoded.stored_height)
    else:
        small = imaging.orient(decoded.small, meta.orientation)
        width, height = imaging.displayed_size(decoded.stored_width, decoded.stored_height, meta.orientation)
    return Inspection(fmt, width, height, meta, imaging.fingerprint(small), small)


def decode_rejection(exc: imaging.DecodeError, max_pixels: int) -> Rejection:
    if exc.code == "too_many_pixels":
        pixels = getattr(exc, "pixels", None)
        return reject("too_many_pixels", pixels=f"{pixels:,}" if pixels else "too many", max_pixels=f"{max_pixels:,}")
    if exc.code in checks.MESSAGES and exc.code != "corrupt":
        return reject(exc.code)
    return reject("corrupt")
