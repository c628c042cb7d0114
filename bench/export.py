"""Export speed next to a plain copy of the same files, in pairs measured in the same run.

    python bench/export.py [--photos 60] [--contributors 20] [--size 4032x3024] [--pairs 5]

Generates distinct phone-like photos (tests/synthetic.py scenes with sensor-like noise, JPEG
quality 92 with EXIF: about 3 MB at 12 MP), runs them through intake into a temporary SQLite
database and folder store, then runs ``--pairs`` pairs of (1) a plain copy of the stored
originals into a new folder, each file fsynced, and (2) a full ``export`` (imagefolder) into
another new folder, which fsyncs what it writes; each pair's ratio is copy time / export time
(1.0: as fast as the copy) and the median ratio is the figure. Then an incremental re-run.
The aim: export at least half the speed of the copy on phone-sized photos.

``--against REF`` (default ``main``) also times the export of that git revision (checked out
into a temporary package) in each round, on the same photos: the change measured in one run.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collector import create_app  # noqa: E402
from collector.dataset import export as export_mod  # noqa: E402
from collector.web import accounts  # noqa: E402
from tests.synthetic import plate_photo  # noqa: E402


def phone_photo(args) -> bytes:
    seed, size = args
    base = plate_photo(seed, size, quality=95)
    with Image.open(io.BytesIO(base)) as im:
        exif = im.info.get("exif")
        pixels = np.asarray(im.convert("RGB"), dtype=np.int16)
    noise = np.random.default_rng(seed).normal(0, 7, pixels.shape).astype(np.int16)  # sensor noise
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=92, exif=exif)
    return out.getvalue()


def copy_files(files: list[Path], dest: Path) -> None:
    dest.mkdir()
    copies = []
    for f in files:
        shutil.copyfile(f, dest / f.name)
        copies.append(dest / f.name)
    export_mod._sync(copies, dest)  # the same durability as the export: each file fsynced


def export_of(ref: str, folder: Path):
    """collector/dataset/export.py as of ``ref``, importable as ``collector_ref.export``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "collector"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    (folder / "collector").rename(folder / "collector_ref")
    sys.path.insert(0, str(folder))
    return importlib.import_module("collector_ref.export")


def run_export(mod, svc, out: Path):
    """``mod.export`` with default options, whichever signature its revision has (the secret and
    licence moved into ``Options`` when the export was split into phases)."""
    fields = getattr(mod.Options, "__dataclass_fields__", {})
    if "secret" not in fields:
        return mod.export(svc.db, svc.storage, out, mod.Options(), "bench", "CC BY 4.0")
    extra = {"near_duplicate_distance": 31} if "near_duplicate_distance" in fields else {}
    return mod.export(svc.db, svc.storage, out, mod.Options(secret="bench", licence="CC BY 4.0", **extra))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=60)
    p.add_argument("--contributors", type=int, default=20)
    p.add_argument("--size", default="4032x3024")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--against", default="main", help="also time this git revision's export ('' for none)")
    args = p.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory(dir=ROOT / "storage") as tmp:  # the disk the app writes to
        tmp = Path(tmp)
        app = create_app({"DATA_DIR": str(tmp / "data"), "SECRET_KEY": "bench", "MAX_PHOTOS": 10**6})
        app.extensions["collector"].db.migrate()  # a new database: create_app never migrates
        svc = app.extensions["collector"]
        users = [accounts.create_user(svc.db, f"c{i}@example.com", f"C{i}", "bench password 1", "CC BY 4.0")
                 for i in range(args.contributors)]
        t0 = time.perf_counter()
        with Pool(os.cpu_count()) as pool:
            photos = pool.map(phone_photo, [(50_000 + i, size) for i in range(args.photos)], chunksize=4)
        accepted = sum(svc.intake.submit(users[i % len(users)].id, io.BytesIO(d), f"{i}.jpg").accepted for i, d in enumerate(photos))
        originals = [f for f in (tmp / "data" / "photos" / "originals").rglob("*") if f.is_file()]
        total = sum(f.stat().st_size for f in originals)
        print(f"seeded {accepted} photos of {size[0]}x{size[1]}, {total / len(originals) / 1e6:.1f} MB each on average, "
              f"from {len(users)} contributors in {time.perf_counter() - t0:.0f} s")

        ref = export_of(args.against, tmp) if args.against else None
        ratios, copies, exports, ref_ratios = [], [], [], []
        for i in range(args.pairs):
            t0 = time.perf_counter()
            copy_files(originals, tmp / f"copy{i}")
            copy_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            summary = run_export(export_mod, svc, tmp / f"export{i}")
            export_s = time.perf_counter() - t0
            assert summary.written == len(originals)
            ratios.append(copy_s / export_s)
            copies.append(copy_s)
            exports.append(export_s)
            line = f"  pair {i + 1}: copy {copy_s:6.2f} s, export {export_s:6.2f} s: {copy_s / export_s:.2f} of the copy's speed"
            if ref is not None:
                t0 = time.perf_counter()
                run_export(ref, svc, tmp / f"ref{i}")
                ref_s = time.perf_counter() - t0
                ref_ratios.append(copy_s / ref_s)
                line += f"; {args.against}'s export {ref_s:6.2f} s: {copy_s / ref_s:.2f}"
                shutil.rmtree(tmp / f"ref{i}")
            print(line)
            shutil.rmtree(tmp / f"copy{i}")
            if i < args.pairs - 1:
                shutil.rmtree(tmp / f"export{i}")
        t0 = time.perf_counter()
        again = run_export(export_mod, svc, tmp / f"export{args.pairs - 1}")
        rerun_s = time.perf_counter() - t0
        svc.db.dispose()

    mb = total / 1e6
    n = len(originals)
    c, e = statistics.median(copies), statistics.median(exports)
    print(f"plain copy   {n / c:8.1f} photos/s {mb / c:8.1f} MB/s  (median of {args.pairs})")
    print(f"export       {n / e:8.1f} photos/s {mb / e:8.1f} MB/s  (median of {args.pairs})")
    print(f"export speed / copy speed: median {statistics.median(ratios):.2f} of {args.pairs} pairs "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}; aim >= 0.5)")
    if ref_ratios:
        print(f"{args.against}'s export speed / copy speed: median {statistics.median(ref_ratios):.2f} "
              f"(range {min(ref_ratios):.2f}-{max(ref_ratios):.2f}): this export is {statistics.median(ratios) / statistics.median(ref_ratios):.2f}x as fast")
    print(f"re-run       {rerun_s:.2f} s ({again.written} written, {again.skipped} unchanged)")


if __name__ == "__main__":
    main()
