"""Load test: gunicorn with 4 workers on loopback, against PostgreSQL and an S3 server, with
phone-sized photos, next to an in-process baseline on the same backend in the same run.

    python bench/load.py [--attendees 12] [--photos 10] [--workers 4]        (a few minutes)
    python bench/load.py --attendees 200 --photos 25                         (the issue's size)

Each simulated attendee uploads ``--photos`` genuinely different phone-sized photos at once
(tests/synthetic.py scenes with sensor-like noise: 4032x3024 JPEG of ~3 MB with EXIF; every
fifth a HEIC, 2016x1512, since encoding 12 MP HEIC with x265 takes the bench minutes per
photo), plus deliberate exact duplicates (retries and copies), near-duplicates (re-encodes of
someone else's photo) and hostile files from ../shared/corpus. Generated photos are cached in
bench/out/load-cache/ (git-ignored), so a second run starts at once.

Baseline: the same mix of photos submitted one after another through ``intake.submit`` in
this process, against the same PostgreSQL and S3 server, before the load. The machine has
2 cores, so 4 workers can at best do about twice the in-process rate: the figure is
throughput / (2 x in-process rate) (goal >= 0.7). Also: p50/p95 latency, errors, credit
exactness (every credit, row and object matches the answers) and peak RSS per worker
(goal <= 300 MB). The bench creates a PostgreSQL database of its own and drops it after;
``--postgres`` is only the admin connection (default: the ``postgres`` database).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
import requests  # noqa: E402
from PIL import Image  # noqa: E402
from sqlalchemy import create_engine, func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from collector import create_app  # noqa: E402
from collector.intake.imaging import _register_heif  # noqa: E402
from collector.platform.models import Photo, User  # noqa: E402
from collector.web import accounts  # noqa: E402
from tests.conftest import free_port, wait_for_port  # noqa: E402
from tests.synthetic import plate_photo  # noqa: E402

HOSTILE = ["truncated_jpeg.jpg", "png_decompression_dos.png", "decompression_bomb.gif", "test-ole-file.doc",
           "hopper_bad_exif.jpg", "truncated_image.png", "broken_data_stream.png", "zero_width.gif"]


CACHE = ROOT / "bench" / "out" / "load-cache"


def _gen(args) -> Path:
    """One distinct phone-like photo, cached on disk (a 200 x 25 run holds 16 GB of them, so
    the bench keeps paths and reads each photo's bytes when it sends it): noisy 12 MP JPEG, or HEIC."""
    seed, size, heic = args
    path = CACHE / f"{seed}-{size[0]}x{size[1]}.{'heic' if heic else 'jpg'}"
    if path.exists():
        return path
    import numpy as np

    base = plate_photo(seed, size, quality=95)
    with Image.open(io.BytesIO(base)) as im:
        exif = im.info.get("exif")
        pixels = np.asarray(im.convert("RGB"), dtype=np.int16)
    # Sensor-like noise (uniform, standard deviation ~7): a fifth of the cost of normal().
    noise = np.random.default_rng(seed).integers(-12, 13, pixels.shape, dtype=np.int16)
    noisy = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    if heic:
        from pillow_heif import register_heif_opener

        register_heif_opener()
        noisy.save(out, "HEIF", quality=60, exif=exif, enc_params={"preset": "ultrafast"})
    else:
        noisy.save(out, "JPEG", quality=92, exif=exif)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(out.getvalue())
    tmp.replace(path)
    return path


def _plan_photo(i: int, size, heic_size, heic_every: int):
    heic = heic_every > 0 and i % heic_every == heic_every - 1
    return (10_000 + i, heic_size if heic else size, heic)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(c) for c in out]


