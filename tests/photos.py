"""Photos the tests make themselves, so the suite runs from a clone alone.

``scene(seed, size)`` draws a street scene: a textured, noisy background (sky, road, walls,
windows), a car body with wheels and a plate with random characters, each seed its own layout
and colours, so different seeds are far apart in PDQ distance (a test keeps it so) while a
re-encode, resize, recolour, rotation or light crop of one stays close. ``jpeg``/``png``/
``webp``/``heic``/``mpo`` encode it with whatever EXIF a test needs (capture time, make,
model, orientation, GPS), written by Pillow itself, no third-party EXIF writer.

``CAMERAS`` names a few photos with the properties the tests rely on (the roles the real
corpus photos used to play, e.g. a Canon photo of 900x600 or an iPhone photo with GPS in the
southern hemisphere); ``named(name)`` gives its bytes. Everything is deterministic and cached:
the same seed gives the same bytes within and across runs.

Hostile files (truncated, damaged, bombs, other formats, damaged EXIF) are in ``hostile.py``.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import random
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

_FONTS: dict[int, ImageFont.ImageFont] = {}


def _font(size: int):
    if size not in _FONTS:
        _FONTS[size] = ImageFont.load_default(size=size)
    return _FONTS[size]


def _colour(rnd: random.Random, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(rnd.randrange(lo, hi) for _ in range(3))


@functools.lru_cache(maxsize=64)
def _scene_array(seed: int, size: tuple[int, int]) -> np.ndarray:
    rnd = random.Random(seed)
    noise = np.random.default_rng(seed)
    w, h = size
    # Drawn at a working size of about 1000 px on the long side, then resized: the look of a
    # lens, and cheap at any output size.
    k = 1000 / max(w, h)
    sw, sh = max(64, round(w * k)), max(48, round(h * k))
    im = Image.new("RGB", (sw, sh))
    d = ImageDraw.Draw(im)
    horizon = rnd.randrange(sh // 4, sh // 2)
    sky, road = _colour(rnd, 70, 235), _colour(rnd, 30, 150)
    for y in range(sh):
        base, t = (sky, y / horizon) if y < horizon else (road, (y - horizon) / (sh - horizon))
        d.line([(0, y), (sw, y)], fill=tuple(max(0, min(255, int(c * (0.75 + 0.5 * t)))) for c in base))
    for _ in range(rnd.randrange(5, 11)):  # buildings with windows, poles, trees
        x0, y0 = rnd.randrange(-sw // 10, sw), rnd.randrange(0, horizon + sh // 10)
        x1, y1 = x0 + rnd.randrange(sw // 12, sw // 3), y0 + rnd.randrange(sh // 10, sh // 2)
        if rnd.random() < 0.65:
            d.rectangle([x0, y0, x1, y1], fill=_colour(rnd))
            win = _colour(rnd)
            step = rnd.randrange(12, 30)
            for wx in range(x0 + 4, x1 - 8, step):
                for wy in range(y0 + 4, y1 - 8, step):
                    d.rectangle([wx, wy, wx + step // 2, wy + step // 2], fill=win)
        else:
            d.ellipse([x0, y0, x1, y1], fill=_colour(rnd))
    # the car, low in the frame, and its plate
    cx, cy = rnd.randrange(sw // 4, 3 * sw // 4), rnd.randrange(sh // 2 + sh // 10, 4 * sh // 5)
    cw, ch = rnd.randrange(sw // 3, sw // 2), rnd.randrange(sh // 5, sh // 3)
    body = _colour(rnd)
    d.rounded_rectangle([cx - cw // 2, cy - ch // 2, cx + cw // 2, cy + ch // 2], radius=ch // 4, fill=body)
    d.rounded_rectangle([cx - cw // 3, cy - ch, cx + cw // 3, cy - ch // 2 + 4], radius=ch // 5,
                        fill=tuple(c // 2 for c in body))
    for wx in (cx - cw // 3, cx + cw // 3):
        r = ch // 4
        d.ellipse([wx - r, cy + ch // 2 - r, wx + r, cy + ch // 2 + r], fill=(20, 20, 22))
    pw = rnd.randrange(cw // 3, cw // 2)
    ph = max(12, pw // 4)
    px, py = cx - pw // 2, cy + ch // 8
    d.rectangle([px, py, px + pw, py + ph], fill=rnd.choice([(245, 245, 240), (250, 210, 40)]),
                outline=(10, 10, 10), width=max(2, ph // 12))
    text = "".join(rnd.choice(string.ascii_uppercase) for _ in range(2)) + " " + "".join(
        rnd.choice(string.digits) for _ in range(4))
    d.text((px + pw // 2, py + ph // 2), text, fill=(15, 15, 15), font=_font(max(8, int(ph * 0.7))), anchor="mm")
    im = im.filter(ImageFilter.GaussianBlur(0.6)).resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.int16)
    # sensor grain and a coarse texture (asphalt, plaster): what makes a photo a photo to the
    # quality checks and to PNG's compressor
    coarse = noise.normal(0, 10, (h // 8 + 1, w // 8 + 1, 1)).repeat(8, 0).repeat(8, 1)[:h, :w]
    grain = noise.normal(0, 5, (h, w, 3))
    return np.clip(arr + coarse + grain, 0, 255).astype(np.uint8)


def scene(seed: int, size: tuple[int, int] = (900, 600)) -> Image.Image:
    """A new RGB image of a street scene with a car and its plate; the same seed, the same pixels."""
    return Image.fromarray(_scene_array(seed, tuple(size)), "RGB")


def make_exif(make: str | None = None, model: str | None = None, taken: dt.datetime | None = None,
              orientation: int | None = None, gps: tuple[float, float] | None = None) -> Image.Exif:
    """An EXIF block as a camera writes it: IFD0 (make, model, orientation), the Exif IFD
    (DateTimeOriginal) and the GPS IFD (degrees, minutes, seconds as rationals, N/S and E/W)."""
    from PIL.TiffImagePlugin import IFDRational

    exif = Image.Exif()
    if make is not None:
        exif[0x010F] = make
    if model is not None:
        exif[0x0110] = model
    if orientation is not None:
        exif[0x0112] = orientation
    if taken is not None:
        exif.get_ifd(0x8769)[0x9003] = taken.strftime("%Y:%m:%d %H:%M:%S")
    if gps is not None:
        def dms(value: float):
            value = abs(value)
            deg, rest = int(value), (abs(value) - int(value)) * 60
            minutes = int(rest)
            return (IFDRational(deg, 1), IFDRational(minutes, 1), IFDRational(round((rest - minutes) * 60 * 10000), 10000))

        lat, lon = gps
        ifd = exif.get_ifd(0x8825)
        ifd[0] = b"\x02\x02\x00\x00"
        ifd[1], ifd[2] = ("S" if lat < 0 else "N"), dms(lat)
        ifd[3], ifd[4] = ("W" if lon < 0 else "E"), dms(lon)
    return exif


def encode(im: Image.Image, fmt: str = "JPEG", exif: Image.Exif | None = None, **kw) -> bytes:
    out = io.BytesIO()
    if exif is not None and len(exif):
        kw["exif"] = exif
    if fmt in ("HEIF", "HEIC"):
        import pillow_heif

        pillow_heif.register_heif_opener(thumbnails=False)
        fmt = "HEIF"
    im.save(out, fmt, **kw)
    return out.getvalue()


@functools.lru_cache(maxsize=128)
def jpeg(seed: int, size: tuple[int, int] = (900, 600), quality: int = 90, **exif) -> bytes:
    """A JPEG of ``scene(seed, size)``; keyword arguments as for ``make_exif``."""
    return encode(scene(seed, size), "JPEG", make_exif(**exif), quality=quality)


@functools.lru_cache(maxsize=32)
def png(seed: int, size: tuple[int, int] = (900, 600), **exif) -> bytes:
    return encode(scene(seed, size), "PNG", make_exif(**exif))


@functools.lru_cache(maxsize=32)
def webp(seed: int, size: tuple[int, int] = (900, 600), **exif) -> bytes:
    return encode(scene(seed, size), "WEBP", make_exif(**exif), quality=85)


@functools.lru_cache(maxsize=16)
def heic(seed: int, size: tuple[int, int] = (900, 600), **exif) -> bytes:
    """HEIC through pillow-heif (libheif and its x265 encoder ship in the wheel)."""
    return encode(scene(seed, size), "HEIF", make_exif(**exif), quality=80)


@functools.lru_cache(maxsize=8)
def mpo(seed: int, size: tuple[int, int] = (900, 600)) -> bytes:
    """A two-frame MPO (a stereo camera's JPEG), as Pillow writes it."""
    left, right = scene(seed, size), scene(seed, size).transform(size, Image.Transform.AFFINE, (1, 0, 6, 0, 1, 0))
    return encode(left, "MPO", save_all=True, append_images=[right], quality=90)


@dataclass(frozen=True)
class Camera:
    """A generated photo with the properties a test relies on."""

    seed: int
    size: tuple[int, int] = (900, 600)
    fmt: str = "JPEG"
    exif: dict = field(default_factory=dict)

    def bytes(self) -> bytes:
        kw = tuple(sorted(self.exif.items()))
        return {"JPEG": jpeg, "PNG": png, "WEBP": webp, "HEIF": heic}[self.fmt](self.seed, self.size, **dict(kw))

    @property
    def ext(self) -> str:
        return {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "HEIF": "heic"}[self.fmt]


CAMERAS: dict[str, Camera] = {
    # 900x600, Canon: the everyday accepted photo (540,000 pixels)
    "canon": Camera(1, (900, 600), exif=dict(make="Canon", model="Canon EOS 5D", taken=dt.datetime(2019, 6, 2, 14, 3, 11),
                                             orientation=1)),
    # an iPhone photo with GPS in the southern and western hemispheres, taken in 2016
    "iphone": Camera(2, (1296, 968), exif=dict(make="Apple", model="iPhone 5", taken=dt.datetime(2016, 3, 12, 10, 41, 7),
                                               orientation=1, gps=(-12.93648, -38.39415))),
    # a large 4:3 photo, 2048x1536
    "large": Camera(3, (2048, 1536), exif=dict(make="LG Electronics", model="KM555", taken=dt.datetime(2012, 8, 30, 17, 0, 2))),
    # no EXIF at all, as many re-saved files come
    "plain": Camera(4, (1000, 750)),
    # GPS in the northern hemisphere, taken in 2015
    "motorola": Camera(5, (1024, 768), exif=dict(make="Motorola", model="XT907", taken=dt.datetime(2015, 4, 18, 12, 30, 45),
                                                 orientation=1, gps=(38.56793, -90.47677))),
    # portrait
    "portrait": Camera(6, (612, 1088), exif=dict(make="Motorola", model="XT907", taken=dt.datetime(2015, 5, 1, 9, 15))),
    # an iPhone photo with no Orientation tag
    "no-orientation": Camera(7, (960, 720), exif=dict(make="Apple", model="iPhone 4S", taken=dt.datetime(2013, 1, 5, 8, 0))),
    # a PNG of about 1.4 MB (over a 1 MB upload limit)
    "png": Camera(8, (1024, 720), "PNG"),
    # a thumbnail-sized photo: 326x249, under the 480 px minimum
    "small": Camera(9, (326, 249), exif=dict(make="Hewlett-Packard", model="HP PhotoSmart R607")),
    # a HEIC from an iPhone, with GPS, taken in 2021
    "heic": Camera(10, (720, 540), "HEIF", exif=dict(make="Apple", model="iPhone 11 Pro Max",
                                                      taken=dt.datetime(2021, 7, 4, 19, 22, 3), gps=(39.05134, -94.28877))),
    "webp": Camera(11, (900, 600), "WEBP", exif=dict(make="Google", model="Pixel 7", taken=dt.datetime(2025, 9, 1, 11, 0))),
    "eu": Camera(12, (1000, 750), exif=dict(make="FUJIFILM", model="FinePix HS20EXR", taken=dt.datetime(2014, 2, 2, 15, 0))),
    "us": Camera(13, (1280, 960), exif=dict(make="Panasonic", model="DMC-TZ5", taken=dt.datetime(2010, 10, 10, 10, 10))),
    "br": Camera(14, (800, 600)),
}


def named(name: str) -> bytes:
    """The bytes of ``CAMERAS[name]``."""
    return CAMERAS[name].bytes()


def filename(name: str) -> str:
    return f"{name}.{CAMERAS[name].ext}"


def write(folder: Path, name: str) -> Path:
    """``CAMERAS[name]`` written to ``folder/<name>.<ext>``, for tests that need a file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename(name)
    path.write_bytes(named(name))
    return path


def distinct(n: int, size: tuple[int, int] = (900, 600), first_seed: int = 100) -> list[bytes]:
    """``n`` different photos (JPEG, with a capture time), none a near-duplicate of another."""
    return [jpeg(first_seed + i, size, make="Google", model="Pixel 7",
                 taken=dt.datetime(2026, 11, 20, 9, 0) + dt.timedelta(minutes=7 * i)) for i in range(n)]
