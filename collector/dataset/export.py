"""Dataset export: accepted photos, private metadata removed, in grouped deterministic splits.

``export(...)`` plans the dataset (which photos, which split, which file names), writes the
images that are new or changed, writes the manifests, dataset card and SHA256SUMS last (each
to a temporary file renamed into place), and only then removes files that no longer belong.
An interrupted run therefore leaves the previous manifests and their files readable.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import hashlib
import hmac
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
from sqlalchemy import select

from collector.dataset.privacy import extension, minimal_exif, publishable
from collector.intake import dedup
from collector.organisers.reports import safe_cell
from collector.platform.models import Photo

FORMATS = ("imagefolder", "coco", "csv")
SPLITS = ("train", "validation", "test")
CHECKSUMS = "SHA256SUMS"
FIELDS = ["file_name", "sha256", "source_sha256", "width", "height", "captured_at", "camera_make", "camera_model",
          "contributor", "licence", "perceptual_hash", "split", "plates"]
# Photos closer than this are kept in one split even when different people sent them: they
# passed intake (so they are beyond the near-duplicate threshold) but may show the same car.
GROUP_RADIUS = dedup.INDEX_RADIUS
EXIF_DATE = "%Y:%m:%d %H:%M:%S"


@dataclass(kw_only=True)
class Options:
    """What to export and how. From the app's settings: ``secret`` (the pseudonyms' key),
    ``licence`` (the one contributors agreed to) and ``near_duplicate_distance`` (intake's
    threshold, which the dataset card states)."""

    secret: str
    licence: str
    near_duplicate_distance: int
    format: str = "imagefolder"
    split: tuple[int, int, int] = (80, 10, 10)
    since: dt.datetime | None = None
    include_flagged: bool = False
    keep_gps: bool = False
    dry_run: bool = False
    progress: Callable[[list], Iterable] | None = None  # wraps the photos as they are done (a progress bar)


@dataclass
class Summary:
    planned: int = 0
    written: int = 0
    skipped: int = 0  # already in place, unchanged
    removed: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    per_split: dict[str, int] = field(default_factory=dict)


def parse_split(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.split("/")]
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) != 100:
        raise ValueError("--split takes three whole percentages adding up to 100, e.g. 80/10/10")
    return tuple(parts)  # type: ignore[return-value]


def pseudonym(secret: str, user_id: int) -> str:
    """A stable keyed hash of the contributor: the same person always gets the same one, and
    it cannot be turned back into an account without the app's secret key."""
    return hmac.new(secret.encode(), f"contributor:{user_id}".encode(), hashlib.sha256).hexdigest()[:16]


def select_photos(session, options: Options) -> list[Photo]:
    statuses = ["accepted", "flagged"] if options.include_flagged else ["accepted"]
    query = select(Photo).where(Photo.status.in_(statuses)).order_by(Photo.id)
    if options.since:
        query = query.where(Photo.created_at >= options.since)
    return list(session.scalars(query))


def assign_splits(photos: list[Photo], pseudonyms: dict[int, str], ratios: tuple[int, int, int]) -> dict[int, str]:
    """photo id -> split. Groups (one contributor, plus any photos within GROUP_RADIUS of each
    other, whoever sent them) go whole into one split."""
    parent = {p.id: p.id for p in photos}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first_of_user: dict[int, int] = {}
    for p in photos:
        union(p.id, first_of_user.setdefault(p.user_id, p.id))
    # Neighbours within GROUP_RADIUS, whoever sent them: one vectorised multi-index search.
    for i, j in dedup.pairs_within([p.pdq for p in photos], GROUP_RADIUS):
        union(photos[i].id, photos[j].id)
    # A group's split comes from a hash of its smallest contributor pseudonym: the same group
    # lands in the same split in every export, however the rest of the collection grows, so an
    # incremental export never moves photos between splits. With hundreds of contributors the
    # ratios come close to the target; with a handful they can be far off.
    group_key: dict[int, str] = {}
    for p in photos:
        root = find(p.id)
        name = pseudonyms[p.user_id]
        if root not in group_key or name < group_key[root]:
            group_key[root] = name
    cut1, cut2 = ratios[0], ratios[0] + ratios[1]
    splits = {}
    for p in photos:
        bucket = int(hashlib.sha256(("split:" + group_key[find(p.id)]).encode()).hexdigest(), 16) % 100
        splits[p.id] = SPLITS[0] if bucket < cut1 else SPLITS[1] if bucket < cut2 else SPLITS[2]
    return splits


