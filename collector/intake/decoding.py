"""Bounded decoding: structural pre-checks, per-format pixel limits, and decoder processes.

An upload of at most 25 MB can declare billions of pixels, a million progressive scans or a
HEIC whose tiles are missing. Three layers keep each decode bounded and its verdict right:

1. ``precheck`` reads the container structure in pure Python, bounded loops only: JPEG markers
   and scan count, PNG chunks against the file size, WebP chunks and frame headers, HEIF boxes
   and item extents. A truncated file is `corrupt` here, before any decoder sees it (libheif
   would fill missing tiles with green).
2. ``pixel_limit``: formats that must be decoded at full size (PNG, WebP, HEIF, and JPEGs whose
   coefficients are buffered: progressive or multi-scan) get a pixel limit from the memory
   budget and their measured bytes per pixel; baseline JPEGs decode at 1/8 scale, so only
   MAX_PIXELS applies to them.
3. The decode runs in a long-lived decoder process (``DecoderPool``) with RLIMIT_DATA (memory)
   and a CPU-time allowance for every file (ITIMER_PROF); a process that overruns is
   killed and replaced, and the file is `too_complex`. The pool's size bounds how many
   full-size decodes a web worker has in flight, whatever its thread count.

This module imports only the standard library and Pillow at module level, so the decoder
process (``python -I collector/intake/decoding.py``) starts small without the web application.
"""

from __future__ import annotations

import atexit
import io
import json
import logging
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is `corrupt`, never silently padded

log = logging.getLogger(__name__)

PILLOW_FORMATS = {"JPEG": ["JPEG", "MPO"], "PNG": ["PNG"], "WEBP": ["WEBP"], "HEIF": ["HEIF"]}
HASH_SIDE = 512  # the small image's long side at most

# Peak bytes per declared pixel of a full-size decode, measured on 12 MP files with Pillow 13
# and pillow-heif 1.8 (bench/hostile.py prints them): PNG 4 (RGB/RGBA; +1 when a palette image
# is converted), WebP 16 (libwebp's canvas, its previous-frame copy and Pillow's image), HEIF
# 7.5-8.2 (libheif's planes and the RGB output).
FULL_DECODE_BYTES_PER_PIXEL = {"PNG": 5, "WEBP": 16, "HEIF": 9}
JPEG_COEFFICIENT_BYTES = 2  # a buffered (progressive or multi-scan) JPEG keeps every coefficient
BASELINE_HEADROOM_MB = 64  # the decoder process itself: Python, Pillow, libheif, the file's bytes

MAX_JPEG_SCANS = 100  # libjpeg writes 10 for a progressive colour JPEG; mozjpeg up to ~20
# Each scan makes libjpeg visit every block (10.8 ms a scan at 12 MP here): scans x pixels is
# the work, whatever the file's size. 1.5e9 allows 100 scans at 15 MP, 31 at 48 MP.
MAX_SCAN_PIXELS = 1_500_000_000
MAX_CHUNKS = 100_000  # PNG / WebP chunks, HEIF boxes and items walked by the pre-check
MAX_HEIF_ITEMS = 10_000


class Refused(Exception):
    """The decode was refused: ``code`` is a reason code of checks.MESSAGES.

    ``pixels`` is the pixel count the file declares, when known; ``limit`` the pixel limit that
    applied (`too_many_pixels`).
    """

    def __init__(self, code: str, detail: str = "", pixels: int | None = None, limit: int | None = None):
        super().__init__(detail or code)
        self.code = code
        self.detail = detail or code
        self.pixels = pixels
        self.limit = limit


@dataclass
class Header:
    """What the pre-check learnt from the structure, before any pixel is decoded."""

    width: int
    height: int
    bytes_per_pixel: float  # peak decoder memory per declared pixel; 0 when decoded at 1/8 scale
    scans: int = 0  # JPEG only


# -- structural pre-checks ------------------------------------------------------------------


def precheck(data: bytes, fmt: str) -> Header:
    """Check the container of ``data`` (the whole file) as ``fmt``; raise Refused if it is wrong."""
    try:
        return _PRECHECKS[fmt](data)
    except Refused:
        raise
    except (struct.error, IndexError, ValueError) as exc:
        raise Refused("corrupt", f"{fmt} structure: {type(exc).__name__}: {exc}") from None


def _corrupt(why: str) -> Refused:
    return Refused("corrupt", why)


# Start-of-frame markers (SOF0-SOF15 but DHT, JPG and DAC), and those of progressive frames.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


