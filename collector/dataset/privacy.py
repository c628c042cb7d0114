"""Rewrite a photo's metadata for publication without touching its compressed pixels.

JPEG: the segments before the scan are rebuilt (private ones dropped, a minimal EXIF put
back) and everything from the first scan to EOI is copied byte for byte; only the first frame
of an MPO is kept. PNG and WebP: chunks are filtered the same way. HEIC/HEIF is converted to a
high-quality JPEG with the orientation applied. What survives: orientation, make, model and
capture time (and GPS with ``keep_gps``); ICC colour profiles and the JFIF/Adobe segments
that decoders need.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import struct
import zlib

from PIL import Image

from collector.intake.imaging import _register_heif

# JPEG markers kept as they are: JFIF (APP0), ICC profile (APP2 "ICC_PROFILE"), Adobe (APP14).
_KEEP_APP = {0xE0: b"JFIF", 0xE2: b"ICC_PROFILE\x00", 0xEE: b"Adobe"}
# PNG chunks kept: the critical ones and those that change how pixels display.
_PNG_KEEP = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs", b"acTL", b"fcTL", b"fdAT"}


def minimal_exif(orientation: int, make: str | None, model: str | None, captured_at: dt.datetime | None,
                 gps: tuple[float, float] | None = None) -> bytes:
    """A fresh EXIF block (``Exif\\0\\0`` + big-endian TIFF) holding only what the dataset keeps.

    Written directly rather than through Pillow's generic writer, which costs more than the rest
    of an image's export together."""
    ifd0: list[tuple[int, int, int, bytes]] = []  # (tag, type, count, value bytes)
    if make:
        ifd0.append(_ascii(0x010F, make))
    if model:
        ifd0.append(_ascii(0x0110, model))
    if orientation and orientation != 1:
        ifd0.append((0x0112, 3, 1, struct.pack(">H", orientation)))
    subs: list[tuple[int, list]] = []
    if captured_at:
        subs.append((0x8769, [_ascii(0x9003, captured_at.strftime("%Y:%m:%d %H:%M:%S"))]))
    if gps:
        lat, lon = gps
        subs.append((0x8825, [
            _ascii(0x0001, "N" if lat >= 0 else "S"), (0x0002, 5, 3, _dms(abs(lat))),
            _ascii(0x0003, "E" if lon >= 0 else "W"), (0x0004, 5, 3, _dms(abs(lon))),
        ]))
    # Layout: header, IFD0, then each sub-IFD, each IFD followed by its out-of-line values.
    ifd0_size = _ifd_size(ifd0) + 12 * len(subs)
    offset = 8 + ifd0_size
    pointers, blobs = [], []
    for tag, entries in subs:
        pointers.append((tag, 4, 1, struct.pack(">I", offset)))
        blob = _ifd(entries, offset)
        blobs.append(blob)
        offset += len(blob)
    entries0 = sorted(ifd0 + pointers)
    out = b"MM\x00*" + struct.pack(">I", 8) + _ifd(entries0, 8) + b"".join(blobs)
    return b"Exif\x00\x00" + out


def _ascii(tag: int, text: str) -> tuple[int, int, int, bytes]:
    raw = text.encode("ascii", "replace")[:255] + b"\x00"
    return (tag, 2, len(raw), raw)


def _dms(value: float) -> bytes:
    d = int(value)
    m = int((value - d) * 60)
    s = round(((value - d) * 60 - m) * 60 * 10000)
    return struct.pack(">IIIIII", d, 1, m, 1, s, 10000)


def _ifd_size(entries) -> int:
    return 2 + 12 * len(entries) + 4 + sum(len(v) + (len(v) & 1) for *_, v in entries if len(v) > 4)


def _ifd(entries, at: int) -> bytes:
    """One IFD at offset ``at``, with its values longer than 4 bytes right after it."""
    data_at = at + 2 + 12 * len(entries) + 4
    head, tail = [struct.pack(">H", len(entries))], []
    for tag, ftype, count, value in sorted(entries):
        if len(value) > 4:
            head.append(struct.pack(">HHII", tag, ftype, count, data_at))
            padded = value + (b"\x00" if len(value) & 1 else b"")
            tail.append(padded)
            data_at += len(padded)
        else:
            head.append(struct.pack(">HHI", tag, ftype, count) + value.ljust(4, b"\x00"))
    return b"".join(head) + b"\x00\x00\x00\x00" + b"".join(tail)


