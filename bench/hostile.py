"""What each hostile file costs a web worker, next to a plain 12 MP phone photo in the same run.

    python bench/hostile.py [--only SUBSTRING] [--threads 8]

Every file is made here (tests/hostile_files.py). Each row runs in a fresh worker process
(the app on a temporary SQLite database and folder store, default settings, so decoding goes
through the decoder processes): it first sends a small ordinary photo (the decoder process is
up), then the file through ``Intake.submit``, and reports

  verdict     the code intake answered (ok = accepted)
  worker MB   the worker's peak RSS increase during the submit (VmHWM after - VmRSS before)
  decoder MB  the decoder process's peak RSS during the decode ("killed" when it was)
  CPU s       CPU seconds of the worker plus its decoder processes during the submit
  x base      that CPU against the plain 12 MP JPEG's

Rows marked "backstop alone" call imaging.decode with prechecks=False: no structural
pre-check, no per-format pixel limit, only the decoder process's memory and CPU limits.

Then the per-photo cost of the decoder processes themselves: a 12 MP JPEG and a 12 MP HEIC
decoded in the worker (processes=0) and through the pool, CPU of worker + decoder and peak
RSS; and --threads threads sending 12 MP HEICs at once to one worker (issue 12: <= 300 MB).
Targets (issue 8): every verdict a known code, <= 300 MB RSS increase, <= 2 s CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import hostile_files as H  # noqa: E402

KNOWN = {None, "corrupt", "too_many_pixels", "too_complex", "too_small", "low_quality", "not_an_image", "unsupported_format"}


def phone_jpeg() -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Apple", "iPhone 12"
    exif.get_ifd(0x8769)[0x9003] = "2026:11:20 10:00:00"
    return H.encode(H.photo(4032, 3024, seed=7), "JPEG", quality=90, exif=exif)


def cases() -> list[tuple[str, str, bytes]]:
    """(class, name, bytes); the class "submit" or "backstop" says how the worker runs it."""
    heic12 = H.heic(4032, 3024, quality=50)
    jpeg = H.encode(H.photo(2000, 1500), "JPEG", quality=85)
    rows = [
        ("submit", "baseline: 12 MP phone JPEG", phone_jpeg()),
        ("submit", "baseline: 12 MP HEIC", heic12),
        ("submit", "bomb: PNG 10000x10000 RGB", H.png_bomb(10000, 10000)),
        ("submit", "bomb: PNG 16-bit 10950x10950", H.png_bomb(10950, 10950, 16, 0)),
        ("submit", "bomb: WebP lossless 16383x7320", H.webp_lossless_bomb(16383, 7320)),
        ("submit", "bomb: HEIC declaring 20000x20000", H.heic_with_dims(20000, 20000)),
        ("submit", "bomb: JPEG declaring 65000x65000", H.jpeg_with_dims(65000, 65000)),
        ("submit", "bomb: progressive JPEG 12000x9000", H.jpeg_with_dims(12000, 9000, progressive=True)),
        ("submit", "many-scan JPEG (20 MB)", H.many_scan_jpeg(770_000)),
        ("submit", "truncated 80%: JPEG", H.truncated(jpeg, 0.8)),
        ("submit", "truncated 80%: progressive JPEG", H.truncated(H.encode(H.photo(2000, 1500), "JPEG", progressive=True), 0.8)),
        ("submit", "truncated 80%: PNG", H.truncated(H.encode(H.photo(2000, 1500), "PNG"), 0.8)),
        ("submit", "truncated 80%: WebP", H.truncated(H.encode(H.photo(2000, 1500), "WEBP"), 0.8)),
        ("submit", "truncated 50%: 12 MP HEIC", H.truncated(heic12, 0.5)),
        ("submit", "truncated 95%: 12 MP HEIC", H.truncated(heic12, 0.95)),
        ("submit", "bad EXIF: short TIFF header, JPEG", H.with_exif("JPEG", H.short_tiff_exif())),
        ("submit", "bad EXIF: short TIFF header, PNG", H.with_exif("PNG", H.short_tiff_exif())),
        ("submit", "bad EXIF: short TIFF header, WebP", H.with_exif("WEBP", H.short_tiff_exif())),
        ("submit", "polyglot: JPEG + ZIP", H.jpeg_zip_polyglot()),
        ("submit", "polyglot: PNG + HTML", H.png_html_polyglot()),
        ("submit", "polyglot: HEIF brands + mp4 box", H.heif_mp4_polyglot()),
        ("submit", "polyglot: PNG header + JPEG body", H.jpeg_in_png()),
        ("backstop", "backstop alone: WebP lossless 16383x7320", H.webp_lossless_bomb(16383, 7320)),
        ("backstop", "backstop alone: PNG 10000x10000 RGB", H.png_bomb(10000, 10000)),
        ("backstop", "backstop alone: PNG 16-bit 10950x10950", H.png_bomb(10950, 10950, 16, 0)),
        ("backstop", "backstop alone: many-scan JPEG (20 MB)", H.many_scan_jpeg(770_000)),
    ]
    return rows


# -- the worker side ------------------------------------------------------------------------


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def worker(kind: str, path: Path) -> dict:
    from collector import create_app
    from collector.intake import decoding, imaging
    from collector.web.accounts import create_user

    tmp = Path(tempfile.mkdtemp(prefix="hostile-"))
    app = create_app({"DATA_DIR": str(tmp), "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
                      "STORAGE_URL": str(tmp / "photos"), "SECRET_KEY": "bench", "TESTING": True})
    app.extensions["collector"].db.migrate()  # a new database: create_app never migrates
    svc = app.extensions["collector"]
    user = create_user(svc.db, "bench@example.com", "Bench", "correct horse battery", "CC BY 4.0")
    svc.intake.submit(user.id, io.BytesIO(H.encode(H.photo(800, 600, seed=99), "JPEG")), "warm.jpg")
    pool = decoding.pool(imaging.DECODE_PROCESSES, imaging.DECODE_MEMORY_MB, imaging.DECODE_CPU_SECONDS)
    data = path.read_bytes()
    live_before = pool.cpu_seconds_used()
    reaped_before = _children_cpu()
    rss_before = _rss_kb("VmRSS")
    decoding.reset_peak_rss()
    cpu0 = time.process_time()
    if kind == "submit":
        v = svc.intake.submit(user.id, io.BytesIO(data), path.name)
        code = v.code if v.status == "rejected" else None
    else:
        try:
            fmt, _ = imaging.sniff(data[:64])
            imaging.decode(path, fmt, 120_000_000, prechecks=False)
            code = None
        except imaging.DecodeError as exc:
            code = exc.code
    own_cpu = time.process_time() - cpu0
    peak = _rss_kb("VmHWM")
    decoder_kb, _, decoder_pid = pool.last()
    survivors = set(pool.pids())
    live_now = pool.cpu_seconds_used()
    decoding.close_pools()  # reaps every decoder: their CPU is now in RUSAGE_CHILDREN
    child_cpu = _children_cpu() - reaped_before - live_before
    del live_now
    return {
        "code": code,
        "worker_mb": (peak - rss_before) / 1024,
        "decoder_mb": decoder_kb / 1024 if decoder_pid in survivors and decoder_kb else None,
        "cpu": own_cpu + max(0.0, child_cpu),
        "bytes": len(data),
    }


def overhead(mode: str, fmt: str, path: Path, n: int, threads: int) -> dict:
    """Per-photo CPU and peak RSS of decoding ``path`` in this fresh worker process."""
    from collector.intake import decoding, imaging

    procs = 0 if mode == "in worker" else imaging.DECODE_PROCESSES
    pool = decoding.pool(procs, imaging.DECODE_MEMORY_MB, imaging.DECODE_CPU_SECONDS) if procs else None
    if mode == "threads":
        # Issue 12: `threads` threads of one worker decoding at once, default pool.
        imaging.decode(path, fmt, 120_000_000)
        peaks: list[int] = []

        def go():
            for _ in range(n):
                imaging.decode(path, fmt, 120_000_000)
                peaks.append(pool.last()[0])

        ts = [threading.Thread(target=go) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return {"worker_mb": _rss_kb("VmHWM") / 1024, "decoder_mb": max(peaks) / 1024, "decoders": procs}
    c0 = time.process_time()
    k0 = pool.cpu_seconds_used() if pool else 0.0
    imaging.decode(path, fmt, 120_000_000)  # the first one: imports, decoder start (not counted)
    c0 = time.process_time()
    k0 = pool.cpu_seconds_used() if pool else 0.0
    for _ in range(n):
        imaging.decode(path, fmt, 120_000_000, processes=procs)
    cpu = time.process_time() - c0 + ((pool.cpu_seconds_used() - k0) if pool else 0.0)
    return {"ms": 1000 * cpu / n, "worker_mb": _rss_kb("VmHWM") / 1024, "decoder_mb": pool.last()[0] / 1024 if pool else None}


# -- the driver -----------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "FILE"), help=argparse.SUPPRESS)
    ap.add_argument("--overhead", nargs=4, metavar=("MODE", "FMT", "FILE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], Path(args.worker[1]))))
        return
    if args.overhead:
        mode, fmt, file, n = args.overhead
        print(json.dumps(overhead(mode, fmt, Path(file), int(n), args.threads)))
        return

    tmp = Path(tempfile.mkdtemp(prefix="hostile-files-"))
    every = cases()
    rows = [r for r in every if args.only.lower() in r[1].lower() or r[1].startswith("baseline: 12 MP phone")]
    results = []
    print(f"{'file':44} {'size':>9} {'verdict':>16} {'worker MB':>10} {'decoder MB':>11} {'CPU s':>7} {'x base':>7}")
    base_cpu = None
    for i, (kind, name, data) in enumerate(rows):
        path = tmp / f"{i:02d}"
        path.write_bytes(data)
        proc = subprocess.run([sys.executable, __file__, "--worker", kind, str(path)], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            print(f"{name:44} worker failed: {proc.stderr.strip().splitlines()[-1:]}")
            results.append((name, None))
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        if base_cpu is None:
            base_cpu = r["cpu"]
        dec = "killed" if r["decoder_mb"] is None else f"{r['decoder_mb']:.0f}"
        print(f"{name:44} {r['bytes']:>9} {r['code'] or 'ok':>16} {r['worker_mb']:>10.1f} {dec:>11} {r['cpu']:>7.2f} {r['cpu'] / base_cpu:>7.1f}", flush=True)
        results.append((name, r))
        path.unlink()
    bad = [n for n, r in results if r is None or r["code"] not in KNOWN or r["worker_mb"] > 300 or r["cpu"] > 2.0
           or (r["decoder_mb"] or 0) > 300]
    print(f"\nall verdicts known, <= 300 MB and <= 2 s CPU: {'yes' if not bad else 'NO: ' + ', '.join(bad)}")

    jpg, heic = tmp / "phone.jpg", tmp / "phone.heic"
    jpg.write_bytes(rows[0][2])
    heic.write_bytes(next(r[2] for r in every if r[1] == "baseline: 12 MP HEIC"))

    def run(mode: str, fmt: str, path: Path, n: int) -> dict | None:
        cmd = [sys.executable, __file__, "--threads", str(args.threads), "--overhead", mode, fmt, str(path), str(n)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            print(f"overhead run {mode} {fmt} failed:", proc.stderr[-1500:])
            return None
        return json.loads(proc.stdout.strip().splitlines()[-1])

    print(f"\n{'per photo, fresh worker process each':40} {'CPU ms':>8} {'worker peak MB':>15} {'decoder peak MB':>16}")
    found = {}
    for label, fmt, path, n in (("JPEG 12 MP", "JPEG", jpg, 20), ("HEIC 12 MP", "HEIF", heic, 4)):
        for mode in ("in worker", "decoder process"):
            r = found[label, mode] = run(mode, fmt, path, n)
            if r:
                dec = "-" if r["decoder_mb"] is None else f"{r['decoder_mb']:.0f}"
                print(f"{label + ', ' + mode:40} {r['ms']:>8.1f} {r['worker_mb']:>15.0f} {dec:>16}", flush=True)
        a, b = found[label, "in worker"], found[label, "decoder process"]
        if a and b:
            print(f"{label}: the decoder process adds {b['ms'] - a['ms']:+.1f} ms CPU a photo ({b['ms'] / a['ms']:.2f}x)")
    t = run("threads", "HEIF", heic, 2)
    if t:
        print(f"\n{args.threads} threads x 2 HEICs (12 MP) at once in one worker with {t['decoders']} decoder processes: "
              f"worker peak RSS {t['worker_mb']:.0f} MB, each decoder at most {t['decoder_mb']:.0f} MB, "
              f"worker + decoders <= {t['worker_mb'] + t['decoders'] * t['decoder_mb']:.0f} MB")


if __name__ == "__main__":
    main()