def _jpeg(data: bytes) -> Header:
    if data[:2] != b"\xff\xd8":
        raise _corrupt("JPEG: no start-of-image marker")
    (marker, at), first_scan = _jpeg_segments(data)
    width, height, factors = _jpeg_frame(data, at)
    scans = _jpeg_scans(data, at, first_scan, width, height)
    bpp = 0.0
    if marker in _PROGRESSIVE_SOF or scans > 1 or len(factors) > 4:
        # libjpeg keeps every coefficient of the image until the last scan, whatever the scale.
        hmax, vmax = max(h for h, _ in factors), max(v for _, v in factors)
        samples = sum(h * v for h, v in factors) / (hmax * vmax)
        bpp = JPEG_COEFFICIENT_BYTES * samples
    return Header(width, height, bpp, scans)


def _jpeg_segments(data: bytes) -> tuple[tuple[int, int], int]:
    """Walk the segments up to the first scan, each inside the file: the frame header's
    (marker, position) and the position of the first start-of-scan marker."""
    size = len(data)
    pos, sof = 2, None
    for _ in range(MAX_CHUNKS):
        # Markers may be preceded by any number of 0xFF fill bytes.
        while pos < size and data[pos] == 0xFF and pos + 1 < size and data[pos + 1] == 0xFF:
            pos += 1
        if pos + 4 > size:
            raise _corrupt("JPEG: the file ends before its first scan")
        if data[pos] != 0xFF:
            raise _corrupt(f"JPEG: no marker at byte {pos}")
        marker = data[pos + 1]
        if 0xD0 <= marker <= 0xD7 or marker in (0x01, 0xD8):
            pos += 2  # a marker without a segment
            continue
        if marker == 0xD9:
            raise _corrupt("JPEG: the image ends before its first scan")
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2 or pos + 2 + length > size:
            raise _corrupt(f"JPEG: segment 0xFF{marker:02X} runs past the end of the file")
        if marker in _SOF_MARKERS:
            if sof is not None:
                raise _corrupt("JPEG: two frame headers before the first scan")
            sof = (marker, pos)
        if marker == 0xDA:
            if sof is None:
                raise _corrupt("JPEG: a scan without a frame header")
            return sof, pos
        pos += 2 + length
    raise Refused("too_complex", "JPEG: too many segments before the first scan")


def _jpeg_frame(data: bytes, at: int) -> tuple[int, int, list[tuple[int, int]]]:
    """Width, height and the components' (horizontal, vertical) sampling factors of the frame
    header at ``at``."""
    size = len(data)
    if at + 10 > size:
        raise _corrupt("JPEG: frame header cut short")
    height, width, ncomp = struct.unpack(">HHB", data[at + 5 : at + 10])
    if width == 0 or height == 0 or ncomp == 0 or at + 10 + 3 * ncomp > size:
        raise _corrupt(f"JPEG: the frame header declares {width}x{height} with {ncomp} components")
    factors = [(data[at + 11 + 3 * i] >> 4, data[at + 11 + 3 * i] & 15) for i in range(ncomp)]
    if any(h == 0 or v == 0 for h, v in factors):
        raise _corrupt("JPEG: a component has a zero sampling factor")
    return width, height, factors


def _jpeg_scans(data: bytes, at: int, first_scan: int, width: int, height: int) -> int:
    """How many scans follow the frame header at ``at``, refused when their work is too much
    or the image has no end after them."""
    # Every 0xFF in entropy-coded data is followed by 0x00 or a restart marker, so this counts
    # real start-of-scan markers (and those of an embedded thumbnail or an MPO's second image).
    scans = data.count(b"\xff\xda", at)
    if scans > MAX_JPEG_SCANS:
        raise Refused("too_complex", f"JPEG: {scans} scans, more than the {MAX_JPEG_SCANS} any camera writes")
    if data.rfind(b"\xff\xd9") < first_scan:
        raise _corrupt("JPEG: no end-of-image marker after the scans (truncated)")
    if scans > 1 and scans * width * height > MAX_SCAN_PIXELS:
        raise Refused("too_complex", f"JPEG: {scans} scans over {width}x{height} pixels")
    return scans