def jpeg_segments(data: bytes):
    """(marker, start, end) of each segment before the first SOS; then ('SOS', start, eoi_end)."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    pos = 2
    appended = False  # a segment declares images or video after the first image's EOI
    while pos < len(data):
        if data[pos] != 0xFF:
            # junk between segments (some writers leave it): skip to the next marker
            nxt = data.find(b"\xff", pos)
            if nxt < 0:
                raise ValueError("no scan in JPEG")
            pos = nxt
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the rest up to EOI is compressed data
            yield "SOS", pos, _find_eoi(data, pos, appended)
            return
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        if marker in (0xE1, 0xE2) and _declares_appended(data, pos, end):
            appended = True
        yield marker, pos, end
        pos = end
    raise ValueError("no scan in JPEG")


# MPF (MPO frames, gain maps) and XMP containers (motion photos, depth maps) put more images
# or a video after the first image's EOI; so may a trailer whose end is not an EOI.
_APPENDED = (b"MPF\x00", )
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"


def _declares_appended(data: bytes, start: int, end: int) -> bool:
    body = data[start + 4 : end]
    if body.startswith(_APPENDED):
        return True
    return body.startswith(_XMP) and (b"Container" in body or b"MotionPhoto" in body or b"GDepth" in body
                                      or b"GImage" in body or b"MicroVideo" in body)


def _find_eoi(data: bytes, sos: int, appended: bool = True) -> int:
    """End of the first image.

    From the structure when it says so: a file that ends with EOI and declares nothing after
    its first image (no MPF, no XMP container) is one image, so its EOI is the file's last two
    bytes, found without reading the 3 MB of scan data. Otherwise the first EOI after the scan
    (0xFF in scan data is always followed by 0x00 or a marker, so this is exact); MPO's
    further frames, a motion photo's video and other trailers follow it and are left out.
    """
    if not appended and data.endswith(b"\xff\xd9") and len(data) - 2 > sos:
        return len(data)
    return _scan_for_eoi(data, sos)


_EOI = re.compile(b"\xff\xd9")


def _scan_for_eoi(data: bytes, sos: int) -> int:
    m = _EOI.search(data, sos)  # the regex engine finds two bytes twice as fast as bytes.find here
    return len(data) if m is None else m.end()


def scan_data(data: bytes) -> bytes:
    """The compressed image data of a JPEG: from the first SOS to EOI."""
    for marker, start, end in jpeg_segments(data):
        if marker == "SOS":
            return data[start:end]
    raise ValueError("no scan")


def clean_jpeg(data: bytes, exif: bytes) -> bytes:
    """SOI, JFIF, our EXIF, the kept segments in order, then the scans copied byte for byte."""
    jfif, rest, scans = [], [], b""
    for marker, start, end in jpeg_segments(data):
        segment = data[start:end]
        if marker == "SOS":
            scans = segment
            break
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:  # APPn and COM: only the safe ones stay
            tag = _KEEP_APP.get(marker)
            if tag and segment[4 : 4 + len(tag)] == tag:
                (jfif if marker == 0xE0 else rest).append(segment)
            continue
        rest.append(segment)  # DQT, DHT, SOF, DRI...: the image's structure, untouched
    return b"".join([b"\xff\xd8", *jfif[:1], _app1(exif), *rest, scans])


def _app1(exif: bytes) -> bytes:
    if len(exif) + 2 > 0xFFFF:
        raise ValueError("EXIF too large")
    return b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif


def clean_png(data: bytes, exif: bytes | None) -> bytes:
    out = [data[:8]]
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if kind == b"IDAT" and exif:
            out.append(_png_chunk(b"eXIf", exif[6:]))
            exif = None
        if kind in _PNG_KEEP:
            out.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    return b"".join(out)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def clean_webp(data: bytes, exif: bytes | None) -> bytes:
    chunks = []
    pos = 12
    while pos + 8 <= len(data):
        kind = data[pos : pos + 4]
        (length,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        end = pos + 8 + length + (length & 1)
        if kind not in (b"EXIF", b"XMP "):
            chunks.append([kind, data[pos + 8 : pos + 8 + length]])
        pos = end
    if chunks and chunks[0][0] == b"VP8X":
        flags = bytearray(chunks[0][1])
        flags[0] &= ~0x0C & 0xFF  # clear the EXIF and XMP flags
        if exif:
            flags[0] |= 0x08
            chunks.append([b"EXIF", exif[6:]])
        chunks[0][1] = bytes(flags)
    body = b"".join(k + struct.pack("<I", len(v)) + v + (b"\x00" if len(v) & 1 else b"") for k, v in chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def heif_to_jpeg(data: bytes, exif: bytes) -> bytes:
    _register_heif()
    with Image.open(io.BytesIO(data)) as im:  # pillow-heif has applied the HEIF transforms
        out = io.BytesIO()
        im.convert("RGB").save(out, "JPEG", quality=95, subsampling=0, exif=exif,
                               icc_profile=im.info.get("icc_profile"))
    return out.getvalue()


# Per stored format: how it is cleaned, and the extension of what that gives.
_PUBLISHERS = {
    "JPEG": (clean_jpeg, "jpg"),
    "PNG": (clean_png, "png"),
    "WEBP": (clean_webp, "webp"),
    "HEIF": (heif_to_jpeg, "jpg"),
}


def _publisher(fmt: str):
    try:
        return _PUBLISHERS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt}") from None


def extension(fmt: str) -> str:
    """The extension a photo of this stored format has in the dataset (HEIF becomes JPEG)."""
    return _publisher(fmt)[1]


def publishable(data: bytes, fmt: str, exif: bytes) -> tuple[bytes, str]:
    """(bytes, extension) of the photo as it goes into the dataset."""
    clean, ext = _publisher(fmt)
    return clean(data, exif), ext
