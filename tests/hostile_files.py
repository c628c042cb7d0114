"""Hostile files, made byte by byte or with Pillow / pillow-heif, for tests and bench/hostile.py.

Each function returns the bytes of one file of at most a few MB that a 25 MB upload limit lets
through; none needs ../shared. The bombs are small on disk and huge once decoded.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def photo(width: int = 1024, height: int = 768, seed: int = 0) -> Image.Image:
    """A photo-like RGB picture: smooth gradients plus noise, so every codec has work to do."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)), ((x + y) * 127 // max(1, width + height))], -1)
    noise = rng.integers(-24, 24, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    out = io.BytesIO()
    im.save(out, fmt, **kw)
    return out.getvalue()


# -- PNG --------------------------------------------------------------------------------------


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _zeros_deflate(total: int) -> bytes:
    """A zlib stream of ``total`` zero bytes, built from one repeated fully-flushed block."""
    block = 1 << 20
    c = zlib.compressobj(9)
    piece = c.compress(b"\x00" * block) + c.flush(zlib.Z_FULL_FLUSH)
    n, rest = divmod(total, block)
    body = piece[2:]  # without the zlib header, which only the first piece carries
    tail = zlib.compressobj(9)
    last = tail.compress(b"\x00" * rest) + tail.flush(zlib.Z_FINISH)
    # Raw deflate of the remainder, then the Adler-32 of all-zero data: a = 1, b = total mod 65521.
    last_raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    last_body = last_raw.compress(b"\x00" * rest) + last_raw.flush(zlib.Z_FINISH)
    del last
    adler = ((total % 65521) << 16) | 1
    return piece[:2] + body * n + last_body + struct.pack(">I", adler)


def png_bomb(width: int, height: int, bit_depth: int = 8, colour: int = 2) -> bytes:
    """A valid, all-black PNG of width x height whose IDAT is a few hundred KB of deflate."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row = 1 + width * channels * bit_depth // 8
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", _zeros_deflate(row * height)) + _chunk(b"IEND", b"")


# -- WebP -------------------------------------------------------------------------------------


class _Bits:
    def __init__(self):
        self.value = 0
        self.n = 0

    def put(self, value: int, bits: int) -> None:
        self.value |= (value & ((1 << bits) - 1)) << self.n
        self.n += bits

    def bytes(self) -> bytes:
        return self.value.to_bytes((self.n + 7) // 8, "little")


def webp_lossless_bomb(width: int = 16383, height: int = 7320) -> bytes:
    """A lossless WebP of one colour: every prefix code has one symbol, so pixels cost 0 bits."""
    b = _Bits()
    b.put(0x2F, 8)  # VP8L signature
    b.put(width - 1, 14)
    b.put(height - 1, 14)
    b.put(0, 1)  # no alpha
    b.put(0, 3)  # version 0
    b.put(0, 1)  # no transform
    b.put(0, 1)  # no colour cache
    b.put(0, 1)  # no meta prefix codes
    for symbol in (0x80, 0x40, 0x20, 0xFF, 0):  # green, red, blue, alpha, distance
        b.put(1, 1)  # simple code
        b.put(0, 1)  # one symbol
        b.put(1, 1)  # of 8 bits
        b.put(symbol, 8)
    vp8l = b.bytes()
    if len(vp8l) & 1:
        vp8l += b"\x00"
    chunk = b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


# -- JPEG -------------------------------------------------------------------------------------


def jpeg_with_dims(width: int, height: int, progressive: bool = False) -> bytes:
    """A small JPEG whose frame header is patched to declare width x height."""
    data = bytearray(encode(photo(64, 48), "JPEG", quality=80, progressive=progressive))
    sof = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def many_scan_jpeg(scans: int, size: tuple[int, int] = (4032, 3024)) -> bytes:
    """A progressive JPEG whose smallest scan is repeated: libjpeg only warns, and decodes each.

    The picture is flat, so its refinement scans are a few dozen bytes of end-of-band runs, and
    each still makes libjpeg visit every block: ~20 MB holds hundreds of thousands of scans.
    """
    data = encode(Image.new("RGB", size, (90, 120, 150)), "JPEG", quality=85, progressive=True)
    eoi = data.rfind(b"\xff\xd9")
    starts = []
    at = data.find(b"\xff\xda")
    while at != -1:
        starts.append(at)
        at = data.find(b"\xff\xda", at + 2)
    bounds = list(zip(starts, [*starts[1:], eoi], strict=True))
    a, b = min(bounds[1:], key=lambda ab: ab[1] - ab[0])  # the smallest scan after the DC one
    return data[:eoi] + data[a:b] * scans + b"\xff\xd9"


# -- HEIF -------------------------------------------------------------------------------------


def heic(width: int = 1024, height: int = 768, quality: int = 60) -> bytes:
    return encode(photo(width, height), "HEIF", quality=quality)


def heic_with_dims(width: int, height: int) -> bytes:
    """A small HEIC whose image spatial extents (ispe) declare width x height."""
    data = bytearray(heic(64, 64))
    at = data.find(b"ispe")
    data[at + 8 : at + 16] = struct.pack(">II", width, height)
    return bytes(data)


# -- the rest ---------------------------------------------------------------------------------


def truncated(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def short_tiff_exif() -> bytes:
    """An EXIF block that is a TIFF header cut to 6 bytes (as in Pillow's truncated_exif_dpi.jpg)."""
    return b"Exif\x00\x00" + b"II*\x00\x08\x00"


def with_exif(fmt: str, exif: bytes) -> bytes:
    im = photo(640, 480)
    if fmt == "JPEG":
        # Pillow writes the APP1 payload as given.
        return encode(im, "JPEG", quality=85, exif=exif)
    if fmt == "PNG":
        data = encode(im, "PNG")
        iend = data.rfind(b"IEND") - 4
        return data[:iend] + _chunk(b"eXIf", exif.removeprefix(b"Exif\x00\x00")) + data[iend:]
    if fmt == "WEBP":
        return encode(im, "WEBP", quality=80, exif=exif)
    raise ValueError(fmt)


def jpeg_zip_polyglot() -> bytes:
    """A real JPEG with a ZIP archive after its end: both an image and an archive."""
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("readme.html", "<script>alert(1)</script>")
    return encode(photo(800, 600), "JPEG", quality=85) + out.getvalue()


def png_html_polyglot() -> bytes:
    """A PNG whose text chunk holds HTML, and HTML after IEND."""
    data = encode(photo(800, 600), "PNG")
    iend = data.rfind(b"IEND") - 4
    return data[:iend] + _chunk(b"tEXt", b"Comment\x00<html><script>alert(1)</script>") + data[iend:] + b"<html><body>hi</body></html>"


def heif_mp4_polyglot() -> bytes:
    """An ISO BMFF file with HEIF brands and an mp4 'moov' box and no image items."""
    ftyp = b"ftyp" + b"heic" + b"\x00\x00\x00\x00" + b"mif1heicisom"
    moov = b"moov" + b"\x00" * 32
    return struct.pack(">I", 4 + len(ftyp)) + ftyp + struct.pack(">I", 4 + len(moov)) + moov


def jpeg_in_png() -> bytes:
    """PNG signature and header, then a JPEG where the image data should be."""
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 800, 600, 8, 2, 0, 0, 0)) + encode(photo(800, 600), "JPEG")
