"""A bounded coverage-guided fuzz run (atheris, libFuzzer) over ``inspection.inspect``.

FUZZ_SECONDS (default 60) sets its length: `FUZZ_SECONDS=3600 pytest -m fuzz` for a long run.
Seeds: valid and hostile files of every format made by tests/hostile_files.py, plus every
file under tests/data/fuzz (past crashers and odd inputs, kept as regression tests below).
A crash, an input over -timeout seconds or over -rss_limit_mb fails the test and names the
input file; copy it into tests/data/fuzz.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from collector.intake import decoding, inspection, metadata
from collector.intake.checks import Rejection
from collector.platform import config

from . import hostile_files as H

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "fuzz"
KNOWN = {"corrupt", "too_many_pixels", "too_complex"}
SETTINGS = {s.name: s.default for s in config.SETTINGS}  # the decoder processes, as in production


def seeds() -> dict[str, bytes]:
    im = H.photo(64, 48)
    files = {
        "jpeg": H.encode(im, "JPEG", quality=80),
        "jpeg-progressive": H.encode(im, "JPEG", quality=80, progressive=True),
        "jpeg-exif": H.encode(im, "JPEG", exif=H.short_tiff_exif()),
        "png": H.encode(im, "PNG"),
        "png-16": H.png_bomb(64, 48, 16, 0),
        "png-palette": H.encode(im.convert("P"), "PNG"),
        "webp": H.encode(im, "WEBP", quality=70),
        "webp-lossless": H.webp_lossless_bomb(64, 48),
        "heic": H.heic(64, 64),
        "heic-dims": H.heic_with_dims(20000, 20000),
        "jpeg-dims": H.jpeg_with_dims(65000, 65000),
        "webp-bomb": H.webp_lossless_bomb(16383, 7320),
        "tiff-exif": b"II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00\x00",
    }
    files["heic-cut"] = H.truncated(files["heic"], 0.8)
    files["png-cut"] = H.truncated(files["png"], 0.8)
    return files


@pytest.mark.fuzz
def test_fuzz_the_inspect_path(tmp_path):
    seconds = int(os.environ.get("FUZZ_SECONDS", "60"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, data in seeds().items():
        (corpus / name).write_bytes(data)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    cmd = [sys.executable, str(HERE / "fuzz_target.py"), f"-max_total_time={seconds}", "-rss_limit_mb=1024",
           "-timeout=10", "-max_len=65536", f"-artifact_prefix={artifacts}/", "-print_final_stats=1",
           str(corpus), str(DATA)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 300)
    found = sorted(p.name for p in artifacts.iterdir())
    assert proc.returncode == 0 and not found, f"fuzzing found {found}:\n{proc.stderr[-4000:]}"
    assert "stat::number_of_executed_units" in proc.stderr


def _regressions():
    return sorted(p for p in DATA.iterdir() if p.is_file() and not p.name.startswith(".")) if DATA.is_dir() else []


def _inputs():
    """The kept fuzz inputs, and the seeds (never an empty set: an empty parametrisation would
    be a skip, which CI's COLLECTOR_STRICT_SKIPS refuses)."""
    kept = [pytest.param(p, id=p.name) for p in _regressions()]
    return kept + [pytest.param(data, id=f"seed-{name}") for name, data in sorted(seeds().items())]


@pytest.mark.parametrize("path", _inputs())
def test_past_fuzz_inputs_get_a_verdict(path, tmp_path):
    if isinstance(path, bytes):
        (tmp_path / "input").write_bytes(path)
        path = tmp_path / "input"
    data = path.read_bytes()
    for fmt in ("JPEG", "PNG", "WEBP", "HEIF"):
        try:
            decoding.precheck(data, fmt)
        except decoding.Refused as exc:
            assert exc.code in KNOWN
    result = inspection.inspect(path, data[:64], SETTINGS)
    if isinstance(result, Rejection):
        assert result.code in KNOWN | {"not_an_image", "unsupported_format"}
    metadata.read_metadata(data if data[:4] in (b"II*\x00", b"MM\x00*") else None)