_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def _png(data: bytes) -> Header:
    size = len(data)
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR" or size < 33:
        raise _corrupt("PNG: no header chunk")
    (length,) = struct.unpack(">I", data[8:12])
    width, height, depth, colour, _comp, _filt, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if length != 13 or width == 0 or height == 0 or width > 2**31 - 1 or height > 2**31 - 1:
        raise _corrupt(f"PNG: the header declares {width}x{height}")
    if depth not in _PNG_DEPTHS.get(colour, ()) or interlace > 1:
        raise _corrupt(f"PNG: bit depth {depth} with colour type {colour}")
    pos, seen_idat = 8, False
    for _ in range(MAX_CHUNKS):
        if pos + 12 > size:
            raise _corrupt("PNG: the file ends before its end chunk (truncated)")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if length > 2**31 - 1 or pos + 12 + length > size:
            raise _corrupt(f"PNG: chunk {kind!r} runs past the end of the file (truncated)")
        if kind == b"IDAT":
            seen_idat = True
        elif kind == b"IEND":
            break
        pos += 12 + length
    else:
        raise Refused("too_complex", f"PNG: more than {MAX_CHUNKS} chunks")
    if not seen_idat:
        raise _corrupt("PNG: no image data")
    # Grey images decode to 1 or 2 bytes a pixel; counted double, since inflating and
    # unfiltering costs time by the byte whatever the memory.
    bpp = 2.0 if colour == 0 and depth <= 8 else 4.0 if colour == 0 else FULL_DECODE_BYTES_PER_PIXEL["PNG"]
    return Header(width, height, bpp)


def _webp(data: bytes) -> Header:
    size = len(data)
    if size < 20 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise _corrupt("WebP: no RIFF header")
    (riff,) = struct.unpack("<I", data[4:8])
    if riff + 8 > size:
        raise _corrupt(f"WebP: the file declares {riff + 8} bytes and has {size} (truncated)")
    canvas, frame = _webp_canvas_and_frame(data, riff + 8)
    dims = canvas or frame
    if dims is None or frame is None:
        raise _corrupt("WebP: no image frame")
    w, h = dims
    if w == 0 or h == 0 or frame[0] == 0 or frame[1] == 0:
        raise _corrupt(f"WebP: the header declares {w}x{h}")
    return Header(w, h, FULL_DECODE_BYTES_PER_PIXEL["WEBP"])


Size = tuple[int, int]


