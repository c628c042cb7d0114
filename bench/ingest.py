"""CPU per photo of the whole ``Intake.submit`` on real phone and camera photos, next to the
decoder's floor and a naive pipeline measured in the same run.

    python bench/ingest.py [--repeat 5] [--phone-copies 3] [--json] [PHOTO ...]

Headline rows: every real camera or phone photo of ../shared/corpus (a camera make in its
EXIF, at least 0.25 MP; the 100-pixel camera thumbnails and the game screenshot are left out):
iPhone 11 Pro Max HEIC, iPhone 5, iPhone 4S, Motorola XT907, LG KM555, T-Mobile, Nikon,
Minolta, Canon, Panasonic. An extra row: generated 12 MP copies (4032x3024, quality 92).

For each photo, the median over ``--repeat`` runs (each a fresh app on a fresh SQLite file and
folder store, so every submit is a first upload) of:

  submit   CPU seconds of this process (all threads) and its child processes (the decoders) during
           ``svc.intake.submit(...)``: spool, SHA-256, decode, EXIF, checks, PDQ, lookups,
           store with fsync, the commit. Also: SQL statements per submit and their wall time,
           and how long the write lock was held.
  floor    Pillow ``draft('RGB', (w/8, h/8))`` + ``load()`` (libjpeg-turbo's 1/8 IDCT), the
           least any JPEG decode costs; for HEIC, a full decode (libheif has no reduced path).
  naive    full decode + ``verify()`` on a second open + imagehash.phash + exifread.

Ratios: submit / floor (goal <= 1.5, aim 1.25) and naive / submit (goal >= 3).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402
from sqlalchemy import event  # noqa: E402

from collector.intake.imaging import _register_heif  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"
NOT_CAMERAS = ("Polyphony Digital",)  # Gran Turismo 5 screenshots
PHONES = ("Apple", "Motorola", "LG Electronics", "T-Mobile", "samsung", "Google", "HUANWEI", "Xiaomi", "OnePlus", "Nokia", "Jolla")


def _descendants_cpu() -> float:
    """CPU seconds of this process's live descendants (decoder processes stay alive between
    photos, so RUSAGE_CHILDREN, which counts only children that have exited, misses them)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parent[int(entry)] = int(fields[1])
        used[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - mine
        mine |= frontier
    return sum(used[p] for p in mine)


def cpu_start() -> float:
    kids = _descendants_cpu()  # read first: the scan's own cost stays outside the window
    return _own_cpu() + kids


def cpu_end() -> float:
    own = _own_cpu()
    return own + _descendants_cpu()


def _own_cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def camera_photos() -> list[tuple[Path, str, bool]]:
    """(path, "Make Model", is_phone) of every real camera/phone JPEG and HEIC in the corpus."""
    _register_heif()
    found = []
    for f in sorted(CORPUS.rglob("*")):
        if not f.is_file() or "pillow-bad" in f.parts or f.suffix.lower() not in (".jpg", ".jpeg", ".heic", ".heif"):
            continue
        try:
            with Image.open(f) as im:
                w, h = im.size
                exif = im.getexif()
                make, model = (exif.get(0x010F) or "").strip(), (exif.get(0x0110) or "").strip()
        except Exception:
            continue
        if make and not make.startswith(NOT_CAMERAS) and w * h >= 250_000:
            found.append((f, f"{make} {model}", make.startswith(PHONES)))
    return found


def floor(path: Path) -> None:
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (im.width // 8, im.height // 8))
        im.load()


def naive(path: Path) -> None:
    import exifread
    import imagehash

    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        im.load()
        imagehash.phash(im)
    with open(path, "rb") as fh:
        exifread.process_file(fh, details=False)


def cpu_of(fn, path: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = cpu_start()
        fn(path)
        times.append(cpu_end() - t)
    return statistics.median(times)


class Probe:
    """SQL statements and their wall time, and the write lock's hold time, during one submit."""

    def __init__(self, db):
        self.statements = 0
        self.sql_seconds = 0.0
        self.lock_seconds = 0.0
        event.listen(db.engine, "before_cursor_execute", self._before)
        event.listen(db.engine, "after_cursor_execute", self._after)
        original = db.write_transaction

        @contextmanager
        def timed(lock: bool = True):
            with original(lock) as tx:
                yield tx
            # From taking the lock to the commit returning, as the database layer measures it.
            self.lock_seconds += tx.info.get("lock_seconds", 0.0)

        db.write_transaction = timed

    def _before(self, conn, *_):
        conn.info["bench_t"] = time.perf_counter()

    def _after(self, conn, *_):
        self.statements += 1
        self.sql_seconds += time.perf_counter() - conn.info.pop("bench_t", time.perf_counter())

    def reset(self):
        self.statements, self.sql_seconds, self.lock_seconds = 0, 0.0, 0.0


def submit_runs(files: list[Path], repeat: int) -> dict[Path, dict]:
    from collector import create_app
    from collector.web import accounts

    runs: dict[Path, list[dict]] = {f: [] for f in files}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            app = create_app({"DATA_DIR": tmp, "SECRET_KEY": "bench", "MIN_SIDE": 1, "MAX_PHOTOS": 10**6})
            app.extensions["collector"].db.migrate()  # a new database: create_app never migrates
            svc = app.extensions["collector"]
            user = accounts.create_user(svc.db, "bench@example.com", "Bench", "bench password 1", "CC BY 4.0")
            probe = Probe(svc.db)
            for f in files:
                data = f.read_bytes()
                probe.reset()
                t = cpu_start()
                w = time.perf_counter()
                verdict = svc.intake.submit(user.id, io.BytesIO(data), f.name)
                runs[f].append({"cpu": cpu_end() - t, "wall": time.perf_counter() - w, "status": verdict.code or verdict.status,
                                "statements": probe.statements, "sql": probe.sql_seconds, "lock": probe.lock_seconds})
            svc.db.dispose()
    out = {}
    for f, rs in runs.items():
        out[f] = {k: statistics.median(r[k] for r in rs) for k in ("cpu", "wall", "statements", "sql", "lock")}
        out[f]["status"] = rs[0]["status"]
    return out


def phone_copies(files: list[Path], folder: Path, count: int) -> list[Path]:
    out = []
    for f in files[:count]:
        with Image.open(f) as im:
            im = im.convert("RGB")
            if im.width < im.height:
                im = im.rotate(90, expand=True)
            big = im.resize((4032, 3024), Image.Resampling.BICUBIC)
        target = folder / (f.stem + "-12mp.jpg")
        big.save(target, "JPEG", quality=92)
        out.append(target)
    return out


def measure(rows: list[tuple[Path, str, bool]], repeat: int) -> list[dict]:
    subs = submit_runs([p for p, *_ in rows], repeat)
    results = []
    for path, camera, phone in rows:
        with Image.open(path) as im:
            size = im.size
        s = subs[path]
        fl = cpu_of(floor, path, repeat)
        nv = cpu_of(naive, path, repeat)
        results.append({
            "file": str(path.relative_to(CORPUS)) if path.is_relative_to(CORPUS) else path.name, "camera": camera,
            "phone": phone, "megapixels": round(size[0] * size[1] / 1e6, 2), "bytes": path.stat().st_size,
            "format": "HEIC" if path.suffix.lower() in (".heic", ".heif") else "JPEG", "verdict": s["status"],
            "submit_cpu_ms": round(s["cpu"] * 1000, 2), "submit_wall_ms": round(s["wall"] * 1000, 2),
            "sql_statements": s["statements"], "sql_ms": round(s["sql"] * 1000, 2), "lock_ms": round(s["lock"] * 1000, 2),
            "floor_ms": round(fl * 1000, 2), "naive_ms": round(nv * 1000, 2),
            "submit_over_floor": round(s["cpu"] / fl, 2), "naive_over_submit": round(nv / s["cpu"], 2),
        })
    return results


def table(title: str, results: list[dict], say) -> dict:
    say(f"\n== {title}")
    say(f"{'photo':<44} {'MP':>5} {'fmt':>4} {'submit':>8} {'floor':>7} {'naive':>8} {'sub/floor':>9} {'naive/sub':>9}"
        f" {'SQL':>4} {'SQL ms':>7} {'lock ms':>7}")
    for r in results:
        say(f"{(r['camera'][:22] + ' ' + Path(r['file']).name)[:44]:<44} {r['megapixels']:5.1f} {r['format']:>4} {r['submit_cpu_ms']:8.1f}"
            f" {r['floor_ms']:7.1f} {r['naive_ms']:8.1f} {r['submit_over_floor']:8.2f}x {r['naive_over_submit']:8.2f}x"
            f" {r['sql_statements']:4.0f} {r['sql_ms']:7.2f} {r['lock_ms']:7.2f}  {r['verdict']}")
    summary = {}
    for label, sel in (("phone JPEG", [r for r in results if r["phone"] and r["format"] == "JPEG"]),
                       ("all JPEG", [r for r in results if r["format"] == "JPEG"]),
                       ("HEIC", [r for r in results if r["format"] == "HEIC"])):
        if sel:
            summary[label] = m = {k: statistics.median(r[k] for r in sel) for k in
                                  ("submit_cpu_ms", "floor_ms", "naive_ms", "submit_over_floor", "naive_over_submit", "sql_ms", "lock_ms", "sql_statements")}
            say(f"median, {label} ({len(sel)}): submit {m['submit_cpu_ms']:.1f} ms CPU, floor {m['floor_ms']:.1f}, naive {m['naive_ms']:.1f}:"
                f" {m['submit_over_floor']:.2f}x the floor, naive {m['naive_over_submit']:.2f}x slower;"
                f" {m['sql_statements']:.0f} SQL statements, {m['sql_ms']:.1f} ms in SQL, lock held {m['lock_ms']:.1f} ms")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help="photos to use instead of the corpus's camera photos")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--phone-copies", type=int, default=3, help="generated 12 MP copies for the extra row (0: none)")
    parser.add_argument("--json", action="store_true", help="print one JSON document (the table goes to stderr)")
    args = parser.parse_args()
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    if args.paths:
        rows = [(Path(p), "given", True) for p in args.paths]
    else:
        rows = camera_photos()
    if not rows:
        sys.exit(f"no camera photos found under {CORPUS}")
    doc = {"benchmark": "ingest", "repeat": args.repeat}
    doc["corpus"] = measure(rows, args.repeat)
    doc["corpus_summary"] = table(f"real camera and phone photos, median of {args.repeat} runs, CPU ms per photo", doc["corpus"], say)
    if args.phone_copies:
        with tempfile.TemporaryDirectory() as tmp:
            jpegs = [p for p, _, phone in rows if phone and p.suffix.lower() == ".jpg"]
            copies = phone_copies(jpegs, Path(tmp), args.phone_copies)
            doc["generated"] = measure([(p, "generated 12 MP", True) for p in copies], args.repeat)
            doc["generated_summary"] = table("generated 12 MP copies (4032x3024, quality 92)", doc["generated"], say)
    if args.json:
        print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
