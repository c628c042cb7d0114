"""Generated photos with plate-like text, for the plate tests that must run from a fresh clone.

The text is drawn with Pillow's own bundled font (``ImageFont.load_default(size)``), on a
plate-coloured panel with a border, on a scene of gradients and shapes with noise, so intake
accepts the photo (not blank, not blurred) and the OCR has a plate to read.
"""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageFilter, ImageFont


def scene(seed: int, size: tuple[int, int] = (1024, 768)) -> Image.Image:
    rnd = random.Random(seed)
    w, h = size
    im = Image.new("RGB", (w // 4, h // 4))
    d = ImageDraw.Draw(im)
    top = [rnd.randrange(60, 200) for _ in range(3)]
    for y in range(h // 4):
        d.line([(0, y), (w // 4, y)], fill=tuple(int(c * (0.6 + 0.8 * y / (h / 4))) % 256 for c in top))
    for _ in range(rnd.randrange(5, 10)):
        x0, y0 = rnd.randrange(-10, w // 4), rnd.randrange(-10, h // 4)
        d.ellipse([x0, y0, x0 + rnd.randrange(8, w // 10), y0 + rnd.randrange(8, h // 10)],
                  fill=tuple(rnd.randrange(40, 220) for _ in range(3)))
    im = im.filter(ImageFilter.GaussianBlur(1)).resize(size, Image.Resampling.BILINEAR)
    d = ImageDraw.Draw(im)
    for _ in range(rnd.randrange(6, 12)):  # sharp edges: walls, poles, windows
        x0, y0 = rnd.randrange(0, w), rnd.randrange(0, h // 2)
        d.rectangle([x0, y0, x0 + rnd.randrange(20, w // 4), y0 + rnd.randrange(20, h // 3)],
                    fill=tuple(rnd.randrange(30, 230) for _ in range(3)), outline=(20, 20, 20), width=3)
    noise = Image.effect_noise(size, 12).convert("RGB")
    return Image.blend(im, noise, 0.08)


def plate_photo(lines: list[str], seed: int = 0, size: tuple[int, int] = (1024, 768), plate_width: int = 300,
                at: tuple[int, int] | None = None) -> tuple[bytes, tuple[int, int, int, int]]:
    """A JPEG with one plate showing ``lines`` (one or two), and the plate's box."""
    im = scene(seed, size)
    d = ImageDraw.Draw(im)
    n = len(lines)
    font = ImageFont.load_default(size=int(plate_width / max(len(s) for s in lines) * 1.25))
    line_h = int(font.size * 1.15)
    pw, ph = plate_width, line_h * n + int(font.size * 0.5)
    x, y = at or ((size[0] - pw) // 2, int(size[1] * 0.55))
    d.rectangle([x, y, x + pw, y + ph], fill=(246, 246, 240), outline=(20, 20, 20), width=4)
    for i, text in enumerate(lines):
        d.text((x + pw // 2, y + int(font.size * 0.25) + line_h * i + line_h // 2), text, fill=(10, 10, 10),
               font=font, anchor="mm")
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90)
    return out.getvalue(), (x, y, pw, ph)


def no_plate_photo(seed: int = 0, size: tuple[int, int] = (1024, 768)) -> bytes:
    out = io.BytesIO()
    scene(seed, size).save(out, "JPEG", quality=90)
    return out.getvalue()