def _webp_canvas_and_frame(data: bytes, end: int) -> tuple[Size | None, Size | None]:
    """Walk the chunks of data[12:end], each inside it: the extended header's canvas size and
    the size of the first frame (None when there is none)."""
    pos, canvas, frame = 12, None, None
    for _ in range(MAX_CHUNKS):
        if pos >= end:
            return canvas, frame
        if pos + 8 > end:
            raise _corrupt("WebP: a chunk header is cut short")
        kind = data[pos : pos + 4]
        (length,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        body = pos + 8
        if body + length > end:
            raise _corrupt(f"WebP: chunk {kind!r} runs past the end of the file (truncated)")
        if kind == b"VP8X" and length >= 10:
            w = int.from_bytes(data[body + 4 : body + 7], "little") + 1
            h = int.from_bytes(data[body + 7 : body + 10], "little") + 1
            canvas = (w, h)
        elif frame is None:
            frame = _webp_frame(data, kind, body, length, canvas)
        pos = body + length + (length & 1)
    raise Refused("too_complex", f"WebP: more than {MAX_CHUNKS} chunks")


def _webp_frame(data: bytes, kind: bytes, body: int, length: int, canvas: Size | None) -> Size | None:
    """The size a frame chunk declares; None for a chunk that is no frame."""
    if kind == b"VP8 ":
        if length < 10 or data[body + 3 : body + 6] != b"\x9d\x01\x2a":
            raise _corrupt("WebP: a lossy frame without its start code")
        w, h = struct.unpack("<HH", data[body + 6 : body + 10])
        return (w & 0x3FFF, h & 0x3FFF)
    if kind == b"VP8L":
        if length < 5 or data[body] != 0x2F:
            raise _corrupt("WebP: a lossless frame without its signature")
        bits = int.from_bytes(data[body + 1 : body + 5], "little")
        return ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if kind == b"ANMF":
        return canvas  # the frames of an animation are bounded by the canvas
    return None


def _boxes(data: bytes, start: int, end: int, where: str):
    """(type, payload start, payload end) of the ISO BMFF boxes in data[start:end]."""
    pos = start
    for _ in range(MAX_CHUNKS):
        if pos == end:
            return
        if pos + 8 > end:
            raise _corrupt(f"HEIF: a box header in {where} is cut short")
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        head = 8
        if n == 1:
            if pos + 16 > end:
                raise _corrupt(f"HEIF: a box header in {where} is cut short")
            (n,) = struct.unpack(">Q", data[pos + 8 : pos + 16])
            head = 16
        elif n == 0:
            n = end - pos  # the last box, to the end of its parent
        if n < head or pos + n > end:
            raise _corrupt(f"HEIF: box {kind!r} in {where} runs past its end (truncated)")
        yield kind, pos + head, pos + n
        pos += n
    raise Refused("too_complex", f"HEIF: more than {MAX_CHUNKS} boxes in {where}")


def _uint(data: bytes, pos: int, nbytes: int) -> tuple[int, int]:
    if nbytes == 0:
        return 0, pos
    if pos + nbytes > len(data):
        raise _corrupt("HEIF: the item locations are cut short")
    return int.from_bytes(data[pos : pos + nbytes], "big"), pos + nbytes


def _heif(data: bytes) -> Header:
    size = len(data)
    top = {}
    for kind, start, stop in _boxes(data, 0, size, "the file"):
        top.setdefault(kind, (start, stop))
    if b"ftyp" not in top or b"meta" not in top:
        raise _corrupt("HEIF: no ftyp or meta box")
    start, stop = top[b"meta"]
    iloc = None
    for kind, s, e in _boxes(data, start + 4, stop, "meta"):  # meta is a full box: skip version
        if kind == b"iloc":
            iloc = (s, e)
    if iloc is None:
        raise _corrupt("HEIF: no item locations")
    _check_iloc(data[iloc[0] : iloc[1]], size)
    return Header(0, 0, FULL_DECODE_BYTES_PER_PIXEL["HEIF"])  # dimensions: from libheif's header read


def _check_iloc(box: bytes, file_size: int) -> None:
    """Every extent of every item stored in the file must lie inside the file."""
    version = box[0]
    if version > 2:
        raise _corrupt(f"HEIF: item locations version {version}")
    offset_size, length_size = box[4] >> 4, box[4] & 15
    base_size, index_size = box[5] >> 4, (box[5] & 15) if version in (1, 2) else 0
    pos = 6
    if version < 2:
        count, pos = _uint(box, pos, 2)
    else:
        count, pos = _uint(box, pos, 4)
    if count > MAX_HEIF_ITEMS:
        raise Refused("too_complex", f"HEIF: {count} items")
    for _ in range(count):
        pos += 2 if version < 2 else 4  # item id
        method = 0
        if version in (1, 2):
            flags, pos = _uint(box, pos, 2)
            method = flags & 15
        pos += 2  # data reference index
        base, pos = _uint(box, pos, base_size)
        extents, pos = _uint(box, pos, 2)
        for _ in range(extents):
            _, pos = _uint(box, pos, index_size)
            offset, pos = _uint(box, pos, offset_size)
            length, pos = _uint(box, pos, length_size)
            if method == 0 and base + offset + length > file_size:
                raise _corrupt(f"HEIF: an item's data ends at byte {base + offset + length} of {file_size} (truncated)")
    if pos > len(box):
        raise _corrupt("HEIF: the item locations are cut short")


_PRECHECKS = {"JPEG": _jpeg, "PNG": _png, "WEBP": _webp, "HEIF": _heif}


def pixel_limit(fmt: str, header: Header, max_pixels: int, memory_mb: int) -> int:
    """The most pixels this file may declare: MAX_PIXELS, or less when its decode is full size."""
    if header.bytes_per_pixel <= 0:
        return max_pixels
    budget = max(memory_mb - BASELINE_HEADROOM_MB, 16) * 1024 * 1024
    return min(max_pixels, int(budget / header.bytes_per_pixel))


# -- the decode itself (in the decoder process, or in-process when the pool is off) ---------


@dataclass
class Small:
    """A decode's result: the stored size, a small RGB image, the raw EXIF block."""

    width: int
    height: int
    small: Image.Image  # RGB, long side <= HASH_SIDE, as stored (HEIF: orientation applied)
    exif: bytes | None


_heif_registered = False


def _register_heif() -> None:
    global _heif_registered
    if not _heif_registered:
        import pillow_heif

        pillow_heif.register_heif_opener(thumbnails=False)
        _heif_registered = True


# CPU seconds per megapixel of the decode itself, measured on 12 MP files here (Pillow 13,
# pillow-heif 1.8, all threads): JPEG at 1/8 scale 0.006 (progressive 0.02), PNG 0.04,
# WebP 0.04, HEIC 0.105. A decoder process gets 3x that, plus half a second, and at most
# DECODE_CPU_SECONDS: a hostile file that passes the pre-checks is stopped at about the cost
# of an honest file of its size.
CPU_PER_MEGAPIXEL = {"JPEG": 0.006, "JPEG-buffered": 0.02, "PNG": 0.04, "WEBP": 0.04, "HEIF": 0.105}


def cpu_allowance(fmt: str, pixels: int, buffered: bool, most: float) -> float:
    key = "JPEG-buffered" if fmt == "JPEG" and buffered else fmt
    return min(most, 0.5 + 3 * CPU_PER_MEGAPIXEL[key] * pixels / 1e6)


def decode_small(
    path: str | os.PathLike,
    fmt: str,
    max_pixels: int,
    small_side: int,
    memory_mb: int,
    prechecks: bool = True,
    on_size: Callable[[int, bool], None] | None = None,
) -> Small:
    """Pre-check, limit and decode ``path`` once; raise Refused. Runs where it is called.

    ``prechecks=False`` skips the structural pre-check and the per-format limits (MAX_PIXELS
    still applies): the tests and bench/hostile.py use it to show that the backstop alone holds.
    ``on_size(pixels, buffered)`` is called once the size is known, before the pixels are
    decoded (the decoder process sets its CPU allowance there).
    """
    with _decoder_errors_refused():
        with open(path, "rb") as fh:
            data = fh.read()
        header, limit = _header_and_limit(data, fmt, max_pixels, memory_mb, prechecks)
        if fmt == "HEIF":
            _register_heif()
        with Image.open(io.BytesIO(data), formats=PILLOW_FORMATS[fmt]) as im:
            del data
            width, height = _checked_size(im, fmt, header, limit)
            if on_size is not None:
                on_size(width * height, header.bytes_per_pixel > 0 or not prechecks)
            if fmt == "JPEG":
                im.draft("RGB", (small_side, small_side))
            im.load()  # the one decode: proves the whole stream is intact
            exif = raw_exif(im.info.get("exif"))  # after load: a PNG's eXIf may follow its pixels
            small = to_small_rgb(im)
    return Small(width, height, small, exif)


def _header_and_limit(data: bytes, fmt: str, max_pixels: int, memory_mb: int, prechecks: bool) -> tuple[Header, int]:
    """The pre-check's header and the pixel limit for this file, refused when the header
    already declares more pixels than that."""
    if not prechecks:
        return Header(0, 0, 0.0), max_pixels
    header = precheck(data, fmt)
    limit = pixel_limit(fmt, header, max_pixels, memory_mb)
    pixels = header.width * header.height
    if header.width and pixels > limit:
        # Before Image.open: Pillow's WebP plugin allocates its canvas when opening.
        raise Refused("too_many_pixels", f"{header.width}x{header.height}", pixels=pixels, limit=limit)
    return header, limit


def _checked_size(im: Image.Image, fmt: str, header: Header, limit: int) -> tuple[int, int]:
    """The size the decoder reads, refused when it has no pixels, disagrees with the header
    (JPEG: its draft size may) or is over the limit."""
    width, height = im.size
    if width <= 0 or height <= 0:
        raise Refused("corrupt", "the image declares no pixels")
    if header.width and (width, height) != (header.width, header.height) and fmt != "JPEG":
        raise Refused("corrupt", f"{fmt}: the decoder reads {width}x{height}, the header says {header.width}x{header.height}")
    if width * height > limit:
        raise Refused("too_many_pixels", f"{width}x{height}", pixels=width * height, limit=limit)
    return width, height


@contextmanager
def _decoder_errors_refused():
    """What Pillow and its plugins raise on a hostile or damaged file, as a Refused verdict."""
    try:
        yield
    except Refused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Refused("too_many_pixels", str(exc)) from None
    except UnidentifiedImageError as exc:
        raise Refused("corrupt", str(exc)) from None
    except MemoryError:
        raise Refused("too_complex", "the decoder ran out of memory") from None
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, struct.error, EOFError, zlib.error, RuntimeError) as exc:
        text = str(exc).lower()
        if "memory" in text or "alloc" in text:
            raise Refused("too_complex", f"the decoder ran out of memory: {exc}") from None
        raise Refused("corrupt", f"{type(exc).__name__}: {exc}") from None


