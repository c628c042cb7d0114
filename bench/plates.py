"""Plate reading on the corpus: recall, false "found", text accuracy, CPU and memory, workers.

    python bench/plates.py [--sides 1440] [--workers 1,2] [--jobs 24] [--lines]

Plate photos: ../shared/corpus/plates (ground truth in the .txt files and the seg_and_ocr csv).
Photos without a plate: the camera photos under ../shared/corpus/exif/jpg (animals, buildings,
the orientation samples) and the valid photos among ../shared/corpus/pillow-bad.
Each reading side runs in a fresh process, so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CORPUS = ROOT.parent / "shared" / "corpus"
NO_PLATE_EXTRA = ["pillow-bad/flower.webp", "pillow-bad/exif_gps_typeerror.jpg", "pillow-bad/junk_jpeg_header.jpg",
                  "pillow-bad/sugarshack.mpo", "pillow-bad/icc_profile_big.jpg", "pillow-bad/hopper_bad_exif.jpg",
                  "exif/heic/IMG_5195.HEIC", "exif/heic/samplefilehub.heif"]


def corpus_sets(corpus: Path = CORPUS) -> tuple[list[tuple[Path, str | None]], list[Path]]:
    """([(plate photo, true text or None)], [photo without a plate])."""
    plates: list[tuple[Path, str | None]] = []
    root = corpus / "plates"
    crops = {}
    gt_csv = root / "openalpr/seg_and_ocr/groundtruth-shared.csv"
    if gt_csv.is_file():
        with open(gt_csv) as fh:
            for row in csv.reader(fh):
                if len(row) == 3:
                    crops[row[0]] = row[2]
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in (".jpg", ".jpeg", ".png") or not p.is_file():
            continue
        truth = None
        txt = p.with_suffix(".txt")
        if txt.is_file():
            parts = txt.read_text().split()
            truth = parts[5] if len(parts) >= 6 else None
        elif p.name in crops:
            truth = crops[p.name]
        plates.append((p, truth))
    others = sorted(p for p in (corpus / "exif/jpg").rglob("*.jpg") if "invalid" not in p.parts)
    others += [corpus / x for x in NO_PLATE_EXTRA if (corpus / x).is_file()]
    return plates, others


def load(path: Path):
    """The photo as displayed: orientation applied, JPEG decoded at reduced scale (draft)."""
    from PIL import Image, ImageOps

    from collector.plates import reader as plates
    plates._register_heif()
    with Image.open(path) as im:
        if im.format in ("JPEG", "MPO"):
            im.draft("RGB", (plates.READ_SIDE, plates.READ_SIDE))
        return ImageOps.exif_transpose(im).convert("RGB")


class DefaultReader:
    """RapidOCR with its own defaults (detection scaled to at least 736 px on the short side,
    every thread), on the photo at full size: what the reader is measured against."""

    def __init__(self):
        from rapidocr import RapidOCR
        self.engine = RapidOCR(params={"Global.log_level": "error"})

    def lines(self, im):
        import numpy as np

        from collector.plates.reader import Line
        out = self.engine(np.ascontiguousarray(np.asarray(im)[:, :, ::-1]))
        if out.boxes is None:
            return []
        res = []
        for quad, text, score in zip(out.boxes, out.txts, out.scores, strict=True):
            xs, ys = [p[0] for p in quad], [p[1] for p in quad]
            res.append(Line((round(min(xs)), round(min(ys)), round(max(xs) - min(xs)), round(max(ys) - min(ys))), text, float(score)))
        return res

    def read(self, im):
        from collector.plates.reader import plates_from_lines
        return plates_from_lines(self.lines(im))


def char_accuracy(got: str, truth: str) -> float:
    sm = difflib.SequenceMatcher(None, got, truth)
    return sum(b.size for b in sm.get_matching_blocks()) / max(len(truth), 1)


def run_side(side: int, show_lines: bool) -> dict:
    """In this process: read every corpus photo at ``side``; per-photo figures."""
    from collector.plates import reader as plates
    t0 = time.process_time()
    if side:
        plates.READ_SIDE = side
        reader = plates.Reader(side=side)
    else:  # the baseline: RapidOCR as installed, its defaults, the full-size photo
        plates.READ_SIDE = 100_000
        reader = DefaultReader()
    plate_set, others = corpus_sets()
    reader.read(load(plate_set[0][0]))  # the first reading warms the engines up: counted as loading
    load_cpu = time.process_time() - t0
    rows = []
    for path, truth in plate_set + [(p, "") for p in others]:
        im = load(path)
        t = time.process_time()
        found = reader.read(im)
        cpu = time.process_time() - t
        lines = reader.lines(im) if show_lines else []
        best = found[0].text if found else None
        if truth and found:  # the plate whose text is closest to the truth, when several
            best = max((p.text for p in found), key=lambda s: char_accuracy(s, truth))
        rows.append({"file": str(path.relative_to(CORPUS)), "plate": truth != "", "truth": truth, "found": bool(found),
                     "text": best, "texts": [p.text for p in found], "cpu_ms": cpu * 1000, "size": im.size,
                     "lines": [(ln.text, round(ln.score, 2), ln.box) for ln in lines] if show_lines else None})
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"side": side, "load_cpu_ms": load_cpu * 1000, "peak_rss_mb": rss, "rows": rows}


def summary(res: dict) -> dict:
    rows = res["rows"]
    pos = [r for r in rows if r["plate"]]
    neg = [r for r in rows if not r["plate"]]
    gt = [r for r in pos if r["truth"]]
    return {
        "side": res["side"],
        "recall": sum(r["found"] for r in pos) / len(pos),
        "false_found": sum(r["found"] for r in neg) / len(neg),
        "exact": sum(r["text"] == r["truth"] for r in gt) / len(gt),
        "chars": sum(char_accuracy(r["text"] or "", r["truth"]) for r in gt) / len(gt),
        "cpu_ms_mean": sum(r["cpu_ms"] for r in rows) / len(rows),
        "cpu_ms_max": max(r["cpu_ms"] for r in rows),
        "cpu_ms_median": sorted(r["cpu_ms"] for r in rows)[len(rows) // 2],
        # photos at least as large as the reading side: every phone photo is one of these
        "large": [r["cpu_ms"] for r in rows if max(r["size"]) >= (res["side"] or 10**9)],
        "peak_rss_mb": res["peak_rss_mb"], "load_cpu_ms": res["load_cpu_ms"],
        "n": (len(pos), len(neg), len(gt)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sides", default="1440", help="reading sides to measure; 0 = RapidOCR's defaults at full size")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--jobs", type=int, default=24, help="photos per worker-throughput run")
    ap.add_argument("--lines", action="store_true", help="print every miss with the OCR's lines")
    ap.add_argument("--one-side", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_side is not None:
        print(json.dumps(run_side(args.one_side, args.lines)))
        return
    if not (CORPUS / "plates").is_dir():
        sys.exit(f"no corpus at {CORPUS}")
    plate_set, others = corpus_sets()
    print(f"corpus: {len(plate_set)} plate photos ({sum(1 for _, t in plate_set if t)} with true text), "
          f"{len(others)} photos without a plate")
    print(f"{'side':>5} {'recall':>7} {'false':>6} {'exact':>6} {'chars':>6} {'cpu ms':>7} {'median':>7} {'max ms':>7} {'RSS MB':>7}")
    for side in [int(s) for s in args.sides.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--one-side", str(side)] + (["--lines"] if args.lines else []),
                             capture_output=True, text=True, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        s = summary(res)
        label = side or "full*"
        print(f"{label:>5} {s['recall']:>7.0%} {s['false_found']:>6.0%} {s['exact']:>6.0%} {s['chars']:>6.0%} "
              f"{s['cpu_ms_mean']:>7.0f} {s['cpu_ms_median']:>7.0f} {s['cpu_ms_max']:>7.0f} {s['peak_rss_mb']:>7.0f}")
        if s["large"]:
            big = sorted(s["large"])
            print(f"      photos of {side} px or more on their long side (read at {side}): {len(big)}, "
                  f"CPU mean {sum(big) / len(big):.0f} ms, median {big[len(big) // 2]:.0f} ms")
        if args.lines:
            for r in res["rows"]:
                bad = (r["plate"] and (not r["found"] or (r["truth"] and r["text"] != r["truth"]))) or (not r["plate"] and r["found"])
                if bad:
                    print(f"   {r['file']}: truth={r['truth']!r} got={r['texts']} lines={r['lines']}")
    if args.workers and args.workers != "0":
        workers_bench([int(n) for n in args.workers.split(",")], args.jobs)


def workers_bench(counts: list[int], jobs: int) -> None:
    """Throughput of N real `flask plates run --until-idle` processes on one SQLite database and
    folder, over ``jobs`` generated 1600x1200 plate photos accepted through intake."""
    import io

    from collector import create_app
    from collector.plates import jobs as jobs_mod
    from collector.web.accounts import create_user
    from tests.plate_images import plate_photo

    print(f"\nworkers: {jobs} generated 1600x1200 plate photos per run, SQLite")
    base = None
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            settings = {"DATA_DIR": tmp, "SECRET_KEY": "bench", "TESTING": True}
            app = create_app(settings)
            app.extensions["collector"].db.migrate()  # a new database: create_app never migrates
            svc = app.extensions["collector"]
            user = create_user(svc.db, "bench@example.com", "Bench", "long enough password", "CC BY 4.0")
            for i in range(jobs):
                data, _ = plate_photo([f"KA{i % 90 + 10:02d} AB{1000 + i}"], seed=i, size=(1600, 1200), plate_width=420)
                assert svc.intake.submit(user.id, io.BytesIO(data), f"{i}.jpg").status == "accepted"
            env = dict(os.environ, COLLECTOR_DATA_DIR=tmp, COLLECTOR_SECRET_KEY="bench")
            t0 = time.perf_counter()
            procs = [subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "plates", "run", "--until-idle"],
                                      cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]
            for p in procs:
                p.wait()
            wall = time.perf_counter() - t0
            with svc.db.Session() as s:
                rows = list(jobs_mod.report_rows(s))
            found = sum(r["status"] == "found" for r in rows)
            svc.db.dispose()
        rate = jobs / wall
        base = base or rate
        print(f"  {n} worker{'s' if n > 1 else ' '}: {wall:6.1f} s wall (model load included), {rate:5.2f} photos/s, "
              f"x{rate / base:.2f} of 1 worker; plates found {found}/{jobs}")


if __name__ == "__main__":
    main()
