"""EXIF metadata, read as hostile input: this module never raises and never runs away.

exifread does the reading; it is given only the EXIF block that the decoder already found
(bounded in size, at most 64 KiB in a JPEG), in a thread with a deadline, so a malformed block
can neither crash intake nor hold a worker. Pillow's own EXIF parser fills in what exifread
could not read.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import struct
import threading
from dataclasses import asdict, dataclass
from fractions import Fraction

logging.getLogger("exifread").setLevel(logging.CRITICAL)

MAX_EXIF_BYTES = 1 << 20
DEADLINE_SECONDS = 2.0


@dataclass
class Metadata:
    """What intake keeps of a photo's EXIF. ``damaged`` names a structural fault, if any."""

    captured_at: dt.datetime | None = None  # camera-local time, as the camera wrote it
    camera_make: str | None = None
    camera_model: str | None = None
    orientation: int = 1  # 1..8, EXIF meaning
    gps_lat: float | None = None  # signed decimal degrees
    gps_lon: float | None = None
    damaged: str | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("damaged")
        d["captured_at"] = self.captured_at.isoformat() if self.captured_at else None
        return d


def read_metadata(exif: bytes | None) -> Metadata:
    """Metadata from a raw TIFF-structured EXIF block; empty Metadata when there is none."""
    if not exif:
        return Metadata()
    if len(exif) > MAX_EXIF_BYTES:
        return Metadata(damaged="the EXIF block is larger than any camera writes")
    try:
        damage = exif_damage(exif)
    except Exception:  # a gap in exif_damage must still give a verdict, never a 500
        logging.getLogger(__name__).exception("exif_damage failed on a %d-byte block", len(exif))
        damage = "the EXIF block cannot be parsed"
    if damage:
        return Metadata(damaged=damage)
    meta = _with_deadline(_from_exifread, exif)
    fallback = None
    if meta is None or None in (meta.captured_at, meta.camera_make, meta.camera_model):
        fallback = _with_deadline(_from_pillow, exif)
    if meta is None:
        return fallback or Metadata()
    if fallback is not None:
        for field in ("captured_at", "camera_make", "camera_model"):
            if getattr(meta, field) is None:
                setattr(meta, field, getattr(fallback, field))
    return meta


def _with_deadline(fn, exif: bytes):
    result: list = []

    def run():
        try:
            result.append(fn(exif))
        except Exception:  # hostile input: any failure means "no metadata from this reader"
            result.append(None)

    t = threading.Thread(target=run, daemon=True, name="exif-reader")
    t.start()
    t.join(DEADLINE_SECONDS)
    return result[0] if result else None


def _from_exifread(exif: bytes) -> Metadata:
    import exifread

    tags = exifread.process_file(io.BytesIO(exif), details=False, extract_thumbnail=False)
    meta = Metadata()
    meta.captured_at = _parse_datetime(_text(tags.get("EXIF DateTimeOriginal")) or _text(tags.get("EXIF DateTimeDigitized")))
    meta.camera_make = _clean(_text(tags.get("Image Make")))
    meta.camera_model = _clean(_text(tags.get("Image Model")))
    meta.orientation = _orientation(_first(tags.get("Image Orientation")))
    meta.gps_lat = _gps(_values(tags.get("GPS GPSLatitude")), _text(tags.get("GPS GPSLatitudeRef")), 90)
    meta.gps_lon = _gps(_values(tags.get("GPS GPSLongitude")), _text(tags.get("GPS GPSLongitudeRef")), 180)
    if meta.gps_lat is None or meta.gps_lon is None:
        meta.gps_lat = meta.gps_lon = None
    return meta


def _from_pillow(exif: bytes) -> Metadata:
    from PIL import Image

    e = Image.Exif()
    e.load(b"Exif\x00\x00" + exif)
    sub = e.get_ifd(0x8769)
    gps = e.get_ifd(0x8825)
    meta = Metadata()
    meta.captured_at = _parse_datetime(_str(sub.get(0x9003)) or _str(sub.get(0x9004)))
    meta.camera_make = _clean(_str(e.get(0x010F)))
    meta.camera_model = _clean(_str(e.get(0x0110)))
    meta.orientation = _orientation(e.get(0x0112))
    lat = _gps(gps.get(2), _str(gps.get(1)), 90)
    lon = _gps(gps.get(4), _str(gps.get(3)), 180)
    if lat is not None and lon is not None:
        meta.gps_lat, meta.gps_lon = lat, lon
    return meta


def _text(tag) -> str | None:
    if tag is None:
        return None
    return _str(getattr(tag, "values", tag))


