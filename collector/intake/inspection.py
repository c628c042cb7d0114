"""What the bytes say, with no database: format, pixels, metadata and fingerprint.

``inspect`` is the pure stage of intake: a spooled file in, an ``Inspection`` (or the
``Rejection`` that the bytes alone earn) out. It touches neither the database nor storage, so
the fuzz tests and the hostile-file bench run it as it is, and the verdict it gives a file is
the same whoever sends it and whenever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.intake import checks, imaging
from collector.intake.checks import Rejection, reject
from collector.intake.metadata import Metadata, read_metadata

# Refusals that depend only on the bytes (never on who sent them, when, or on the database):
# intake remembers them by SHA-256, so a bomb is refused again without being decoded again.
# Not `too_complex`: a decode past its deadline may also mean a machine under load.
BYTES_ONLY_CODES = frozenset({"not_an_image", "unsupported_format", "corrupt", "too_many_pixels"})


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


def inspect(path: Path, head: bytes, settings: Mapping[str, Any]) -> Inspection | Rejection:
    """Identify, decode once (bounded in memory and CPU), read metadata and fingerprint the
    file at ``path``; ``settings`` gives the pixel limit and the decoder processes' limits."""
    max_pixels = settings["MAX_PIXELS"]
    fmt, other = imaging.sniff(head)
    if rejection := checks.check_format(fmt, other):
        return rejection
    try:
        decoded = imaging.decode(path, fmt, max_pixels, processes=settings["DECODE_PROCESSES"],
                                 memory_mb=settings["DECODE_MEMORY_MB"], cpu_seconds=settings["DECODE_CPU_SECONDS"])
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
        limit = exc.limit or max_pixels
        return reject("too_many_pixels", pixels=f"{exc.pixels:,}" if exc.pixels else "too many", max_pixels=f"{limit:,}")
    if exc.code == "too_complex":
        return reject("too_complex", why=exc.detail)
    return reject("corrupt")
