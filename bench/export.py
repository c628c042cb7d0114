"""Export throughput next to a plain copy of the same files, measured in the same run.

    python bench/export.py [--photos 2000] [--contributors 80] [--size 1600x1200]

Generates distinct plate-like JPEGs (tests/synthetic.py), runs them through intake into a
temporary SQLite database and folder store, then times (1) a plain copy of the stored
originals to a new folder and (2) ``flask export`` in imagefolder format to another, and
(3) an incremental re-run. The aim: export at least half the speed of the copy.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collector import accounts, create_app  # noqa: E402
from collector import export as export_mod  # noqa: E402
from tests.synthetic import plate_photo  # noqa: E402


def _gen(args):
    return plate_photo(*args)


def drop_caches_hint() -> None:
    os.sync()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=2000)
    p.add_argument("--contributors", type=int, default=80)
    p.add_argument("--size", default="1600x1200")
    args = p.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        app = create_app({"DATA_DIR": str(tmp / "data"), "SECRET_KEY": "bench", "MAX_PHOTOS": 10**6})
        svc = app.extensions["collector"]
        users = [accounts.create_user(svc.db, f"c{i}@example.com", f"C{i}", "bench password 1", "CC BY 4.0")
                 for i in range(args.contributors)]
        t0 = time.perf_counter()
        with Pool(os.cpu_count()) as pool:
            photos = pool.map(_gen, [(50_000 + i, size) for i in range(args.photos)], chunksize=20)
        accepted = sum(svc.intake.submit(users[i % len(users)].id, io.BytesIO(d), f"{i}.jpg").accepted for i, d in enumerate(photos))
        print(f"seeded {accepted} photos of {size[0]}x{size[1]} from {len(users)} contributors in {time.perf_counter() - t0:.0f} s")

        originals = [f for f in (tmp / "data" / "photos" / "originals").rglob("*") if f.is_file()]
        total = sum(f.stat().st_size for f in originals)
        drop_caches_hint()
        t0 = time.perf_counter()
        (tmp / "copy").mkdir()
        for f in originals:
            shutil.copyfile(f, tmp / "copy" / f.name)
        os.sync()
        copy_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        summary = export_mod.export(svc.db, svc.storage, tmp / "export", export_mod.Options(), "bench", "CC BY 4.0")
        os.sync()
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = export_mod.export(svc.db, svc.storage, tmp / "export", export_mod.Options(), "bench", "CC BY 4.0")
        rerun_s = time.perf_counter() - t0
        svc.db.dispose()

    mb = total / 1e6
    print(f"plain copy   {len(originals) / copy_s:8.0f} photos/s {mb / copy_s:8.1f} MB/s  ({copy_s:.2f} s for {len(originals)} files, {mb:.0f} MB)")
    print(f"export       {summary.written / export_s:8.0f} photos/s {mb / export_s:8.1f} MB/s  ({export_s:.2f} s; "
          f"{export_s / copy_s:.2f}x the copy's time, i.e. {copy_s / export_s:.2f} of its speed)")
    print(f"re-run       {rerun_s:.2f} s ({again.written} written, {again.skipped} unchanged)")


if __name__ == "__main__":
    main()
