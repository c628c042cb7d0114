"""Hostile and odd files, built byte by byte, each for one reason code or one EXIF fault.

Each function returns bytes. They stand in for the kinds of file in ../shared/corpus/pillow-bad
(truncated streams, damaged zlib data, decompression bombs, formats we do not take, crafted
EXIF), so the suite covers them from a clone alone; the real files add their cases when the
corpus is there (tests/test_corpus.py).
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from . import photos


def chunk(kind: bytes, body: bytes) -> bytes:
    """A PNG chunk with its length and CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_parts(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (kind, body) chunks of a PNG."""
    parts, at = [], 8
    while at < len(data):
        (n,) = struct.unpack(">I", data[at : at + 4])
        parts.append((data[at + 4 : at + 8], data[at + 8 : at + 8 + n]))
        at += 12 + n
    return parts


def png_from(parts) -> bytes:
    return PNG_SIGNATURE + b"".join(chunk(k, b) for k, b in parts)


def small_png(seed: int = 50, size=(640, 480)) -> bytes:
    return photos.encode(photos.scene(seed, size), "PNG")


# --- not an image, or not a format we take -----------------------------------------------

def ole_document() -> bytes:
    """The start of an OLE2 compound file (an old Word .doc): not an image at all."""
    header = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 16 + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6)
    return header.ljust(512, b"\x00") + b"Word.Document.8\x00".ljust(1536, b"\x00")


def png_without_first_byte() -> bytes:
    """A PNG whose first signature byte was removed: no longer recognisable as an image."""
    return small_png()[1:]


def animated_gif() -> bytes:
    frames = [photos.scene(60 + i, (200, 150)).convert("P") for i in range(3)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def tiff() -> bytes:
    return photos.encode(photos.scene(61, (640, 480)), "TIFF")


def bmp_with_huge_width() -> bytes:
    """A BMP header declaring 2^31-1 x 2^7 pixels, with almost no pixel data."""
    info = struct.pack("<IiiHHIIiiII", 40, 0x7FFFFFFF, 128, 1, 24, 0, 0, 2835, 2835, 0, 0)
    body = info + b"\x00" * 64
    return b"BM" + struct.pack("<IHHI", 14 + len(body), 0, 0, 14 + 40) + body


def gif_bomb() -> bytes:
    """A 44-byte GIF that declares a 65535x65535 screen and image."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 0xFFFF, 0xFFFF, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 0xFFFF, 0xFFFF, 0) + b"\x02\x02\x44\x01\x00"
    return screen + image + b"\x3b"


def mp4_header() -> bytes:
    """The start of an MP4 video: an ISO media file that is not an image."""
    ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isomiso2"
    return ftyp + struct.pack(">I", 8) + b"free" + b"\x00" * 200


def avif_header() -> bytes:
    """The start of an AVIF file: an image, of a format we do not take."""
    ftyp = struct.pack(">I", 28) + b"ftypavif" + struct.pack(">I", 0) + b"avifmif1miaf"
    return ftyp + struct.pack(">I", 8) + b"free" + b"\x00" * 200


# --- damaged pixels --------------------------------------------------------------------

def truncated_jpeg() -> bytes:
    data = photos.jpeg(62, (640, 480))
    return data[: len(data) * 2 // 3]


def truncated_png() -> bytes:
    """A PNG cut off inside its image data."""
    data = small_png()
    return data[: len(data) // 2]


def png_without_end() -> bytes:
    """A PNG whose last image data chunk is cut short and whose IEND is missing."""
    data = small_png()
    return data[: len(data) - 12 - 40]


def png_with_damaged_data() -> bytes:
    """A PNG whose image data is not a valid zlib stream (the CRC is right, the data not)."""
    parts = png_parts(small_png())
    out, damaged = [], False
    for kind, body in parts:
        if kind == b"IDAT" and not damaged:
            body = body[:2] + bytes(b ^ 0x5A for b in body[2:200]) + body[200:]
            damaged = True
        out.append((kind, body))
    return png_from(out)


def png_text_bomb() -> bytes:
    """A PNG with a compressed text chunk that inflates to 16 MiB (a zip bomb in metadata)."""
    parts = png_parts(small_png())
    ztxt = b"Comment\x00\x00" + zlib.compress(b"\x00" * (16 << 20), 9)
    return png_from(parts[:1] + [(b"zTXt", ztxt)] + parts[1:])


def png_unknown_compression() -> bytes:
    """A PNG whose ICC profile chunk names compression method 1, which does not exist."""
    parts = png_parts(small_png())
    iccp = b"ICC Profile\x00\x01" + zlib.compress(b"\x00" * 500)
    return png_from(parts[:1] + [(b"iCCP", iccp)] + parts[1:])


def png_broken_header() -> bytes:
    """A PNG signature followed by a header chunk with a wrong CRC and no image."""
    return PNG_SIGNATURE + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0) + b"\xde\xad\xbe\xef" + b"\x00" * 40


# --- EXIF, built by hand ----------------------------------------------------------------

def tiff_block(entries: list[tuple[int, int, int, bytes]], extra: bytes = b"", sub_ifds: dict | None = None) -> bytes:
    """A little-endian TIFF/EXIF block: IFD0 with ``entries`` (tag, type, count, 4-byte value
    or offset), followed by ``extra`` bytes (values that do not fit, or other directories)."""
    body = struct.pack("<H", len(entries))
    for tag, ftype, count, value in entries:
        body += struct.pack("<HHI", tag, ftype, count) + value.ljust(4, b"\x00")[:4]
    return b"II*\x00" + struct.pack("<I", 8) + body + b"\x00\x00\x00\x00" + extra


def with_exif_block(jpeg: bytes, block: bytes) -> bytes:
    """A JPEG with ``block`` as its EXIF (APP1) segment, right after SOI."""
    app1 = b"Exif\x00\x00" + block
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def _long(n: int) -> bytes:
    return struct.pack("<I", n)


def exif_gps_pointer_not_a_pointer() -> bytes:
    """IFD0's GPS pointer (0x8825) is an ASCII string, not a pointer."""
    block = tiff_block([(0x010F, 2, 4, b"Cam\x00"), (0x8825, 2, 4, b"abc\x00")])
    return with_exif_block(photos.jpeg(63, (640, 480)), block)


def exif_truncated_ifd0() -> bytes:
    """IFD0 claims 40 entries but the block ends after two."""
    block = tiff_block([(0x010F, 2, 4, b"Cam\x00"), (0x0110, 2, 4, b"X1\x00\x00")])
    block = block[:8] + struct.pack("<H", 40) + block[10:]
    return with_exif_block(photos.jpeg(64, (640, 480)), block)


def exif_empty_gps_directory() -> bytes:
    """A sound block whose GPS directory has no entries (some phones write it so)."""
    # IFD0 at 8: 3 entries -> 2 + 36 + 4 = 42 bytes, then "Phone\0" at 50, GPS IFD at 56
    make = b"Phone\x00\x00\x00"
    gps_at = 8 + 2 + 3 * 12 + 4 + len(make)
    block = tiff_block([(0x010F, 2, 6, _long(50)), (0x0112, 3, 1, struct.pack("<H", 6)), (0x8825, 4, 1, _long(gps_at))],
                       extra=make + b"\x00\x00" + b"\x00\x00\x00\x00")
    return with_exif_block(photos.jpeg(65, (640, 480)), block)


def exif_zero_resolution() -> bytes:
    """A sound block whose X and Y resolution are 0/0 (a division by zero for naive readers)."""
    res_at = 8 + 2 + 3 * 12 + 4
    block = tiff_block([(0x010F, 2, 4, b"Cam\x00"), (0x011A, 5, 1, _long(res_at)), (0x011B, 5, 1, _long(res_at))],
                       extra=b"\x00" * 8)
    return with_exif_block(photos.jpeg(66, (640, 480)), block)


def exif_gps_zero_denominators() -> bytes:
    """A sound block with a GPS directory whose rationals are n/0: no position, no error."""
    gps_at = 8 + 2 + 1 * 12 + 4
    rationals_at = gps_at + 2 + 4 * 12 + 4
    gps = struct.pack("<H", 4)
    gps += struct.pack("<HHI", 1, 2, 2) + b"N\x00\x00\x00"
    gps += struct.pack("<HHI", 2, 5, 3) + _long(rationals_at)
    gps += struct.pack("<HHI", 3, 2, 2) + b"E\x00\x00\x00"
    gps += struct.pack("<HHI", 4, 5, 3) + _long(rationals_at)
    gps += b"\x00\x00\x00\x00" + struct.pack("<6I", 12, 0, 30, 0, 5, 0)
    block = tiff_block([(0x8825, 4, 1, _long(gps_at))], extra=gps)
    return with_exif_block(photos.jpeg(67, (640, 480)), block)


def exif_orientation(seed: int, orientation: int, size=(640, 480)) -> bytes:
    """A JPEG with only an Orientation tag."""
    return photos.encode(photos.scene(seed, size), "JPEG", photos.make_exif(orientation=orientation), quality=90)


# The reason code each hostile file must get; the test in test_intake.py walks this table.
REASONS = {
    "ole_document": (ole_document, "not_an_image"),
    "png_without_first_byte": (png_without_first_byte, "not_an_image"),
    "mp4_header": (mp4_header, "not_an_image"),
    "animated_gif": (animated_gif, "unsupported_format"),
    "tiff": (tiff, "unsupported_format"),
    "bmp_with_huge_width": (bmp_with_huge_width, "unsupported_format"),
    "gif_bomb": (gif_bomb, "unsupported_format"),
    "avif_header": (avif_header, "unsupported_format"),
    "truncated_jpeg": (truncated_jpeg, "corrupt"),
    "truncated_png": (truncated_png, "corrupt"),
    "png_without_end": (png_without_end, "corrupt"),
    "png_with_damaged_data": (png_with_damaged_data, "corrupt"),
    "png_text_bomb": (png_text_bomb, "corrupt"),
    "png_unknown_compression": (png_unknown_compression, "corrupt"),
    "png_broken_header": (png_broken_header, "corrupt"),
}


def as_image(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im
