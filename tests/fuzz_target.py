"""The atheris fuzz target over intake's pure stage, ``inspection.inspect``: sniff, structural
pre-check, decode (in this process, so our parsing code is covered), EXIF, fingerprint.

    python tests/fuzz_target.py [libFuzzer flags] CORPUS_DIR...

Run by tests/test_fuzz.py with -max_total_time, -rss_limit_mb and -timeout, so a crash (any
exception but a refusal with a known code), a memory blow-up or a slow input fails the test,
and libFuzzer writes the input to -artifact_prefix.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.intake import decoding, imaging, inspection, metadata  # noqa: E402
from collector.intake.checks import Rejection  # noqa: E402


def _instrument(*modules) -> None:
    """Coverage for our own parsing code only: its functions' bytecode, patched in place
    (instrument_imports cannot: the collector package imports these modules itself)."""
    import inspect

    for module in modules:
        for _, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == module.__name__:
                atheris.instrument_func(fn)


_instrument(decoding, imaging, metadata, inspection)

KNOWN = {"corrupt", "too_many_pixels", "too_complex"}
VERDICTS = KNOWN | {"not_an_image", "unsupported_format"}
# Decoding in this process: the decoder processes would hide our parsing code from coverage.
SETTINGS = {"MAX_PIXELS": 120_000_000, "DECODE_PROCESSES": 0, "DECODE_MEMORY_MB": 320, "DECODE_CPU_SECONDS": 4}
FORMATS = ("JPEG", "PNG", "WEBP", "HEIF")
_fd, _name = tempfile.mkstemp(prefix="fuzz-", suffix=".bin")
os.close(_fd)
PATH = Path(_name)


def one_input(data: bytes) -> None:
    # Every pre-check on every input: they are pure Python and must only ever refuse.
    for fmt in FORMATS:
        try:
            decoding.precheck(data, fmt)
        except decoding.Refused as exc:
            assert exc.code in KNOWN, exc.code
    PATH.write_bytes(data)
    result = inspection.inspect(PATH, data[:64], SETTINGS)
    if isinstance(result, Rejection):
        assert result.code in VERDICTS, result.code
    else:
        assert max(result.small.size) <= decoding.HASH_SIDE and len(result.fingerprint.pdq) == 64
    exif = data if data[:4] in (b"II*\x00", b"MM\x00*") else None
    meta = metadata.read_metadata(exif)  # never raises, whatever the bytes, TIFF blocks included
    assert 1 <= meta.orientation <= 8


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    try:
        atheris.Fuzz()
    finally:
        PATH.unlink(missing_ok=True)
