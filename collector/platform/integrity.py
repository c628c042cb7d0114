"""Do stored objects and photo rows agree? Rows without objects are errors; objects without
rows are orphans (an upload that crashed between store and commit). Orphans and half-written
temporary objects older than the grace period, and spool files left by killed workers, make the
store unhealthy until ``--fix`` quarantines or removes them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import or_, select

from collector.platform.models import Photo, utcnow
from collector.platform.storage import StoredObject

QUARANTINE = "quarantine/"
PARTIAL = "partial/"  # resumable uploads in progress: web/resumable.py owns and cleans them


@dataclass
class StorageReport:
    rows: int = 0
    objects: int = 0
    missing: list[tuple[int, str]] = field(default_factory=list)  # (photo id, key): errors
    orphans: list[StoredObject] = field(default_factory=list)
    stale_orphans: int = 0  # orphans older than the grace period: no upload is committing them
    temporaries: list[StoredObject] = field(default_factory=list)  # stale half-written objects
    spool: list[str] = field(default_factory=list)  # stale spool files (whole originals, GPS included)
    quarantined: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    fixed: bool = False

    @property
    def healthy(self) -> bool:
        return not self.missing and (self.fixed or not (self.stale_orphans or self.temporaries or self.spool))

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "objects": self.objects,
            "missing": [{"photo_id": pid, "key": key} for pid, key in self.missing],
            "orphans": [{"key": o.key, "size": o.size, "modified": o.modified.isoformat()} for o in self.orphans],
            "temporaries": [{"key": o.key, "size": o.size, "modified": o.modified.isoformat()} for o in self.temporaries],
            "spool": self.spool,
            "quarantined": self.quarantined,
            "removed": self.removed,
            "healthy": self.healthy,
        }


def check_storage(db, storage, fix: bool = False, grace: dt.timedelta = dt.timedelta(hours=1),
                  spool_dir: Path | None = None) -> StorageReport:
    """Compare; with ``fix``, move orphans older than ``grace`` under ``quarantine/`` and remove
    stale temporary objects and spool files (neither is ever referenced by a row).

    An orphan is re-checked against the database at the moment it is moved, so an object that
    a row came to reference in the meantime is never touched. No photo is deleted outright.
    """
    report = StorageReport(fixed=fix)
    cutoff = utcnow() - grace
    report.temporaries = [o for o in storage.temporaries() if o.modified <= cutoff]
    if spool_dir is not None and spool_dir.is_dir():
        report.spool = sorted(str(p) for p in spool_dir.glob("upload-*")
                              if dt.datetime.fromtimestamp(p.stat().st_mtime, dt.UTC) <= cutoff)
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
    report.stale_orphans = sum(o.modified <= cutoff for o in report.orphans)
    if fix:
        for obj in report.temporaries:
            storage.delete(obj.key)
            report.removed.append(obj.key)
        for name in report.spool:
            Path(name).unlink(missing_ok=True)
            report.removed.append(name)
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