def _atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    """Temporary file, then rename. Images skip the fsync here: ``_sync`` flushes the files
    written (and their folders) before the manifests that name them are replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sync(paths: list[Path], root: Path) -> None:
    """fsync the files this run wrote, then their folders (the renames), and nothing else.

    Deferred to the end of the images rather than one fsync per write: by then the kernel has
    written most of them back, so each fsync mostly confirms. A global ``os.sync()`` would
    also wait for every other program's dirty pages on the machine."""
    for path in paths:
        _fsync(path)
    for folder in sorted({p.parent for p in paths} | ({root} if paths else set())):
        _fsync(folder, os.O_DIRECTORY)


def _fsync(path: Path, flags: int = 0) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


WRITERS = min(4, os.cpu_count() or 1)


def _write_image(storage, p: Photo, target: Path, options: Options) -> tuple[str, int]:
    """Publish one photo: its bytes with rebuilt metadata, written atomically (not yet synced)."""
    with storage.open(p.storage_key) as fh:
        original = fh.read()
    gps = (p.gps_lat, p.gps_lon) if options.keep_gps and p.gps_lat is not None else None
    orientation = 1 if p.format == "HEIF" else p.orientation
    exif = minimal_exif(orientation, p.camera_make, p.camera_model, p.captured_at, gps)
    data, _ = publishable(original, p.format, exif)
    _atomic_write(target, data, durable=False)
    return hashlib.sha256(data).hexdigest(), len(data)


def _read_checksums(out: Path) -> dict[str, str]:
    sums = {}
    path = out / CHECKSUMS
    if path.exists():
        for line in path.read_text().splitlines():
            digest, _, name = line.partition("  ")
            if name:
                sums[name] = digest
    return sums


def _relative_path(fmt: str, split: str, file_name: str) -> str:
    return f"{split}/{file_name}" if fmt == "imagefolder" else f"images/{file_name}"


@dataclass
class Planned:
    """One photo of the plan: where it goes in the export."""

    photo: Photo
    file_name: str
    rel: str  # path inside the export folder
    target: Path


@dataclass
class Plan:
    items: list[Planned]
    pseudonyms: dict[int, str]  # user id -> contributor pseudonym
    splits: dict[int, str]  # photo id -> split


def export(db, storage, out: Path, options: Options) -> Summary:
    """Plan, write the new images, then the manifests and SHA256SUMS, then remove what no
    longer belongs: each phase only starts when the previous one is safely done."""
    started = time.perf_counter()
    plan = plan_export(db, out, options)
    summary = Summary(planned=len(plan.items))
    for item in plan.items:
        split = plan.splits[item.photo.id]
        summary.per_split[split] = summary.per_split.get(split, 0) + 1
    old = _read_checksums(out)
    records, sums, written = _write_images(storage, plan, old, options, summary)
    _add_plates(db, records)
    obsolete = [rel for rel in old if rel not in sums and not _is_manifest(rel)]
    summary.removed = len(obsolete)
    if not options.dry_run:
        _sync(written, out)  # every new image is on disk before a manifest names it
        _write_manifests(out, options, records, sums, old, summary)
        _remove(out, obsolete)  # last: the new manifests no longer name these files
    summary.seconds = time.perf_counter() - started
    return summary


def plan_export(db, out: Path, options: Options) -> Plan:
    """Which photos, in which split, under which file names."""
    with db.Session() as session:
        photos = select_photos(session, options)
    pseudonyms = {uid: pseudonym(options.secret, uid) for uid in {p.user_id for p in photos}}
    splits = assign_splits(photos, pseudonyms, options.split)
    items = []
    for p in photos:
        file_name = f"{p.sha256}.{extension(p.format)}"
        rel = _relative_path(options.format, splits[p.id], file_name)
        items.append(Planned(p, file_name, rel, out / rel))
    return Plan(items, pseudonyms, splits)