def _peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_memory_mb(master_pid: int) -> list[tuple[float, float]]:
    """Per worker: its own peak RSS, and that plus the peaks of its decoder processes (each
    worker decodes in processes of its own, so their memory is the worker's cost; the sum of
    peaks is an upper bound, as the peaks need not coincide)."""
    out = []
    for pid in _children(master_pid):
        own = _peak_mb(pid)
        out.append((own, own + sum(_peak_mb(c) for c in _children(pid))))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--attendees", type=int, default=12)
    p.add_argument("--photos", type=int, default=10)
    p.add_argument("--size", default="4032x3024")
    p.add_argument("--heic-size", default="2016x1512")
    p.add_argument("--heic-every", type=int, default=5, help="every n-th photo is a HEIC (0: none)")
    p.add_argument("--baseline", type=int, default=20, help="photos submitted in-process for the baseline")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--postgres", default="postgresql+psycopg://root@127.0.0.1:5432/postgres",
                   help="admin connection; the bench creates and drops a database of its own")
    args = p.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    heic_size = tuple(int(x) for x in args.heic_size.split("x"))
    _register_heif()  # the near-duplicate extras re-encode HEICs too

    t0 = time.perf_counter()
    n = args.attendees * args.photos
    with Pool(os.cpu_count()) as pool:
        photos = pool.map(_gen, [_plan_photo(i, size, heic_size, args.heic_every) for i in range(n + args.baseline)], chunksize=4)
    photos, base_photos = photos[:n], photos[n:]
    heics = sum(1 for d in photos if d.suffix == ".heic")
    print(f"generated {len(photos):,} photos ({len(photos) - heics} JPEG {size[0]}x{size[1]}, {heics} HEIC {heic_size[0]}x{heic_size[1]};"
          f" {sum(d.stat().st_size for d in photos) / len(photos) / 1e6:.1f} MB mean) in {time.perf_counter() - t0:.0f} s")

    pg_name = f"collector_load_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{pg_name}"'))
    s3_port, web_port = free_port(), free_port()
    procs = []
    tmp = tempfile.TemporaryDirectory()
    try:
        # moto keeps objects under its key buffer size in memory: 1 MB makes it spill photos to disk.
        moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=dict(os.environ, MOTO_S3_DEFAULT_KEY_BUFFER_SIZE=str(1 << 20)))
        procs.append(moto)
        wait_for_port(s3_port, moto)
        endpoint = f"http://127.0.0.1:{s3_port}"
        env = dict(os.environ, AWS_ACCESS_KEY_ID="load", AWS_SECRET_ACCESS_KEY="load", AWS_DEFAULT_REGION="us-east-1")
        os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="load")
        db_url = make_url(args.postgres).set(database=pg_name).render_as_string(hide_password=False)
        settings = {"DATABASE_URL": db_url, "STORAGE_URL": "s3://load/plates", "S3_ENDPOINT_URL": endpoint,
                    "DATA_DIR": tmp.name, "SECRET_KEY": "load", "MAX_PHOTOS": 1000}
        app = create_app(settings)
        app.extensions["collector"].db.migrate()  # a new database: create_app never migrates
        svc = app.extensions["collector"]
        env.update({f"COLLECTOR_{k}": str(v) for k, v in settings.items()})
        gunicorn = subprocess.Popen(
            [str(Path(sys.executable).parent / "gunicorn"), "--workers", str(args.workers), "--worker-class", "gthread",
             "--threads", str(args.threads), "--bind", f"127.0.0.1:{web_port}", "--timeout", "300", "--backlog", "2048",
             "app:create_app()"],
            cwd=ROOT, env=env, stdout=open(CACHE.parent / "load-gunicorn.log", "wb"), stderr=subprocess.STDOUT)
        procs.append(gunicorn)
        wait_for_port(web_port, gunicorn, 60)
        base = f"http://127.0.0.1:{web_port}"

        people = []
        for i in range(args.attendees + 1):
            user = accounts.create_user(svc.db, f"a{i}@example.com", f"A{i}", "load test password", "CC BY 4.0")
            people.append((user.id, accounts.create_token(svc.db, user.id).token))
        baseline_person, people = people[-1], people[:-1]


        def upload(token, data, name, http=None):
            if isinstance(data, Path):
                data = data.read_bytes()
            start = time.perf_counter()
            try:
                r = (http or requests).post(f"{base}/api/v1/photos", files={"photo": (name, data)},
                                            headers={"Authorization": f"Bearer {token}"}, timeout=600)
                body = r.json() if r.headers.get("Content-Type", "").startswith("application/json") else None
                return r.status_code, body, time.perf_counter() - start
            except Exception as exc:  # noqa: BLE001 - a failed request is a figure here
                return -1, {"error": str(exc)}, time.perf_counter() - start

        # Baseline: the same mix through intake in this process, one after another, same backend.
        baseline_cpu, t0 = time.process_time(), time.perf_counter()
        base_verdicts = [svc.intake.submit(baseline_person[0], io.BytesIO(d.read_bytes()), f"b{i}.jpg") for i, d in enumerate(base_photos)]
        base_wall, baseline_cpu = time.perf_counter() - t0, time.process_time() - baseline_cpu
        base_rate = len(base_photos) / base_wall
        base_lat = [base_wall / len(base_photos)]
        assert all(v.accepted for v in base_verdicts), [v.code for v in base_verdicts if not v.accepted]

        rnd = random.Random(5)
        plans = [[(token, photos[i * args.photos + j], f"{i}-{j}.jpg") for j in range(args.photos)] for i, (_, token) in enumerate(people)]
        extras = {"retry": 0, "copy": 0, "near": 0, "hostile": 0}
        corpus = ROOT.parent / "shared" / "corpus" / "pillow-bad"
        for k in range(args.attendees // 2):
            i = rnd.randrange(len(plans))
            plan = plans[i]
            kind = ("retry", "copy", "near", "hostile")[k % 4]
            if kind == "retry":
                plan.append(plan[rnd.randrange(args.photos)])
            elif kind == "copy":
                other = plans[(i + 1) % len(plans)][0]
                plan.append((plan[0][0], other[1], "copy.jpg"))
            elif kind == "near":
                other = plans[(i + 2) % len(plans)][1]
                buf = io.BytesIO()
                Image.open(other[1]).save(buf, "JPEG", quality=70)
                plan.append((plan[0][0], buf.getvalue(), "near.jpg"))
            elif corpus.is_dir():
                name = HOSTILE[(k // 4) % len(HOSTILE)]
                plan.append((plan[0][0], (corpus / name).read_bytes(), name))
            else:
                continue
            extras[kind] += 1

        results = []
        lock = threading.Lock()
        barrier = threading.Barrier(len(plans))

        def attendee(plan):
            http = requests.Session()
            barrier.wait()
            for token, data, name in plan:
                res = upload(token, data, name, http)
                with lock:
                    results.append((token, name, res))

        start = time.perf_counter()
        with ThreadPoolExecutor(len(plans)) as pool:
            list(pool.map(attendee, plans))
        elapsed = time.perf_counter() - start
        mem = peak_memory_mb(gunicorn.pid)

        lat = sorted(r[2][2] for r in results)
        errors = [r for r in results if r[2][0] in (-1,) or r[2][0] >= 500 or r[2][1] is None]
        by_status: dict[str, int] = {}
        for _, _, (code, body, _) in results:
            key = (body or {}).get("code") or (body or {}).get("status") or str(code)
            by_status[key] = by_status.get(key, 0) + 1
        b50 = statistics.median(base_lat)
        p50, p95 = statistics.median(lat), lat[int(len(lat) * 0.95)]
        print(f"baseline   in-process, {len(base_photos)} photos one after another: {base_rate:.2f} photos/s "
              f"({b50 * 1000:.0f} ms wall, {baseline_cpu / len(base_photos) * 1000:.0f} ms CPU each); 2 cores: {2 * base_rate:.2f} photos/s")
        sent = sum(d.stat().st_size if isinstance(d, Path) else len(d) for plan in plans for _, d, _ in plan)
        accepted_n = sum(1 for r in results if r[2][1] and r[2][1].get("status") == "accepted")
        print(f"load       {len(results):,} uploads by {len(plans)} attendees in {elapsed:.1f} s: "
              f"{len(results) / elapsed:.2f} uploads/s, {accepted_n / elapsed:.2f} accepted photos/s, {sent / elapsed / 1e6:.1f} MB/s")
        print(f"throughput {accepted_n / elapsed / (2 * base_rate):.2f} of 2x the in-process rate (accepted photos/s; goal >= 0.7)")
        print(f"latency    p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms with {len(plans)} clients queueing")
        print(f"errors     {len(errors)} (5xx, non-JSON or failed connections)")
        # Every genuine photo (named i-j.jpg; a retry of one is "already uploaded") must be in.
        wrong = [(name, body) for _, name, (_, body, _) in results if re.fullmatch(r"\d+-\d+\.jpg", name)
                 and (body or {}).get("status") not in ("accepted", "already_uploaded")]
        print(f"wrong      {len(wrong)} genuine photos refused" + "".join(
            f"\n             {n}: {(b or {}).get('code')}: {(b or {}).get('message', b)}" for n, b in wrong[:20]))
        print(f"verdicts   {dict(sorted(by_status.items()))}; extras sent {extras}")
        print(f"memory     peak RSS per worker: {', '.join(f'{own:.0f} MB' for own, _ in mem)}; with its decoder processes"
              f" {', '.join(f'{both:.0f} MB' for _, both in mem)} (goal <= 300 MB)")

        # The truth: credits and stored objects must match the answers.
        accepted = [(t, b) for t, _, (c, b, _) in results if b and b.get("status") == "accepted"]
        token_user = {tok: uid for uid, tok in people}
        with svc.db.Session() as s:
            rows = s.execute(select(Photo.user_id, Photo.sha256, Photo.storage_key, Photo.thumb_key)).all()
            counts = dict(s.execute(select(User.id, User.accepted_count)).all())
            total = s.scalar(select(func.count()).select_from(Photo))
        expected: dict[int, int] = {}
        for tok, _ in accepted:
            expected[token_user[tok]] = expected.get(token_user[tok], 0) + 1
        rows_by_user: dict[int, int] = {}
        for r in rows:
            rows_by_user[r.user_id] = rows_by_user.get(r.user_id, 0) + 1
        keys = {o.key for o in svc.storage.list()}
        ok_credits = all(counts.get(uid, 0) == expected.get(uid, 0) == rows_by_user.get(uid, 0) for uid, _ in people)
        ok_rows = {r.sha256 for r in rows if r.user_id != baseline_person[0]} == {b["photo"]["sha256"] for _, b in accepted}
        ok_objects = all(r.storage_key in keys and r.thumb_key in keys for r in rows)
        print(f"check      {total} photo rows; credits match answers: {ok_credits}; rows match accepted answers: {ok_rows}; "
              f"every row's objects stored: {ok_objects}; objects without a row: {len(keys) - 2 * total}")
        svc.db.dispose()
        if errors or wrong or not (ok_credits and ok_rows and ok_objects):
            sys.exit(1)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(30)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)'))
        admin.dispose()
        tmp.cleanup()


if __name__ == "__main__":
    main()
