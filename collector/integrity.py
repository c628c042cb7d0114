"""Do stored objects and photo rows agree? Rows without objects are errors; objects without
rows are orphans (an upload that crashed between store and commit, or lost a race)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import or_, select

from .models import Photo, utcnow
from .storage import StoredObject

QUARANTINE = "quarantine/"
PARTIAL = "partial/"  # resumable uploads in progress: resumable.py owns and cleans them


@dataclass
class StorageReport:
    rows: int = 0
    objects: int = 0
    missing: list[tuple[int, str]] = field(default_factory=list)  # (photo id, key): errors
    orphans: list[StoredObject] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.missing

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "objects": self.objects,
            "missing": [{"photo_id": pid, "key": key} for pid, key in self.missing],
            "orphans": [{"key": o.key, "size": o.size, "modified": o.modified.isoformat()} for o in self.orphans],
            "quarantined": self.quarantined,
        }


def check_storage(db, storage, fix: bool = False, grace: dt.timedelta = dt.timedelta(hours=1)) -> StorageReport:
    """Compare; with ``fix``, move orphans older than ``grace`` under ``quarantine/``.

    An orphan is re-checked against the database at the moment it is moved, so an object that
    a row came to reference in the meantime is never touched. Nothing is ever deleted outright.
    """
    report = StorageReport()
    with db.Session() as session:
        referenced: dict[str, int] = {}
        for pid, key, thumb in session.execute(select(Photo.id, Photo.storage_key, Photo.thumb_key)):
            referenced[key] = pid
            referenced[thumb] = pid
            report.rows += 1
    objects = {o.key: o for o in storage.list() if not o.key.startswith((QUARANTINE, PARTIAL))}
    report.objects = len(objects)
    report.missing = sorted((pid, key) for key, pid in referenced.items() if key not in objects)
    report.orphans = sorted((o for key, o in objects.items() if key not in referenced), key=lambda o: o.key)
    if fix:
        cutoff = utcnow() - grace
        for obj in report.orphans:
            if obj.modified > cutoff:
                continue
            with db.Session() as session:
                still_orphan = session.scalar(
                    select(Photo.id).where(or_(Photo.storage_key == obj.key, Photo.thumb_key == obj.key)).limit(1)
                ) is None
            if still_orphan:
                with storage.open(obj.key) as fh:
                    storage.put_bytes(QUARANTINE + obj.key, fh.read())
                storage.delete(obj.key)
                report.quarantined.append(obj.key)
    return report