def to_small_rgb(im: Image.Image) -> Image.Image:
    """RGB, long side <= HASH_SIDE, reduced before any conversion so no full-size copy is made."""
    factor = max(1, max(im.size) // HASH_SIDE)
    if im.mode == "1":
        im = im.convert("L")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        # Pillow cannot reduce 16-bit images: subsample first (a view-sized copy), then scale.
        if factor > 1:
            im = im.resize((max(1, im.width // factor), max(1, im.height // factor)), Image.Resampling.NEAREST)
        im = im.convert("I")
    elif im.mode == "P" or im.mode not in ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F"):
        im = im.convert("RGBA" if "transparency" in im.info or "A" in im.mode else "RGB")
    if factor > 1 and max(im.size) > HASH_SIDE:
        f = max(1, max(im.size) // HASH_SIDE)
        if im.mode in ("LA", "RGBA"):
            # Image.reduce premultiplies alpha in a full-size copy first (4 more bytes a pixel);
            # averaging the straight channels differs only where alpha varies, and is enough
            # for a hash and a thumbnail.
            im = im._new(im.im.reduce((f, f), (0, 0, *im.size)))
        else:
            im = im.reduce(f)
    if im.mode in ("I", "F"):
        lo, hi = im.getextrema()
        scale = 255.0 / hi if hi and hi > 255 else 1.0
        im = im.point(lambda v: v * scale).convert("L")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    im = im.convert("RGB")
    if max(im.size) > HASH_SIDE:
        im.thumbnail((HASH_SIDE, HASH_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return im


def raw_exif(blob) -> bytes | None:
    if not isinstance(blob, (bytes, bytearray)) or not blob:
        return None
    blob = bytes(blob)
    if blob.startswith(b"Exif\x00\x00"):
        blob = blob[6:]
    return blob if blob[:4] in (b"II*\x00", b"MM\x00*") else None


# -- the decoder process ---------------------------------------------------------------------

# Wire format, both ways: a 4-byte big-endian length, then a JSON header; a reply carrying an
# image has the raw RGB bytes and the EXIF bytes after it (their lengths are in the header).
# No pickle: the parent never runs anything the decoder process could have chosen.
_LEN = struct.Struct(">I")
MAX_REPLY_BYTES = 16 * 1024 * 1024


def _serve() -> None:
    """The decoder process: set the limits, then decode one request at a time from stdin."""
    memory_mb = int(os.environ["DECODER_MEMORY_MB"])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_DATA, (memory_mb << 20, memory_mb << 20))
    # Pillow's guard is this process's own business, not the web app's: off, because the limits
    # are decode_small's (checked before Image.open), with the numbers in the verdict.
    Image.MAX_IMAGE_PIXELS = None
    rin, wout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but replies on the pipe
    while True:
        head = rin.read(_LEN.size)
        if len(head) < _LEN.size:
            return  # the parent went away
        req = json.loads(rin.read(_LEN.unpack(head)[0]))
        # A fresh CPU allowance for this file: SIGPROF ends the process once it is spent.
        most = float(req["cpu_seconds"])

        def allow(seconds: float) -> None:
            # ITIMER_PROF counts this process's CPU (user + system, all threads) from now, and
            # SIGPROF's default action ends the process. Not RLIMIT_CPU against the process's
            # total: the kernel checks that against its tick-sampled CPU time, which drifted
            # from what getrusage reports by more than a file's allowance over a decoder's
            # hundreds of files, and honest photos were refused under load (bench/load.py).
            signal.setitimer(signal.ITIMER_PROF, seconds)

        allow(min(most, 1.0))  # the pre-check and the header, whatever the file

        def on_size(pixels: int, buffered: bool, fmt=req["fmt"], most=most) -> None:
            allow(cpu_allowance(fmt, pixels, buffered, most))
        reset_peak_rss()
        t0 = time.process_time()
        try:
            res = decode_small(req["path"], req["fmt"], req["max_pixels"], req["small_side"], memory_mb, req["prechecks"], on_size)
        except Refused as exc:
            reply, tail = {"ok": False, "code": exc.code, "detail": exc.detail, "pixels": exc.pixels, "limit": exc.limit}, b""
        except Exception as exc:  # a decoder bug on hostile input: a verdict, not a dead process
            reply, tail = {"ok": False, "code": "corrupt", "detail": f"{type(exc).__name__}: {exc}"}, b""
        else:
            pixels = res.small.tobytes()
            exif = res.exif or b""
            reply = {"ok": True, "width": res.width, "height": res.height, "size": list(res.small.size),
                     "pixels_len": len(pixels), "exif_len": len(exif)}
            tail = pixels + exif
        signal.setitimer(signal.ITIMER_PROF, 0)  # done: the allowance stops here
        reply["cpu"] = time.process_time() - t0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        reply["used"] = usage.ru_utime + usage.ru_stime
        reply["maxrss_kb"] = peak_rss_kb()
        body = json.dumps(reply).encode()
        wout.write(_LEN.pack(len(body)) + body + tail)
        wout.flush()


def reset_peak_rss() -> None:
    """Start this process's peak RSS (VmHWM) afresh, where Linux allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_rss_kb() -> int:
    """This process's peak RSS since start or reset_peak_rss, in KiB.

    Not ru_maxrss: Linux carries that across fork and exec, so a decoder started by a large
    parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class DecoderDied(Exception):
    pass


class _Decoder:
    """One decoder process and its pipes."""

    def __init__(self, memory_mb: int):
        env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
        env.update(DECODER_MEMORY_MB=str(memory_mb), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   # Big buffers straight from mmap and back to the kernel when freed: without a
                   # fixed threshold glibc raises it to 32 MB after the first large free, and a
                   # decoder would keep its largest image's memory between files.
                   MALLOC_MMAP_THRESHOLD_="262144", MALLOC_TRIM_THRESHOLD_="1048576", MALLOC_ARENA_MAX="2")
        self.proc = subprocess.Popen(
            [sys.executable, "-I", str(Path(__file__).resolve())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True,
            start_new_session=True,  # a Ctrl-C to the server is not also a signal to the decoder
        )
        self.tasks = 0
        self.maxrss_kb = 0
        self.cpu_total = 0.0  # the process's CPU seconds after its last reply

    def request(self, req: dict, wall_seconds: float) -> tuple[dict, bytes]:
        body = json.dumps(req).encode()
        try:
            self.proc.stdin.write(_LEN.pack(len(body)) + body)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise DecoderDied(f"the decoder process is gone: {exc}") from None
        deadline = time.monotonic() + wall_seconds
        head = self._read(_LEN.size, deadline)
        (n,) = _LEN.unpack(head)
        if n > 65536:
            raise DecoderDied("a malformed reply")
        reply = json.loads(self._read(n, deadline))
        tail_len = int(reply.get("pixels_len", 0)) + int(reply.get("exif_len", 0))
        if not 0 <= tail_len <= MAX_REPLY_BYTES:
            raise DecoderDied("a malformed reply")
        tail = self._read(tail_len, deadline) if tail_len else b""
        self.tasks += 1
        self.maxrss_kb = int(reply.get("maxrss_kb", 0))
        self.cpu_total = float(reply.get("used", 0.0))
        return reply, tail

    def _read(self, n: int, deadline: float) -> bytes:
        out = bytearray()
        fd = self.proc.stdout.fileno()
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the decoder overran its deadline")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, min(n - len(out), 1 << 20))
            if not chunk:
                raise DecoderDied(self._death())
            out += chunk
        return bytes(out)

    def _death(self) -> str:
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "the decoder closed its pipe"
        if rc == -signal.SIGPROF:
            log.info("decoder process %s spent a file's CPU allowance after %d files (%.2f s of CPU before it)",
                     self.proc.pid, self.tasks, self.cpu_total)
            return "cpu"
        if rc == -signal.SIGKILL:
            return "killed"  # not by us: the kernel's OOM killer, or an operator
        return f"the decoder exited with {rc}"

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self._close_pipes()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("decoder process %s did not exit after SIGKILL", self.proc.pid)

    def forget(self) -> None:
        """In a forked child: drop the parent's decoder without touching the process."""
        self._close_pipes()

    def _close_pipes(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class DecoderPool:
    """At most ``size`` decoder processes, started when first needed, shared by all threads.

    A thread takes an idle decoder (or starts one, or waits for one), sends the path, and waits
    for the reply with a wall-clock deadline; the CPU allowance and the memory limit are
    enforced by the kernel in the decoder process. A decoder that dies, overruns or misbehaves
    is killed and replaced; one is also replaced after ``max_tasks`` files, so fragmentation
    cannot grow it for ever.
    """

    def __init__(self, size: int, memory_mb: int, cpu_seconds: int, wall_seconds: float | None = None, max_tasks: int = 500):
        self.size = size
        self.memory_mb = memory_mb
        self.cpu_seconds = cpu_seconds
        self.wall_seconds = wall_seconds if wall_seconds is not None else 10.0 * cpu_seconds + 10.0
        self.max_tasks = max_tasks
        self.pid = os.getpid()
        # A thread holds a slot for the whole of its decode: busy + idle decoders <= slots, so
        # a thread with a slot always finds an idle decoder or room to start one, and a
        # decoder killed mid-decode frees its slot for the next waiting thread.
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[_Decoder] = []
        self._all: set[_Decoder] = set()
        # Of the decoder that served this thread's last request (tests, bench/hostile.py).
        self._last = threading.local()

    def _take(self) -> _Decoder:
        """An idle live decoder, or a new one; only called while holding a slot."""
        while True:
            with self._lock:
                d = self._idle.pop() if self._idle else None
            if d is None:
                break
            if d.proc.poll() is None:
                return d
            self._drop(d)  # died while idle (killed from outside): start another
        d = _Decoder(self.memory_mb)
        with self._lock:
            self._all.add(d)
        return d

    def _drop(self, d: _Decoder) -> None:
        d.kill()
        with self._lock:
            self._all.discard(d)

    def decode(self, path: str | os.PathLike, fmt: str, max_pixels: int, small_side: int, prechecks: bool = True) -> tuple[dict, bytes]:
        req = {"path": str(path), "fmt": fmt, "max_pixels": int(max_pixels), "small_side": int(small_side),
               "cpu_seconds": self.cpu_seconds, "prechecks": bool(prechecks)}
        with self._slots:
            for attempt in (1, 2):
                d = self._take()
                try:
                    reply, tail = d.request(req, self.wall_seconds)
                except TimeoutError:
                    self._drop(d)
                    raise Refused("too_complex", f"the decode took longer than {self.wall_seconds:.0f} s") from None
                except DecoderDied as exc:
                    self._drop(d)
                    if str(exc) == "cpu":
                        raise Refused("too_complex", "the decode needed more CPU time than an honest file of its size") from None
                    if str(exc) == "killed":
                        # Not remembered as `corrupt` against the file: the machine may be short
                        # of memory rather than the file hostile.
                        raise Refused("too_complex", "the decoder process was killed during the decode") from None
                    if attempt == 1 and d.tasks > 0 and "gone" in str(exc):
                        continue  # it had died while idle: one retry on a fresh one
                    # Killed by the memory limit, or crashed in a decoder library on this file.
                    raise Refused("corrupt", f"the decoder process died: {exc}") from None
                except BaseException:
                    self._drop(d)
                    raise
                self._last.peak_kb, self._last.cpu, self._last.pid = d.maxrss_kb, float(reply.get("cpu", 0.0)), d.proc.pid
                if d.tasks >= self.max_tasks:
                    self._drop(d)
                else:
                    with self._lock:
                        self._idle.append(d)
                return reply, tail
        raise AssertionError("unreachable")

    def last(self) -> tuple[int, float, int]:
        """(peak RSS in KiB, CPU seconds, pid) of the decoder during this thread's last decode."""
        return getattr(self._last, "peak_kb", 0), getattr(self._last, "cpu", 0.0), getattr(self._last, "pid", 0)

    def cpu_seconds_used(self) -> float:
        """CPU seconds (user + system) used so far by the live decoder processes (benches)."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                pass
        return total

    def pids(self) -> list[int]:
        with self._lock:
            return [d.proc.pid for d in self._all]

    def close(self) -> None:
        with self._lock:
            everyone = list(self._all)
            self._all.clear()
            self._idle.clear()
        for d in everyone:
            d.kill()

    def _forget(self) -> None:
        for d in list(self._all):
            d.forget()


_pools: dict[tuple, DecoderPool] = {}
_pools_lock = threading.Lock()


def pool(size: int, memory_mb: int, cpu_seconds: int) -> DecoderPool:
    """The process-wide pool for these limits, created on first use (per process, after fork)."""
    key = (size, memory_mb, cpu_seconds)
    with _pools_lock:
        p = _pools.get(key)
        if p is None or p.pid != os.getpid():
            p = _pools[key] = DecoderPool(size, memory_mb, cpu_seconds)
        return p


_inherited: list[DecoderPool] = []  # the parent's pools, kept so their Popen objects never warn


def _after_fork_in_child() -> None:
    global _pools_lock
    _pools_lock = threading.Lock()
    for p in _pools.values():
        p._forget()
        _inherited.append(p)
    _pools.clear()


def close_pools() -> None:
    with _pools_lock:
        for p in _pools.values():
            p.close()
        _pools.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(close_pools)  # a worker that exits stops its decoders (they would on EOF too)


if __name__ == "__main__":
    _serve()
