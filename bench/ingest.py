"""Per-photo CPU time of the intake pipeline, next to baselines measured in the same run.

    python bench/ingest.py [PHOTO_OR_FOLDER ...]     (default: ../shared/corpus/plates)

It runs twice: on the photos as they are (the corpus ones are small, 0.8 MP on average), and on
12-megapixel copies of them (4032x3024 JPEG, quality 92, as a phone writes them), made in a
temporary folder, since a phone photo is what attendees send.

Rows (CPU seconds of this process, or of the child for djpeg, per photo, best of --repeat):
  pipeline   what intake does to the bytes: sniff, one reduced decode, EXIF, PDQ (8 variants),
             quality figures, thumbnail
  naive      full decode + Image.verify() on a second open + imagehash.phash + exifread on the file
  djpeg/8    Debian's `djpeg -scale 1/8` decoding the same JPEGs (the floor for a JPEG decode)
  submit     the whole intake.submit on a temporary SQLite + folder store (wall time: includes
             the fsyncs and the database commit)
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from collector import imaging, metadata  # noqa: E402

DEFAULT = ROOT.parent / "shared" / "corpus" / "plates"


def photos(args: list[str]) -> list[Path]:
    found: list[Path] = []
    for raw in args or [str(DEFAULT)]:
        p = Path(raw)
        items = sorted(p.rglob("*")) if p.is_dir() else [p]
        found += [f for f in items if f.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".heic")]
    return found


def pipeline(path: Path) -> None:
    head = path.open("rb").read(64)
    fmt, _ = imaging.sniff(head)
    d = imaging.decode(path, fmt, 120_000_000)
    meta = metadata.read_metadata(d.exif)
    small = d.small if d.orientation_applied else imaging.orient(d.small, meta.orientation)
    imaging.fingerprint(small)
    imaging.thumbnail_jpeg(small)


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


def cpu_per_photo(fn, files: list[Path], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for f in files:
            fn(f)
        best = min(best, time.process_time() - start)
    return best / len(files)


def djpeg_per_photo(files: list[Path], repeat: int) -> float | None:
    exe = shutil.which("djpeg")
    if not exe:
        return None
    best = float("inf")
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        for f in files:
            subprocess.run([exe, "-scale", "1/8", "-outfile", os.devnull, str(f)], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best = min(best, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return best / len(files)


def submit_per_photo(files: list[Path]) -> tuple[float, int]:
    from collector import accounts, create_app

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app({"DATA_DIR": tmp, "SECRET_KEY": "bench", "MIN_SIDE": 1})
        svc = app.extensions["collector"]
        user = accounts.create_user(svc.db, "bench@example.com", "Bench", "bench password 1", "CC BY 4.0")
        svc.settings["MAX_PHOTOS"] = 10**6
        start = time.perf_counter()
        accepted = 0
        for f in files:
            accepted += svc.intake.submit(user.id, io.BytesIO(f.read_bytes()), f.name).accepted
        elapsed = time.perf_counter() - start
        svc.db.dispose()
    return elapsed / len(files), accepted


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


def report(title: str, files: list[Path], repeat: int) -> None:
    jpegs = [f for f in files if f.open("rb").read(3) == b"\xff\xd8\xff"]
    megapixels = sum(Image.open(f).size[0] * Image.open(f).size[1] for f in files) / len(files) / 1e6
    print(f"== {title}: {len(files)} photos ({len(jpegs)} JPEG), mean {megapixels:.2f} MP, best of {repeat}")
    ours = cpu_per_photo(pipeline, files, repeat)
    base = cpu_per_photo(naive, files, repeat)
    print(f"{'pipeline':<10} {ours * 1000:8.2f} ms CPU/photo")
    print(f"{'naive':<10} {base * 1000:8.2f} ms CPU/photo   pipeline is {base / ours:.2f}x faster")
    ours_jpeg = cpu_per_photo(pipeline, jpegs, repeat)
    dj = djpeg_per_photo(jpegs, repeat)
    if dj is None:
        print("djpeg/8    (djpeg not installed: apt-get install libjpeg-turbo-progs)")
    else:
        print(f"{'djpeg/8':<10} {dj * 1000:8.2f} ms CPU/JPEG    pipeline on the JPEGs: {ours_jpeg * 1000:.2f} ms, {ours_jpeg / dj:.2f}x djpeg")
    wall, accepted = submit_per_photo(files)
    print(f"{'submit':<10} {wall * 1000:8.2f} ms wall/photo (SQLite + folder, {accepted}/{len(files)} accepted)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--phone-copies", type=int, default=12, help="how many 12 MP copies to make (0: none)")
    args = parser.parse_args()
    files = photos(args.paths)
    if not files:
        sys.exit(f"no photos found in {args.paths or [str(DEFAULT)]}")
    report("photos as given", files, args.repeat)
    if args.phone_copies:
        with tempfile.TemporaryDirectory() as tmp:
            report("12 MP phone-size copies", phone_copies(files, Path(tmp), args.phone_copies), args.repeat)


if __name__ == "__main__":
    main()