def _str(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        value = "".join(str(v) for v in value) if all(isinstance(v, str) for v in value) else None
    return str(value) if value is not None else None


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = "".join(ch for ch in value if ch.isprintable()).strip(" \x00")
    return value[:100] or None


def _values(tag):
    return getattr(tag, "values", None) if tag is not None else None


def _first(tag):
    values = _values(tag)
    if isinstance(values, (list, tuple)) and values:
        return values[0]
    return values


def _orientation(value) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return 1
    return n if 1 <= n <= 8 else 1


def _parse_datetime(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    value = value.strip("\x00 ")
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            when = dt.datetime.strptime(value[:19] if "S" in fmt else value[:16], fmt)
        except ValueError:
            continue
        return when if 1990 <= when.year <= 2100 else None
    return None


def _ratio(v) -> float:
    """exifread's Ratio (num/den) or Pillow's IFDRational (numerator/denominator)."""
    num = getattr(v, "num", getattr(v, "numerator", None))
    den = getattr(v, "den", getattr(v, "denominator", None))
    if num is not None and den is not None:
        return float(Fraction(int(num), int(den)))  # n/0 raises ZeroDivisionError: no value
    return float(v)


def _gps(values, ref: str | None, limit: float) -> float | None:
    try:
        if not isinstance(values, (list, tuple)) or not values:
            return None
        parts = [_ratio(v) for v in values[:3]] + [0.0, 0.0]
        degrees = parts[0] + parts[1] / 60 + parts[2] / 3600
    except (ZeroDivisionError, TypeError, ValueError, OverflowError):
        return None
    if not 0 <= degrees <= limit:
        return None
    if ref and ref.strip().upper()[:1] in ("S", "W"):
        degrees = -degrees
    return round(degrees, 7)



# TIFF field types 1-13 and their sizes in bytes (13 = IFD, as LONG).
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_POINTERS = {0x8769: "Exif", 0x8825: "GPS", 0xA005: "Interoperability"}
MAX_ENTRIES = 1000


def exif_damage(blob: bytes) -> str | None:
    """A structural check of the TIFF block: None when sound, else what is wrong.

    Every entry of IFD0, IFD1 and the Exif, GPS and Interoperability IFDs must have a valid
    type and keep its data inside the block, and the IFD pointers must be pointers. Cameras and
    phones write this correctly; a file that does not is damaged or was crafted. Bounded: each
    IFD is visited once, with at most MAX_ENTRIES entries.
    """
    order = _BYTE_ORDERS.get(blob[:4])
    if order is None:
        return "the EXIF block has no TIFF header"
    if len(blob) < 8:  # "II*\0" and no room for the first directory's offset
        return "the EXIF block is shorter than its TIFF header"
    seen: set[int] = set()
    todo = [(struct.unpack(order + "I", blob[4:8])[0], "IFD0")]
    while todo:
        offset, name = todo.pop()
        if offset == 0:
            continue
        if offset in seen:
            return f"the {name} directory loops back on itself"
        seen.add(offset)
        if damage := _directory_damage(blob, order, offset, name, todo):
            return damage
    return None


_BYTE_ORDERS = {b"II*\x00": "<", b"MM\x00*": ">"}


def _directory_damage(blob: bytes, order: str, offset: int, name: str, todo: list[tuple[int, str]]) -> str | None:
    """What is wrong with the directory ``name`` at ``offset``, if anything; the directories
    it points to are added to ``todo``."""
    size = len(blob)
    if offset < 8 or offset + 2 > size:
        return f"the {name} directory lies outside the EXIF block"
    (count,) = struct.unpack(order + "H", blob[offset : offset + 2])
    if count > MAX_ENTRIES or offset + 2 + 12 * count > size:
        return f"the {name} directory is truncated"
    for i in range(count):
        if damage := _entry_damage(blob, order, offset + 2 + 12 * i, name, todo):
            return damage
    if name == "IFD0":
        next_at = offset + 2 + 12 * count
        if next_at + 4 <= size:
            todo.append((struct.unpack(order + "I", blob[next_at : next_at + 4])[0], "IFD1"))
    return None


def _entry_damage(blob: bytes, order: str, base: int, name: str, todo: list[tuple[int, str]]) -> str | None:
    """What is wrong with the 12-byte directory entry at ``base``, if anything; a pointer to
    another directory is added to ``todo``."""
    tag, ftype, n = struct.unpack(order + "HHI", blob[base : base + 8])
    if ftype not in _TYPE_SIZES:
        return f"tag 0x{tag:04X} in {name} has an invalid type ({ftype})"
    length = _TYPE_SIZES[ftype] * n
    if length > 4:
        (data_at,) = struct.unpack(order + "I", blob[base + 8 : base + 12])
        if data_at + length > len(blob):
            return f"tag 0x{tag:04X} in {name} points outside the EXIF block"
    if tag in _POINTERS and name in ("IFD0", "Exif"):
        if ftype in (4, 13) and n == 0:
            return None  # an empty pointer, as some writers leave it: no such directory
        if ftype not in (4, 13) or n != 1:
            return f"the {_POINTERS[tag]} pointer in {name} is not a pointer"
        todo.append((struct.unpack(order + "I", blob[base + 8 : base + 12])[0], _POINTERS[tag]))
    return None
