"""Slow clients against `make run`'s server set-up (gunicorn.conf.py), on loopback only.

    python bench/slow_clients.py [--slow 50] [--seconds 30] [--workers 2] [--threads 8] [--compare-gthread]

Starts the server exactly as `make run` does (gunicorn with gunicorn.conf.py, 2 processes x 8
app threads) on a free loopback port with a fresh SQLite database and photo folder. First a
baseline: a normal client loads `/` every 0.25 s and uploads one photo, alone. Then `--slow`
clients, each authorised with an API token, open an upload, send its headers and then one
byte every 2 s for `--seconds` seconds, while the normal client does the same again. Prints
p50/p95 of the page loads and the upload time in both phases, and their ratio. Every loop is
bounded in count and time, and every socket is closed at the end.

With `--compare-gthread` the same is run against the old set-up too (gunicorn's gthread
worker class with the same processes and threads), where each slow upload holds a thread.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from collector import create_app  # noqa: E402
from collector.web import accounts  # noqa: E402
from tests.conftest import free_port, wait_for_port  # noqa: E402
from tests.synthetic import plate_photo  # noqa: E402

PROBE_TIMEOUT = 10.0


def start_server(data_dir: Path, port: int, workers: int, threads: int, gthread: bool) -> subprocess.Popen:
    env = dict(os.environ, COLLECTOR_DATA_DIR=str(data_dir), COLLECTOR_SECRET_KEY="bench-secret")
    cmd = [str(Path(sys.executable).parent / "gunicorn"), "--bind", f"127.0.0.1:{port}",
           "--workers", str(workers), "--threads", str(threads), "app:create_app()"]
    if gthread:
        cmd[1:1] = ["--worker-class", "gthread"]
    log = open(data_dir / "server.log", "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port, proc, timeout=60)
    return proc


def slow_uploader(port: int, token: str, until: float, stop: threading.Event, opened: list) -> None:
    """Headers of a 5 MB upload, then one byte every 2 s until ``until`` (or the server closes)."""
    body_len = 5 * 1024 * 1024
    head = (f"POST /api/v1/photos HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {body_len}\r\n\r\n").encode()
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return
    opened.append(1)
    try:
        sock.sendall(head)
        while time.monotonic() < until and not stop.is_set():
            sock.sendall(b"-")
            stop.wait(2.0)
    except OSError:
        pass  # closed by the server (body deadline)
    finally:
        sock.close()


def normal_client(base: str, token: str, photo: bytes, seconds: float) -> tuple[list[float], float | None, int]:
    """Load `/` every 0.25 s for ``seconds``, and upload ``photo`` once half-way. Returns the page
    times (a timed-out probe counts as PROBE_TIMEOUT), the upload time and the failures."""
    times, failures, upload_time = [], 0, None
    end = time.monotonic() + seconds
    uploaded = False
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            ok = requests.get(f"{base}/", timeout=PROBE_TIMEOUT).status_code == 200
        except requests.RequestException:
            ok = False
        times.append(time.monotonic() - t0 if ok else PROBE_TIMEOUT)
        failures += not ok
        if not uploaded and time.monotonic() > end - seconds / 2:
            uploaded = True
            t0 = time.monotonic()
            try:
                r = requests.post(f"{base}/api/v1/photos", files={"photo": ("plate.jpg", photo)},
                                  headers={"Authorization": f"Bearer {token}"}, timeout=60)
                upload_time = time.monotonic() - t0 if r.status_code in (200, 201, 409) else None
            except requests.RequestException:
                upload_time = None
        time.sleep(max(0.0, 0.25 - (time.monotonic() - t0)))
    return times, upload_time, failures


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18] if len(values) >= 2 else values[0]


def run(label: str, args, gthread: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="slow-clients-") as tmp:
        data_dir = Path(tmp)
        port = free_port()
        app = create_app({"DATA_DIR": str(data_dir), "SECRET_KEY": "bench-secret"})
        app.extensions["collector"].db.migrate()  # a new database: create_app never migrates
        svc = app.extensions["collector"]
        normal = accounts.create_user(svc.db, "normal@example.com", "Normal", "correct horse battery", "CC BY 4.0")
        attacker = accounts.create_user(svc.db, "slow@example.com", "Slow", "correct horse battery", "CC BY 4.0")
        normal_token = accounts.create_token(svc.db, normal.id).token
        slow_token = accounts.create_token(svc.db, attacker.id).token
        svc.db.dispose()
        proc = start_server(data_dir, port, args.workers, args.threads, gthread)
        base = f"http://127.0.0.1:{port}"
        stop = threading.Event()
        pool: list[threading.Thread] = []
        try:
            for _ in range(3):  # warm up: the processes' first requests
                try:
                    requests.get(f"{base}/", timeout=PROBE_TIMEOUT)
                except requests.RequestException:
                    pass
            base_times, base_upload, base_fail = normal_client(base, normal_token, plate_photo(1, (1200, 900)), args.probe_seconds)
            until = time.monotonic() + args.seconds
            opened: list = []
            for _ in range(args.slow):
                t = threading.Thread(target=slow_uploader, args=(port, slow_token, until, stop, opened), daemon=True)
                t.start()
                pool.append(t)
            time.sleep(3.0)  # every slow upload has sent its headers and a byte or two
            slow_times, slow_upload, slow_fail = normal_client(base, normal_token, plate_photo(2, (1200, 900)), args.probe_seconds)
        finally:
            stop.set()
            for t in pool:
                t.join(5)
            proc.terminate()
            proc.wait(30)
        fmt = lambda v: "failed" if v is None else f"{v:.3f} s"  # noqa: E731
        print(f"== {label}: {args.workers} processes x {args.threads} app threads, {len(opened)} slow uploads connected")
        print(f"  alone:          GET / p50 {statistics.median(base_times):.3f} s  p95 {p95(base_times):.3f} s  "
              f"({len(base_times)} loads, {base_fail} failed); upload {fmt(base_upload)}")
        print(f"  with {args.slow} slow: GET / p50 {statistics.median(slow_times):.3f} s  p95 {p95(slow_times):.3f} s  "
              f"({len(slow_times)} loads, {slow_fail} failed or over {PROBE_TIMEOUT:.0f} s); upload {fmt(slow_upload)}")
        print(f"  p95 ratio (with slow clients / alone): {p95(slow_times) / p95(base_times):.1f}x; "
              f"target p95 under 1 s: {'met' if p95(slow_times) < 1.0 and slow_upload is not None else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=50, help="slow uploaders (at most 200)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the slow uploaders trickle (at most 120)")
    parser.add_argument("--probe-seconds", type=float, default=8.0, help="how long the normal client probes in each phase")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--compare-gthread", action="store_true", help="also run against gunicorn's gthread workers")
    args = parser.parse_args()
    args.slow = min(args.slow, 200)
    args.seconds = min(args.seconds, 120.0)
    args.probe_seconds = min(args.probe_seconds, args.seconds - 4)
    run("make run (collector.web.server.Worker)", args, gthread=False)
    if args.compare_gthread:
        run("old set-up (gthread)", args, gthread=True)


if __name__ == "__main__":
    main()
