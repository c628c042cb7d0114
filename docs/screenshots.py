"""Take the README's screenshots of the upload page mid-batch, at phone and desktop size.

    python docs/screenshots.py        (writes docs/upload-phone.png and docs/upload-desktop.png)

A temporary server and Debian's Chromium with the network throttled, so the picture shows a
batch under way: accepted photos, one refused, one uploading, some waiting.
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from collector import create_app  # noqa: E402
from tests import chromium  # noqa: E402
from tests.phone_photos import phone_photo  # noqa: E402

SIZES = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1100, "height": 760}}


def shoot(kind: str, folder: Path, executable: str) -> None:
    app = create_app({"DATA_DIR": str(folder / f"data-{kind}"), "SECRET_KEY": "shots"})
    app.extensions["collector"].db.migrate()  # a new database: create_app never migrates
    files = []
    for i, seed in enumerate([7, 8, 9, 10, 11, 12, 13, 14]):
        path = folder / f"IMG_20261126_1{i}42.jpg"
        path.write_bytes(phone_photo(seed, size=(1024, 768) if i < 4 else (2000, 1500), noise=10))
        files.append(path)
    small = folder / "IMG_20261126_1907.jpg"
    small.write_bytes(phone_photo(99, size=(400, 300)))
    files.insert(3, small)
    try:
        with chromium.serve(app) as base, chromium.launch(executable) as browser:
            context = browser.new_context(viewport=SIZES[kind], is_mobile=kind == "phone", has_touch=kind == "phone",
                                          device_scale_factor=1)
            page = context.new_page()
            chromium.register(page, base)
            for seed in (40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51):  # earlier photos toward the fee
                svc = app.extensions["collector"]
                svc.intake.submit(1, io.BytesIO(phone_photo(seed, size=(800, 600))), f"earlier-{seed}.jpg")
            page.reload()
            page.wait_for_selector("body[data-queue-ready]", state="attached")
            cdp = context.new_cdp_session(page)
            cdp.send("Network.emulateNetworkConditions",
                     {"offline": False, "latency": 150, "downloadThroughput": 180_000, "uploadThroughput": 120_000})
            page.set_input_files("#photo-input", [str(f) for f in files])
            page.wait_for_function("() => document.querySelectorAll('.job.verdict-accepted, .job.verdict-rejected').length >= 5",
                                   timeout=120_000)
            page.wait_for_function("() => [...document.querySelectorAll('.job progress')].some(p => !p.hidden && p.value > 30)",
                                   timeout=120_000)
            time.sleep(0.3)
            out = str(ROOT / "docs" / f"upload-{kind}.png")
            if kind == "phone":  # a phone screen's worth, from the batch summary down
                top = page.evaluate("() => document.querySelector('#summary').getBoundingClientRect().top + window.scrollY - 12")
                page.screenshot(path=out, full_page=True, clip={"x": 0, "y": top, **SIZES["phone"]})
            else:
                page.screenshot(path=out, full_page=True)
            context.close()
    finally:
        app.extensions["collector"].db.dispose()


def main() -> None:
    executable = chromium.CHROMIUM
    if not executable:
        sys.exit("needs Debian's chromium (apt-get install chromium)")
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        for kind in SIZES:
            shoot(kind, Path(tmp), executable)
            print(f"docs/upload-{kind}.png")


if __name__ == "__main__":
    main()