def _write_images(storage, plan: Plan, old: dict[str, str], options: Options,
                  summary: Summary) -> tuple[list[dict], dict[str, str], list[Path]]:
    """Write the images that are not already in place: (records, checksums, paths written)."""
    records: list[dict] = []
    sums: dict[str, str] = {}
    written: list[Path] = []
    # Reading, rewriting, hashing and writing release the GIL (file I/O, OpenSSL's SHA-256 on
    # large buffers, Pillow for HEIF): a few threads keep both the disk and the cores busy.
    # SHA-256 of the exported bytes is the largest part of the work without SHA-NI.
    with ThreadPoolExecutor(WRITERS) as pool:
        jobs = {
            item.photo.id: pool.submit(_write_image, storage, item.photo, item.target, options)
            for item in plan.items
            if not options.dry_run and not (item.rel in old and item.target.exists())
        }
        for item in options.progress(plan.items) if options.progress else plan.items:
            if options.dry_run:
                digest = ""
            elif item.photo.id not in jobs:
                digest = old[item.rel]  # written by an earlier run and listed in its checksums
                summary.skipped += 1
            else:
                digest, size = jobs[item.photo.id].result()
                written.append(item.target)
                summary.written += 1
                summary.bytes_written += size
            sums[item.rel] = digest
            records.append(_record(item, digest, plan, options))
    return records, sums, written


def _record(item: Planned, digest: str, plan: Plan, options: Options) -> dict:
    p = item.photo
    return {
        "file_name": item.file_name if options.format == "imagefolder" else item.rel,
        "sha256": digest,
        "source_sha256": p.sha256,
        "width": p.width,
        "height": p.height,
        # Strings throughout, "" when unknown: ML loaders infer a type per metadata file, and
        # a split whose photos all lack a date would otherwise get a different schema.
        # EXIF's own format also keeps Arrow from guessing a timestamp type in one split only.
        "captured_at": p.captured_at.strftime(EXIF_DATE) if p.captured_at else "",
        "camera_make": p.camera_make or "",
        "camera_model": p.camera_model or "",
        "contributor": plan.pseudonyms[p.user_id],
        "licence": options.licence,
        "perceptual_hash": p.pdq,
        "split": plan.splits[p.id],
        "_id": p.id,
    }


def _write_manifests(out: Path, options: Options, records: list[dict], sums: dict[str, str],
                     old: dict[str, str], summary: Summary) -> None:
    """The manifests and the card, then SHA256SUMS naming every file (each replaced atomically);
    manifests of another format left by an earlier run go."""
    manifests = _manifests(options, records, summary)
    for rel, data in manifests.items():
        sums[rel] = hashlib.sha256(data).hexdigest()
        _atomic_write(out / rel, data)
    for stale in [rel for rel in old if _is_manifest(rel) and rel not in manifests]:
        (out / stale).unlink(missing_ok=True)
    lines = "".join(f"{digest}  {rel}\n" for rel, digest in sorted(sums.items()))
    _atomic_write(out / CHECKSUMS, lines.encode())


def _remove(out: Path, obsolete: list[str]) -> None:
    """Files no manifest names any more, then the split folders they leave empty."""
    for rel in obsolete:
        (out / rel).unlink(missing_ok=True)
    for split in SPLITS + ("images",):
        folder = out / split
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _add_plates(db, records: list[dict]) -> None:
    """Each record's plates: text, box [x, y, w, h] in the image's pixels (as displayed) and
    source (machine: read by the OCR; organiser: typed or corrected by a person)."""
    from collector.plates import jobs

    with db.Session() as session:
        plates = jobs.plates_of(session, [r["_id"] for r in records])
    for r in records:
        r["_plates"] = [{"text": p.text, "box": list(p.box) if p.box else None, "source": p.source}
                        for p in plates[r["_id"]]]
        # A JSON string, like the other fields a string in every split: a list of objects would
        # let each split's metadata file infer its own type (no plates, a plate without a box).
        r["plates"] = json.dumps(r["_plates"], separators=(",", ":"))


def _is_manifest(rel: str) -> bool:
    return rel.endswith(("metadata.jsonl", "annotations.json", "manifest.csv", "README.md"))


