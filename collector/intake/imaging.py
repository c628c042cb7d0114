"""Pixels: identify the format from the bytes, decode once at reduced scale, hash, thumbnail.

Every function here treats the file as hostile. ``decode`` is the single decode of an upload:
it proves the stream is intact, yields a small oriented RGB image for the perceptual hash, the
quality figures and the thumbnail, and never decodes the full-resolution pixels of a JPEG.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pdqhash
from PIL import Image

from collector.intake import decoding

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "HEIF": "heic"}
MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "HEIF": "image/heic"}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1", b"mif2"}
_AVIF_BRANDS = {b"avif", b"avis"}
SMALL_SIDE = 320  # the reduced decode is at least this big on its shorter side, where possible
HASH_SIDE = decoding.HASH_SIDE
THUMB_SIDE = 320
_register_heif = decoding._register_heif  # collector.dataset.privacy re-encodes HEIC with it


def sniff(head: bytes) -> tuple[str | None, str | None]:
    """(allowed format, other image format) from the first bytes; (None, None) if not an image."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG", None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG", None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP", None
    if head[4:8] == b"ftyp":
        size = struct.unpack(">I", head[:4])[0]
        brands = {head[8:12]} | {head[i : i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
        if head[8:12] in _AVIF_BRANDS or (brands & _AVIF_BRANDS and not brands & (_HEIF_BRANDS - {b"mif1", b"msf1", b"mif2"})):
            return None, "AVIF"
        if brands & _HEIF_BRANDS:
            return "HEIF", None
        return None, None  # video and other ISO media files
    for magic, name in (
        (b"GIF87a", "GIF"),
        (b"GIF89a", "GIF"),
        (b"BM", "BMP"),
        (b"II*\x00", "TIFF"),
        (b"MM\x00*", "TIFF"),
        (b"II+\x00", "BigTIFF"),
        (b"MM\x00+", "BigTIFF"),
        (b"8BPS", "PSD"),
        (b"\x00\x00\x01\x00", "ICO"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
        (b"\xff\x4f\xff\x51", "JPEG 2000"),
        (b"\xff\x0a", "JPEG XL"),
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
        (b"qoif", "QOI"),
        (b"DDS ", "DDS"),
        (b"icns", "ICNS"),
        (b"\x76\x2f\x31\x01", "OpenEXR"),
        (b"#?RADIANCE", "HDR"),
        (b"P1", "PBM"), (b"P2", "PGM"), (b"P3", "PPM"), (b"P4", "PBM"), (b"P5", "PGM"), (b"P6", "PPM"),
    ):
        if head.startswith(magic):
            return None, name
    if head.lstrip().startswith((b"<svg", b"<?xml")) and b"<svg" in head:
        return None, "SVG"
    return None, None


class DecodeError(decoding.Refused):
    """The file could not be decoded; ``code`` is the reason code (`corrupt`, `too_many_pixels`,
    `too_complex`), ``pixels`` the pixel count it declares when known, ``limit`` the pixel limit
    that applied to it (`too_many_pixels`), ``detail`` what was wrong, for logs. (The decoder
    process raises its parent, ``decoding.Refused``, which cannot import this package.)"""


@dataclass
class Decoded:
    format: str  # one of EXTENSIONS
    stored_width: int  # as stored, before orientation
    stored_height: int
    small: Image.Image  # RGB as stored (orientation not applied unless orientation_applied), long side <= HASH_SIDE
    exif: bytes | None  # raw TIFF-structured EXIF block, if any
    orientation_applied: bool  # the decoder already applied the orientation (HEIF)


_ORIENT_OPS = {
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_270],
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_90],
}


def orient(im: Image.Image, orientation: int) -> Image.Image:
    for op in _ORIENT_OPS.get(orientation, []):
        im = im.transpose(op)
    return im


def displayed_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


# Defaults of the DECODE_* settings (collector/platform/config.py), for callers without settings.
DECODE_PROCESSES = 1
DECODE_MEMORY_MB = 320
DECODE_CPU_SECONDS = 6


def decode(
    path: Path,
    fmt: str,
    max_pixels: int,
    *,
    small_side: int = SMALL_SIDE,
    processes: int = DECODE_PROCESSES,
    memory_mb: int = DECODE_MEMORY_MB,
    cpu_seconds: int = DECODE_CPU_SECONDS,
    prechecks: bool = True,
) -> Decoded:
    """Check ``path``'s structure as ``fmt``, refuse it past its pixel limit, and decode it once, small.

    With ``processes`` > 0 the decode runs in one of that many decoder processes of this
    process (collector.intake.decoding.DecoderPool), with ``memory_mb`` of memory and ``cpu_seconds``
    of CPU; with 0 it runs here, without the backstop (tests and benches compare the two).
    ``prechecks=False`` is for tests and benches only (see decoding.decode_small). Raises
    DecodeError.
    """
    try:
        if processes <= 0:
            res = decoding.decode_small(path, fmt, max_pixels, small_side, memory_mb, prechecks)
            width, height, small, exif = res.width, res.height, res.small, res.exif
        else:
            pool = decoding.pool(processes, memory_mb, cpu_seconds)
            reply, tail = pool.decode(path, fmt, max_pixels, small_side, prechecks)
            if not reply.get("ok"):
                raise decoding.Refused(reply.get("code") or "corrupt", str(reply.get("detail", "")), reply.get("pixels"), reply.get("limit"))
            width, height = int(reply["width"]), int(reply["height"])
            sw, sh = (int(v) for v in reply["size"])
            n = int(reply["pixels_len"])
            if n != sw * sh * 3 or max(sw, sh) > decoding.HASH_SIDE or min(sw, sh) < 1:
                raise decoding.Refused("corrupt", "the decoder process sent a malformed image")
            small = Image.frombytes("RGB", (sw, sh), tail[:n])
            exif = tail[n:] or None
    except decoding.Refused as exc:
        code = exc.code if exc.code in ("corrupt", "too_many_pixels", "too_complex") else "corrupt"
        raise DecodeError(code, exc.detail, exc.pixels, exc.limit) from None
    return Decoded(fmt, width, height, small, exif, fmt == "HEIF")


@dataclass
class Fingerprint:
    pdq: str  # 64 hex digits: the picture as displayed
    pdq_quality: int  # 0..100, PDQ's own confidence in the hash
    variants: list[str]  # the hash of each of the 8 rotations and mirrors; variants[0] == pdq
    brightness: float  # mean luminance 0..255
    contrast: float  # standard deviation of luminance
    sharpness: float  # variance of the Laplacian on the small image


def fingerprint(small_oriented: Image.Image) -> Fingerprint:
    arr = np.asarray(small_oriented, dtype=np.uint8)
    # One DCT gives the hashes of all 8 rotations and mirrors, so a copy whose pixels (or whose
    # orientation tag alone) were turned is still found; variants[0] is the unturned hash.
    hashes, quality = pdqhash.compute_dihedral(arr)
    variants = [bits_to_hex(h) for h in hashes]
    g = np.asarray(small_oriented.convert("L"), dtype=np.float32)
    # 4-neighbour Laplacian on the interior; its variance falls towards 0 as focus is lost.
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return Fingerprint(
        pdq=variants[0],
        pdq_quality=int(quality),
        variants=variants,
        brightness=float(g.mean()),
        contrast=float(g.std()),
        sharpness=float(lap.var()) if lap.size else 0.0,  # a 1- or 2-pixel-wide image has no interior
    )


def bits_to_hex(bits) -> str:
    packed = np.packbits(np.asarray(bits, dtype=np.uint8))
    return packed.tobytes().hex()


def thumbnail_jpeg(small_oriented: Image.Image) -> bytes:
    im = small_oriented.copy()
    im.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=82)
    return out.getvalue()
