"""Deterministic, genuinely different plate-like photos for load and race tests.

Each seed gives its own scene (sky and road gradients, buildings, a car body) with a
plate-like panel of random characters, saved as a real JPEG with EXIF (capture time, make,
model), as a phone would. Different seeds are far apart in PDQ distance; the same seed gives
the same bytes.
"""

from __future__ import annotations

import datetime as dt
import io
import random
import string

from PIL import Image, ImageDraw, ImageFilter, ImageFont

_FONTS: dict[int, ImageFont.ImageFont] = {}


def _font(size: int):
    if size not in _FONTS:
        _FONTS[size] = ImageFont.load_default(size=size)
    return _FONTS[size]


def plate_photo(seed: int, size: tuple[int, int] = (2016, 1512), quality: int = 85) -> bytes:
    rnd = random.Random(seed)
    w, h = size
    # Drawn small, then enlarged: cheap, and the blur of enlargement looks like a lens.
    sw, sh = w // 4, h // 4
    im = Image.new("RGB", (sw, sh))
    d = ImageDraw.Draw(im)
    sky = [rnd.randrange(60, 230) for _ in range(3)]
    ground = [rnd.randrange(20, 140) for _ in range(3)]
    horizon = rnd.randrange(sh // 4, sh // 2)
    for y in range(sh):
        t = y / sh
        base = sky if y < horizon else ground
        d.line([(0, y), (sw, y)], fill=tuple(int(c * (0.7 + 0.6 * t)) % 256 for c in base))
    for _ in range(rnd.randrange(4, 12)):  # buildings, poles, trees
        x0, y0 = rnd.randrange(-20, sw), rnd.randrange(0, horizon + 10)
        x1, y1 = x0 + rnd.randrange(10, sw // 3), y0 + rnd.randrange(10, sh // 2)
        shape = d.rectangle if rnd.random() < 0.6 else d.ellipse
        shape([x0, y0, x1, y1], fill=tuple(rnd.randrange(256) for _ in range(3)))
    cx, cy = rnd.randrange(sw // 4, 3 * sw // 4), rnd.randrange(sh // 2, 4 * sh // 5)
    cw, ch = rnd.randrange(sw // 4, sw // 2), rnd.randrange(sh // 6, sh // 3)
    d.rounded_rectangle([cx - cw // 2, cy - ch // 2, cx + cw // 2, cy + ch // 2], radius=ch // 4,
                        fill=tuple(rnd.randrange(256) for _ in range(3)))
    im = im.filter(ImageFilter.GaussianBlur(0.8))
    big = im.resize((w, h), Image.Resampling.BILINEAR)
    bd = ImageDraw.Draw(big)
    pw, ph = rnd.randrange(w // 8, w // 5), 0
    ph = pw // 4
    px, py = cx * 4 - pw // 2, (cy * 4 + ch) - ph // 2
    bd.rectangle([px, py, px + pw, py + ph], fill=rnd.choice([(245, 245, 240), (250, 210, 40)]), outline=(10, 10, 10), width=max(2, ph // 20))
    text = "".join(rnd.choice(string.ascii_uppercase) for _ in range(2)) + " " + "".join(rnd.choice(string.digits) for _ in range(4))
    bd.text((px + pw // 2, py + ph // 2), text, fill=(15, 15, 15), font=_font(int(ph * 0.7)), anchor="mm")
    exif = Image.Exif()
    exif[0x010F] = rnd.choice(["Google", "samsung", "Apple", "OnePlus", "Xiaomi"])
    exif[0x0110] = f"Phone {rnd.randrange(5, 15)}"
    when = dt.datetime(2026, 11, 20, 9, 0) + dt.timedelta(seconds=rnd.randrange(0, 6 * 86400))
    exif.get_ifd(0x8769)[0x9003] = when.strftime("%Y:%m:%d %H:%M:%S")
    out = io.BytesIO()
    big.save(out, "JPEG", quality=quality, exif=exif)
    return out.getvalue()
