"""A batch of photos through the real upload page in Chromium on throttled networks: total time,
and the bytes the server read against the plain sum of the files' sizes.

    python bench/upload_network.py                      (short: 6 small photos, every profile)
    python bench/upload_network.py --full               (25 phone photos of 2-5 MB: about an hour)
    python bench/upload_network.py --photos 5 --size phone --profiles wifi,3g-drop

Each profile runs on a fresh server (temporary SQLite file and photo folder) behind a
middleware that counts the request-body bytes the app reads on the upload routes; the page is
Debian's Chromium at 390x844, driven by Playwright, with CDP Network.emulateNetworkConditions:

  wifi      20 ms, 3.75 MB/s each way
  slow-3g   400 ms, 50 kB/s each way (DevTools' "Slow 3G")
  3g-drop   150 ms, 180 kB/s down / 90 kB/s up, and 30 s offline once a third of the bytes are in

After each batch the same files are added again by the same person: the server already has
them, so the page must send 0 bytes ("again" column). Figures are noisy on a shared machine;
the ratios are what to read: bytes/size (target <= 1.05 with drops) and time against the time
the bytes alone need at that profile's upload speed (plus the drop).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from collector import create_app  # noqa: E402
from tests import chromium  # noqa: E402
from tests.phone_photos import phone_photo  # noqa: E402

PROFILES = {
    "wifi": {"offline": False, "latency": 20, "downloadThroughput": 3_750_000, "uploadThroughput": 3_750_000},
    "slow-3g": {"offline": False, "latency": 400, "downloadThroughput": 50_000, "uploadThroughput": 50_000},
    "3g-drop": {"offline": False, "latency": 150, "downloadThroughput": 180_000, "uploadThroughput": 90_000},
}
OFFLINE = {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0}
DROP_SECONDS = 30
SIZES = {"small": ((1024, 768), 10.0), "phone": ((4032, 3024), 8.0)}


class Counting:
    def __init__(self, app):
        self.app, self.bytes, self.lock = app, 0, threading.Lock()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/api/v1/uploads") or path in ("/api/v1/photos", "/upload"):
            stream, counter = environ["wsgi.input"], self

            class Input:
                def read(self, *a):
                    data = stream.read(*a)
                    with counter.lock:
                        counter.bytes += len(data)
                    return data

                def readline(self, *a):
                    data = stream.readline(*a)
                    with counter.lock:
                        counter.bytes += len(data)
                    return data

            environ["wsgi.input"] = Input()
        return self.app(environ, start_response)


def make_photos(folder: Path, count: int, size: str) -> list[Path]:
    (w, h), noise = SIZES[size]
    out = []
    for i in range(count):
        # Phones vary: a little noise more or less moves a 12 MP JPEG between about 2 and 5 MB.
        path = folder / f"IMG_{i:04d}.jpg"
        path.write_bytes(phone_photo(1000 + i, size=(w, h), noise=noise + (i % 4) * 1.5))
        out.append(path)
    return out


def run_profile(name: str, files: list[Path], executable: str, data: Path) -> dict:
    app = create_app({"DATA_DIR": str(data), "SECRET_KEY": "bench", "QUOTA": 25, "MAX_PHOTOS": 1000})
    app.extensions["collector"].db.migrate()  # a new database: create_app never migrates
    counting = Counting(app.wsgi_app)
    app.wsgi_app = counting
    total = sum(f.stat().st_size for f in files)
    n = len(files)
    try:
        with chromium.serve(app) as base, chromium.launch(executable) as browser:
            context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
            page = context.new_page()
            page.on("dialog", lambda d: d.accept())
            cdp = context.new_cdp_session(page)
            cdp.send("Network.enable")
            chromium.register(page, base, "Bench", "bench@example.com")
            cdp.send("Network.emulateNetworkConditions", PROFILES[name])
            counting.bytes = 0
            started = time.monotonic()
            page.set_input_files("#photo-input", [str(f) for f in files])
            if name == "3g-drop":
                while counting.bytes < total / 3:
                    time.sleep(0.1)
                cdp.send("Network.emulateNetworkConditions", OFFLINE)
                time.sleep(DROP_SECONDS)
                cdp.send("Network.emulateNetworkConditions", PROFILES[name])
            done = "() => document.querySelectorAll('.job.verdict-accepted, .job.verdict-rejected').length >= "
            page.wait_for_function(done + str(n), timeout=3 * 3600 * 1000, polling=500)
            elapsed = time.monotonic() - started
            sent = counting.bytes
            accepted = page.locator(".job.verdict-accepted").count()
            # the same files again: the server has every one of them
            page.click("#clear-done")
            counting.bytes = 0
            again_started = time.monotonic()
            page.set_input_files("#photo-input", [str(f) for f in files])
            page.wait_for_function(done + str(n), timeout=600_000, polling=500)
            again_elapsed = time.monotonic() - again_started
            again = counting.bytes
            context.close()
    finally:
        app.extensions["collector"].db.dispose()
    ideal = total / PROFILES[name]["uploadThroughput"] + (DROP_SECONDS if name == "3g-drop" else 0)
    return {"profile": name, "photos": n, "accepted": accepted, "mb": total / 1e6, "seconds": elapsed,
            "ideal": ideal, "sent": sent, "ratio": sent / total, "again": again, "again_seconds": again_elapsed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=6)
    p.add_argument("--size", choices=SIZES, default="small")
    p.add_argument("--profiles", default=",".join(PROFILES))
    p.add_argument("--full", action="store_true", help="25 phone-sized photos (2-5 MB) on every profile")
    args = p.parse_args()
    if args.full:
        args.photos, args.size = 25, "phone"
    executable = chromium.CHROMIUM
    if not executable:
        sys.exit("needs Debian's chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="upload-network-", ignore_cleanup_errors=True) as tmp:
        tmp = Path(tmp)
        (tmp / "photos").mkdir()
        t = time.monotonic()
        files = make_photos(tmp / "photos", args.photos, args.size)
        sizes = sorted(f.stat().st_size for f in files)
        print(f"{len(files)} photos, {sizes[0] / 1e6:.2f}-{sizes[-1] / 1e6:.2f} MB each, "
              f"{sum(sizes) / 1e6:.1f} MB in all (made in {time.monotonic() - t:.0f} s)")
        print(f"{'profile':<9} {'photos':>6} {'ok':>3} {'MB':>6} {'time s':>7} {'bytes s':>8} {'time/bytes':>10} "
              f"{'sent/size':>9} {'again B':>8} {'again s':>7}")
        for name in args.profiles.split(","):
            r = run_profile(name, files, executable, tmp / f"data-{name}")
            print(f"{r['profile']:<9} {r['photos']:>6} {r['accepted']:>3} {r['mb']:>6.1f} {r['seconds']:>7.1f} "
                  f"{r['ideal']:>8.1f} {r['seconds'] / r['ideal']:>9.2f}x {r['ratio']:>8.4f}x {r['again']:>8} "
                  f"{r['again_seconds']:>7.1f}", flush=True)
    print("time/bytes: the batch's time against the time its bytes need at the profile's upload speed"
          " (+ the drop); sent/size: body bytes the server read against the files' sizes.")


if __name__ == "__main__":
    main()
