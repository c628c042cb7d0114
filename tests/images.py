"""Photo transformations for the tests: each takes a file or its bytes (a generated photo from
tests/photos.py, or a corpus file) and returns new encoded bytes."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageEnhance


def load(path: Path | bytes) -> Image.Image:
    if isinstance(path, (bytes, bytearray)):
        return load_bytes(path)
    im = Image.open(path)
    im.load()
    return im.convert("RGB")


def load_bytes(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im.convert("RGB")


def encode(im: Image.Image, fmt: str = "JPEG", exif: Image.Exif | None = None, **kw) -> bytes:
    out = io.BytesIO()
    if exif is not None:
        kw["exif"] = exif
    im.save(out, fmt, **kw)
    return out.getvalue()


def reencode(path: Path | bytes, quality: int = 70) -> bytes:
    return encode(load(path), quality=quality)


def resized(path: Path | bytes, factor: float) -> bytes:
    im = load(path)
    return encode(im.resize((round(im.width * factor), round(im.height * factor)), Image.Resampling.LANCZOS), quality=88)


def recoloured(path: Path | bytes) -> bytes:
    im = ImageEnhance.Brightness(load(path)).enhance(1.25)
    im = ImageEnhance.Contrast(im).enhance(0.85)
    return encode(ImageEnhance.Color(im).enhance(0.6), quality=90)


def greyscale(path: Path | bytes) -> bytes:
    return encode(load(path).convert("L").convert("RGB"), quality=90)


def as_png(path: Path | bytes) -> bytes:
    return encode(load(path), "PNG")


def as_webp(path: Path | bytes) -> bytes:
    return encode(load(path), "WEBP", quality=80)


def exif_rotated(path: Path | bytes, orientation: int = 6) -> bytes:
    """Pixels turned, and the tag that turns them back: it displays exactly as the original."""
    inverse = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(load(path).transpose(inverse), exif=exif, quality=92)


def tag_changed(path: Path | bytes, orientation: int = 6) -> bytes:
    """Same pixels, only the orientation tag changed: the picture displays turned."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(load(path), exif=exif, quality=92)


def cropped(path: Path | bytes, fraction: float) -> bytes:
    im = load(path)
    dx, dy = round(im.width * fraction), round(im.height * fraction)
    return encode(im.crop((dx, dy, im.width - dx, im.height - dy)), quality=90)


def solid(width: int, height: int, colour=(128, 128, 128), fmt: str = "JPEG") -> bytes:
    return encode(Image.new("RGB", (width, height), colour), fmt)