def _manifests(options: Options, records: list[dict], summary: Summary) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
    if options.format == "imagefolder":
        for split in SPLITS:
            rows = [r for r in public if r["split"] == split]
            if rows:
                files[f"{split}/metadata.jsonl"] = "".join(json.dumps(r) + "\n" for r in rows).encode()
    elif options.format == "csv":
        buf = _csv(public)
        files["manifest.csv"] = buf.encode()
    else:
        images = [{"id": r["_id"], "file_name": p["file_name"], "width": p["width"], "height": p["height"],
                   "date_captured": p["captured_at"], "license": 1, "split": p["split"], "sha256": p["sha256"],
                   "contributor": p["contributor"]} for r, p in zip(records, public, strict=True)]
        coco = {
            "info": {"description": "Plate Collector number-plate photos", "version": dt.date.today().isoformat(),
                     "date_created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
            "licenses": [{"id": 1, "name": options.licence}],
            "images": images,
            "categories": [{"id": 1, "name": "plate", "supercategory": "vehicle"}],
            "annotations": _coco_annotations(records),
        }
        files["annotations.json"] = json.dumps(coco, indent=1).encode()
    files["README.md"] = dataset_card(options, public, summary).encode()
    return files


def _coco_annotations(records: list[dict]) -> list[dict]:
    """One `plate` box per plate, as CVAT writes rectangles (empty segmentation, attributes as a
    dict) so CVAT and Label Studio's COCO import take them as pre-annotations; plates an
    organiser typed without a box have no annotation (their text is in the image's metadata)."""
    out = []
    for r in records:
        for p in r["_plates"]:
            if not p["box"]:
                continue
            x, y, w, h = p["box"]
            out.append({"id": len(out) + 1, "image_id": r["_id"], "category_id": 1, "bbox": [x, y, w, h],
                        "area": w * h, "iscrowd": 0, "segmentation": [],
                        "attributes": {"text": p["text"], "source": p["source"], "occluded": False}})
    return out


def _csv(rows: list[dict]) -> str:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: safe_cell(r[k]) for k in FIELDS})
    return buf.getvalue()


def dataset_card(options: Options, rows: list[dict], summary: Summary) -> str:
    """The dataset card (README.md), rendered from templates/dataset_card.md.j2."""
    from collector.plates.reader import FIND_SIDE, READ_SIDE

    dates = sorted(r["captured_at"].replace(":", "-", 2) for r in rows if r["captured_at"])
    per_image = [json.loads(r.get("plates") or "[]") for r in rows]
    plates = [p for ps in per_image for p in ps]
    return _card_template().render(
        licence_id=options.licence.lower().replace(" ", "-"),
        licence=options.licence,
        near_duplicate_distance=options.near_duplicate_distance,
        group_radius=GROUP_RADIUS,
        photos=len(rows),
        contributors=len({r["contributor"] for r in rows}),
        taken=f"{dates[0][:10]} to {dates[-1][:10]}" if dates else "unknown (no EXIF capture dates)",
        exported=f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M}",
        format=options.format,
        since=options.since.date().isoformat() if options.since else None,
        ratios="/".join(map(str, options.split)),
        per_split=[(s, summary.per_split.get(s, 0)) for s in SPLITS],
        read_side=READ_SIDE,
        find_side=FIND_SIDE,
        with_plate=sum(1 for ps in per_image if ps),
        plates=len(plates),
        confirmed=sum(1 for p in plates if p["source"] == "organiser"),
        keep_gps=options.keep_gps,
    )


@functools.cache
def _card_template() -> jinja2.Template:
    # Markdown, not HTML: no autoescaping; the front matter quotes its values itself (yaml_scalar).
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"), autoescape=False,
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters["yaml"] = yaml_scalar
    return env.get_template("dataset_card.md.j2")


_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def yaml_scalar(value) -> str:
    """``value`` as one YAML scalar that cannot end the front matter or add keys: a plain word
    (``cc-by-4.0``) stays as it is, anything else becomes a double-quoted string whose every
    character outside printable ASCII is an escape (newlines, ``---``, ``: `` or ``#`` are inert)."""
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return '"' + "".join(out) + '"'
