"""Phone-like JPEGs for the upload page's tests and bench/upload_network.py: the synthetic plate
scenes of synthetic.py with sensor noise added, so they weigh what a phone's photos weigh (a
smooth synthetic scene compresses to a tenth of a real photo) and no two are near-duplicates."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .synthetic import plate_photo


def phone_photo(seed: int, size: tuple[int, int] = (1280, 960), noise: float = 10.0, quality: int = 90) -> bytes:
    """A JPEG with EXIF, like plate_photo(seed), with Gaussian noise of ``noise`` grey levels."""
    base = Image.open(io.BytesIO(plate_photo(seed, size=size)))
    exif = base.getexif()
    pixels = np.asarray(base.convert("RGB"), dtype=np.float32)
    rng = np.random.default_rng(seed)
    pixels += rng.normal(0.0, noise, pixels.shape).astype(np.float32)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=quality, exif=exif)
    return out.getvalue()
