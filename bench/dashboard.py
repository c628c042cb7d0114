"""Organiser pages at meetup scale: 10,000 contributors and 250,000 photo rows (no image bytes).

    python bench/dashboard.py [--contributors 10000] [--photos 250000] [--repeat 5]

Seeds a temporary SQLite database, logs in as an organiser through the test client and reports
the median time to render /dashboard, a filtered and sorted contributors page, the CSV download,
the review grid and the door look-up, next to a baseline measured in the same run: the landing
page, which touches no table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collector import create_app  # noqa: E402
from collector.web import accounts  # noqa: E402


def seed(db, contributors: int, photos: int) -> None:
    rnd = random.Random(3)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    raw = db.engine.raw_connection()
    cur = raw.cursor()
    cur.execute("BEGIN")
    users = []
    for i in range(contributors):
        users.append((f"user{i}@example.com", f"Person {i}", "x", 0, "CC BY 4.0", now, now - dt.timedelta(days=1), 0, None))
    cur.executemany("INSERT INTO users (email, name, password_hash, is_organiser, licence, consented_at, created_at, "
                    "accepted_count, last_upload_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", users)
    first = cur.execute("SELECT min(id) FROM users").fetchone()[0]
    counts = [0] * contributors
    last = [None] * contributors
    hours: dict[dt.datetime, int] = {}
    rows = []
    for n in range(photos):
        u = min(int(rnd.expovariate(1 / (contributors / 2))), contributors - 1) if n % 3 else rnd.randrange(contributors)
        when = now - dt.timedelta(seconds=rnd.randrange(0, 3 * 86400))
        status = "rejected" if n % 97 == 0 else "accepted"
        counts[u] += status == "accepted"
        last[u] = max(last[u] or when, when)
        if status == "accepted":
            hour = when.replace(minute=0, second=0, microsecond=0)
            hours[hour] = hours.get(hour, 0) + 1
        h = f"{rnd.getrandbits(256):064x}"
        captured = when - dt.timedelta(minutes=5) if n % 4 else None
        rows.append((first + u, f"{n:064x}", "k", "t", "JPEG", 1, 1000, 800, 1, captured, h, 100, rnd.uniform(5, 900),
                     rnd.uniform(20, 200), rnd.uniform(8, 80), f"{n}.jpg", status, "not_a_plate" if status == "rejected" else None, when,
                     n % 50 == 0))
        if len(rows) == 20000:
            _photos(cur, rows)
    _photos(cur, rows)
    cur.executemany("INSERT INTO accepted_hours (hour, accepted) VALUES (?, ?)", sorted(hours.items()))
    cur.executemany("UPDATE users SET accepted_count = ?, last_upload_at = ? WHERE id = ?",
                    [(c, last[i], first + i) for i, c in enumerate(counts)])
    codes = ["too_small", "not_an_image", "near_duplicate", "duplicate", "corrupt", "low_quality"]
    cur.executemany("INSERT INTO upload_rejections (user_id, code, message, filename, created_at) VALUES (?, ?, 'm', 'f.jpg', ?)",
                    [(first + rnd.randrange(contributors), rnd.choice(codes), now) for _ in range(photos // 5)])
    cur.execute("COMMIT")
    cur.execute("ANALYZE")
    raw.close()


def _photos(cur, rows) -> None:
    cur.executemany(
        "INSERT INTO photos (user_id, sha256, storage_key, thumb_key, format, size_bytes, width, height, orientation, captured_at, "
        "pdq, pdq_quality, sharpness, brightness, contrast, original_filename, status, review_reason, created_at, burst) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    rows.clear()


def timed(client, url: str, repeat: int) -> tuple[float, int]:
    samples, size = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        r = client.get(url)
        body = r.get_data()
        samples.append(time.perf_counter() - start)
        assert r.status_code == 200, (url, r.status_code)
        size = len(body)
    return statistics.median(samples), size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contributors", type=int, default=10_000)
    p.add_argument("--photos", type=int, default=250_000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"DATA_DIR": tmp, "SECRET_KEY": "bench"})
        app.extensions["collector"].db.migrate()  # a new database: create_app never migrates
        svc = app.extensions["collector"]
        t0 = time.perf_counter()
        seed(svc.db, args.contributors, args.photos)
        accounts.create_user(svc.db, "org@example.com", "Org", "organiser password", "CC BY 4.0", organiser=True)
        print(f"seeded {args.contributors:,} contributors and {args.photos:,} photos in {time.perf_counter() - t0:.0f} s (SQLite)")
        client = app.test_client()
        page = client.get("/login").get_data(as_text=True)
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
        client.post("/login", data={"csrf_token": token, "email": "org@example.com", "password": "organiser password"})
        base, _ = timed(client, "/", args.repeat)
        print(f"{'baseline: landing page':<44} {base * 1000:7.1f} ms")
        for label, url in [
            ("/dashboard", "/dashboard"),
            ("contributors: search + in progress, by last upload", "/dashboard?q=person 12&state=in_progress&sort=last_upload"),
            ("contributors: page 40, by accepted", "/dashboard?page=40"),
            ("contributors CSV (all 10,000)", "/dashboard/contributors.csv"),
            ("review grid: borderline quality", "/dashboard/review?filter=borderline_quality"),
            ("review grid: taken in a burst", "/dashboard/review?filter=burst"),
            ("door look-up by name", "/checkin?q=person 4321"),
        ]:
            t, size = timed(client, url, args.repeat)
            print(f"{label:<44} {t * 1000:7.1f} ms  ({t / base:5.1f}x baseline, {size / 1024:.0f} KB)")
        svc.db.dispose()


if __name__ == "__main__":
    main()
