"""The plate reader: photo in, plates out (box, text, score).

``read_plates(image)`` takes the photo as displayed (orientation applied) and returns every
text line that looks like a number plate, with its box in that image's pixels. Behind it is
RapidOCR (PP-OCR detection and recognition, ONNX, Apache-2.0) with the models that ship inside
its wheel, loaded once per process from those files: nothing is downloaded, ever.

What "looks like a plate" means was measured on ``../shared/corpus`` (bench/plates.py):
a line of 4 to 10 letters and digits, with at least one of each, recognised with a score of at
least ``MIN_SCORE``, in a box at least ``MIN_ASPECT`` times wider than tall. Two stacked lines
of similar width (the Indian and motorcycle two-line plates, "KA01" over "AH3886") are merged
into one text before the rule is applied.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

READ_SIDE = 1280  # the photo is read at this long side (measured: bench/plates.py)
MIN_SCORE = 0.7
MIN_ASPECT = 1.5
MIN_LEN, MAX_LEN = 4, 10
_NOT_ALNUM = re.compile(r"[^0-9A-Z]")


@dataclass(frozen=True)
class Plate:
    box: tuple[int, int, int, int]  # x, y, w, h in the oriented photo's pixels
    text: str  # normalised: upper case letters and digits only
    score: float


@dataclass(frozen=True)
class Line:
    """One text line as the OCR saw it (box in the photo's pixels)."""

    box: tuple[int, int, int, int]
    text: str
    score: float


_LOOKS_DIGIT = {"O": "0", "I": "1", "Q": "0", "D": "0"}


def normalise(text: str) -> str:
    """Upper case, letters and digits only ("ka-01 ah 3886" -> "KA01AH3886").

    Plates print letters and digits in groups; in a group of three or more digits with one
    letter that looks like a digit (O, I, Q, D), that letter is the OCR's slip ("12O4" -> "1204").
    The other way round (a 0 among letters) is left alone: "UH1-F0F" is a real plate.
    """
    groups = re.split(r"[\s\-\u2010-\u2015.\u00b7:]+", (text or "").upper())
    out = []
    for g in groups:
        g = _NOT_ALNUM.sub("", g)
        letters = [i for i, c in enumerate(g) if c.isalpha()]
        if len(g) >= 4 and len(letters) == 1 and g[letters[0]] in _LOOKS_DIGIT:
            g = g[: letters[0]] + _LOOKS_DIGIT[g[letters[0]]] + g[letters[0] + 1:]
        out.append(g)
    return "".join(out)


def plate_like(text: str) -> bool:
    """4-10 letters and digits with at least one of each; or 7-8 digits (many US plates).
    Shorter runs of digits alone are too often prices, house numbers or phone fragments."""
    if not MIN_LEN <= len(text) <= MAX_LEN:
        return False
    if text.isdigit():
        return 7 <= len(text) <= 8
    return any(c.isdigit() for c in text) and any(c.isalpha() for c in text)


def _union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return x0, y0, x1 - x0, y1 - y0


def _stacked(top: Line, bottom: Line) -> bool:
    """``bottom`` sits right under ``top`` and the two have about the same width and place."""
    (tx, ty, tw, th), (bx, by, bw, bh) = top.box, bottom.box
    if not (0.45 <= tw / max(bw, 1) <= 2.2):
        return False
    if not (0.5 <= th / max(bh, 1) <= 2.0):
        return False
    gap = by - (ty + th)
    if not (-0.35 * min(th, bh) <= gap <= 0.6 * max(th, bh)):
        return False
    overlap = min(tx + tw, bx + bw) - max(tx, bx)
    return overlap >= 0.6 * min(tw, bw)


def plates_from_lines(lines: list[Line]) -> list[Plate]:
    """Apply the plate rule to OCR lines, merging two-line plates first. Pure: tested alone."""
    lines = [Line(ln.box, normalise(ln.text), ln.score) for ln in lines]
    lines = [ln for ln in lines if ln.text and ln.box[2] > 0 and ln.box[3] > 0]
    used: set[int] = set()
    plates: list[Plate] = []
    # Two-line plates: pair each line with the closest line stacked under it, when the two
    # together read as a plate. The pair's box is the union, its score the lower of the two.
    order = sorted(range(len(lines)), key=lambda i: lines[i].box[1])
    for i in order:
        if i in used:
            continue
        top = lines[i]
        best = None
        for j in order:
            if j == i or j in used or lines[j].box[1] <= top.box[1]:
                continue
            bottom = lines[j]
            merged = top.text + bottom.text
            if (_stacked(top, bottom) and plate_like(merged) and len(top.text) <= 6 and len(bottom.text) <= 7
                    and min(top.score, bottom.score) >= MIN_SCORE):
                if best is None or bottom.box[1] < lines[best].box[1]:
                    best = j
        if best is not None:
            bottom = lines[best]
            box = _union(top.box, bottom.box)
            if box[2] * 1.0 >= 0.8 * box[3]:  # a two-line plate is roughly square or wider
                used.update((i, best))
                plates.append(Plate(box, top.text + bottom.text, round(min(top.score, bottom.score), 4)))
    for ln in _side_by_side(lines, used):
        if ln is None:
            continue
        x, y, w, h = ln.box
        if plate_like(ln.text) and ln.score >= MIN_SCORE and w >= MIN_ASPECT * h:
            plates.append(Plate(ln.box, ln.text, round(ln.score, 4)))
    plates.sort(key=lambda p: (-p.score, p.box))
    return plates


def _side_by_side(lines: list[Line], used: set[int]) -> list[Line | None]:
    """Join pieces of one line that the detector cut in two ("VW" + "4X4-WP" -> "VW4X4WP"),
    when the pieces share a baseline and height, nearly touch, and only the joined text reads as a
    plate. Lines already used by a two-line plate come back as None."""
    out: list[Line | None] = [None if i in used else ln for i, ln in enumerate(lines)]
    order = sorted((i for i in range(len(lines)) if i not in used), key=lambda i: lines[i].box[0])
    for a in order:
        left = out[a]
        if left is None:
            continue
        for b in order:
            right = out[b]
            if b == a or right is None or right.box[0] <= left.box[0]:
                continue
            (lx, ly, lw, lh), (rx, ry, _rw, rh) = left.box, right.box
            gap = rx - (lx + lw)
            vover = min(ly + lh, ry + rh) - max(ly, ry)
            if (0.75 <= lh / rh <= 1.33 and vover >= 0.7 * min(lh, rh) and -0.2 * lh <= gap <= 0.6 * max(lh, rh)
                    and plate_like(left.text + right.text) and not (plate_like(left.text) and plate_like(right.text))
                    and min(left.score, right.score) >= MIN_SCORE):
                out[a] = Line(_union(left.box, right.box), left.text + right.text, min(left.score, right.score))
                out[b] = None
                break
    return out


class Reader:
    """One OCR engine; calls are serialised (RapidOCR keeps per-call state on the engine)."""

    def __init__(self, side: int = READ_SIDE, threads: int = 1):
        import rapidocr
        from rapidocr import RapidOCR

        models = Path(rapidocr.__file__).resolve().parent / "models"
        det, rec, cls = (models / "PP-OCRv6_det_small.onnx", models / "PP-OCRv6_rec_small.onnx",
                         models / "ch_ppocr_mobile_v2.0_cls_mobile.onnx")
        for f in (det, rec, cls):
            if not f.is_file():  # never let the library fall back to downloading
                raise RuntimeError(f"rapidocr's model file is missing from its wheel: {f}")
        self.side = side
        self._lock = threading.Lock()
        self._engine = RapidOCR(params={
            "Global.log_level": "error",
            "Global.use_cls": False,  # plates are upright in an oriented photo
            "Global.max_side_len": max(side, 2000),
            "Det.model_path": str(det),
            # Detection at the reading side at most: the default ("min" 736) scales small
            # photos up to 736 px on their short side, costing up to 4x the CPU for nothing.
            "Det.limit_type": "max",
            "Det.limit_side_len": side,
            "Rec.model_path": str(rec),
            "Cls.model_path": str(cls),
            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        })

    def lines(self, image: Image.Image) -> list[Line]:
        """Every text line the OCR finds, boxes in ``image``'s pixels."""
        im = image if image.mode == "RGB" else image.convert("RGB")
        scale = 1.0
        if max(im.size) > self.side:
            scale = max(im.size) / self.side
            im = im.resize((max(1, round(im.width / scale)), max(1, round(im.height / scale))),
                           Image.Resampling.BILINEAR, reducing_gap=2.0)
        bgr = np.ascontiguousarray(np.asarray(im)[:, :, ::-1])
        with self._lock:
            out = self._engine(bgr, use_det=True, use_cls=False, use_rec=True)
        if out.boxes is None or out.txts is None:
            return []
        lines = []
        for quad, text, score in zip(out.boxes, out.txts, out.scores, strict=True):
            xs, ys = [p[0] for p in quad], [p[1] for p in quad]
            x0, y0 = max(0.0, min(xs)) * scale, max(0.0, min(ys)) * scale
            x1, y1 = min(im.width, max(xs)) * scale, min(im.height, max(ys)) * scale
            box = (round(x0), round(y0), max(1, round(x1 - x0)), max(1, round(y1 - y0)))
            lines.append(Line(box, str(text), float(score)))
        return lines

    def read(self, image: Image.Image) -> list[Plate]:
        return plates_from_lines(self.lines(image))


_reader: Reader | None = None
_reader_lock = threading.Lock()


def reader() -> Reader:
    """The process's one reader, built on first use (about 2 s of CPU and 115 MB)."""
    global _reader
    if _reader is None:
        with _reader_lock:
            if _reader is None:
                _reader = Reader()
    return _reader


def read_plates(image: Image.Image) -> list[Plate]:
    """Plates in ``image`` (the photo as displayed), best first; [] when none is found."""
    return reader().read(image)


_heif_lock = threading.Lock()
_heif_registered = False


def _register_heif() -> None:
    global _heif_registered
    with _heif_lock:
        if not _heif_registered:
            import pillow_heif

            pillow_heif.register_heif_opener(thumbnails=False)
            _heif_registered = True


def open_photo(data: bytes, fmt: str, orientation: int, max_pixels: int) -> Image.Image:
    """A stored photo as displayed, decoded small enough to read: JPEG in draft mode at the
    reading side, orientation applied. Only photos intake accepted get here, so they are valid
    images of an allowed format; the pixel limit is still checked before decoding."""
    import io

    from . import imaging

    if fmt == "HEIF":
        _register_heif()
    formats = {"JPEG": ["JPEG", "MPO"], "PNG": ["PNG"], "WEBP": ["WEBP"], "HEIF": ["HEIF"]}[fmt]
    with Image.open(io.BytesIO(data), formats=formats) as im:
        if im.width * im.height > max_pixels:
            raise ValueError(f"{im.width}x{im.height} is over the pixel limit")
        if fmt == "JPEG":
            im.draft("RGB", (READ_SIDE, READ_SIDE))
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im, dtype=np.float64)
            top = arr.max() if arr.size else 0
            im = Image.fromarray(np.clip(arr * (255.0 / top if top > 255 else 1.0), 0, 255).astype(np.uint8), "L")
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        rgb = im.convert("RGB")
    if max(rgb.size) > READ_SIDE:  # PNG and WebP have no draft mode: reduce once, here
        rgb.thumbnail((READ_SIDE, READ_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return rgb if fmt == "HEIF" else imaging.orient(rgb, orientation)
