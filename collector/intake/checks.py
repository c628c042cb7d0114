"""Small validation checks: each returns a Rejection (stable code + a sentence) or None."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from collector.intake.imaging import Fingerprint
from collector.intake.metadata import Metadata

if TYPE_CHECKING:
    from collector.intake.inspection import Inspection

# The stable reason codes, with the sentence a person sees. HTTP statuses live in web/api.py.
MESSAGES: dict[str, str] = {
    "empty_file": "The file is empty (0 bytes). Pick the photo again; the copy may not have finished.",
    "too_large": "The file is larger than {max_mb} MB. Send the photo as it came from the camera, or a smaller copy of it.",
    "not_an_image": "This file is not an image. Send a photo in JPEG, PNG, WebP or HEIC format.",
    "unsupported_format": "{found} images are not accepted. Send the photo as JPEG, PNG, WebP or HEIC.",
    "corrupt": "The image is damaged or incomplete and cannot be read. Send the original file again.",
    "corrupt_metadata": "The photo's EXIF metadata is damaged ({why}), so the file cannot be trusted. Send the original photo from your camera or phone.",
    "too_many_pixels": "The image declares {pixels} pixels, more than the {max_pixels} allowed. Send a normal camera photo.",
    "too_complex": "The image is built in a way that would take far more memory or time to read than any camera photo ({why}). Send the photo as it came from the camera.",
    "too_small": "The photo is {width}x{height} pixels; its shorter side must be at least {min_side} pixels. Send the original, not a thumbnail or a crop.",
    "low_quality": "The photo is {why}, so no plate can be read in it. Take the photo again.",
    "metadata_policy": "{why}",
    "duplicate": "This exact photo has already been uploaded by someone else. Each photo counts once; take a photo of another plate.",
    "near_duplicate": "This is the same picture as a photo already in the collection{whose} (re-saved, resized, recoloured or rotated). Take a photo of another plate.",
    "rejected_in_review": "This photo was rejected by the organisers in review, so it cannot count again. Take a photo of another plate.",
    "quota_cap": "You already have {max_photos} accepted photos, the most one person can add. Thank you!",
    "storage_unavailable": "The photo could not be saved just now. Nothing was kept; please try again in a minute.",
    "already_uploaded": "You had already uploaded this photo; it still counts once.",
}


@dataclass(frozen=True)
class Rejection:
    code: str
    message: str


# Message keys that are variants of a stable reason code.
CODE_OF = {"rejected_in_review": "duplicate"}


def reject(key: str, **details: Any) -> Rejection:
    return Rejection(CODE_OF.get(key, key), MESSAGES[key].format(**details))


def check_format(fmt: str | None, other: str | None) -> Rejection | None:
    if fmt:
        return None
    if other:
        return reject("unsupported_format", found=other)
    return reject("not_an_image")


def check_size(width: int, height: int, min_side: int) -> Rejection | None:
    if min(width, height) < min_side:
        return reject("too_small", width=width, height=height, min_side=min_side)
    return None


# Thresholds for obviously unusable photos, measured on the 32 real plate photos of the
# corpus (README "Quality checks"): they are conservative by a factor of 4 or more.
MIN_CONTRAST = 6.0  # std of luminance (0-255); real photos: 37 and up
MIN_BRIGHTNESS = 12.0  # mean luminance; real photos: 44 and up
MAX_BRIGHTNESS = 243.0  # real photos: 158 and below
MIN_SHARPNESS = 5.0  # Laplacian variance on the <=512 px image; real photos: 143 and up,
#                      Gaussian blur of sigma 4 px (per 1280 px): 7-50, sigma 8 px: 2-8


def check_quality(fp: Fingerprint) -> Rejection | None:
    if fp.contrast < MIN_CONTRAST:
        why = "blank or nearly one colour"
    elif fp.brightness < MIN_BRIGHTNESS:
        why = "almost completely dark"
    elif fp.brightness > MAX_BRIGHTNESS:
        why = "almost completely white (over-exposed)"
    elif fp.sharpness < MIN_SHARPNESS:
        why = "far too blurred"
    else:
        return None
    return reject("low_quality", why=why)


def check_metadata_sound(meta: Metadata) -> Rejection | None:
    if meta.damaged:
        return Rejection("corrupt", MESSAGES["corrupt_metadata"].format(why=meta.damaged))
    return None


def check_metadata_policy(meta: Metadata, captured_after: dt.date | None, require_exif: bool) -> Rejection | None:
    if meta.captured_at is None:
        if require_exif:
            return reject("metadata_policy", why="The photo has no capture date in its EXIF data. Send the original file from your camera or phone, not a screenshot or an edited copy.")
        return None
    if captured_after and meta.captured_at.date() < captured_after:
        return reject(
            "metadata_policy",
            why=f"The photo was taken on {meta.captured_at.date().isoformat()}; only photos taken on or after {captured_after.isoformat()} count. Take a new photo.",
        )
    return None


# The ordered checks of an inspected photo: the first rejection is the verdict. Each takes the
# inspection and the settings, so adding a check is one line here and its function above.
CHECKS: tuple[Callable[[Inspection, Mapping[str, Any]], Rejection | None], ...] = (
    lambda ins, s: check_metadata_sound(ins.metadata),
    lambda ins, s: check_size(ins.width, ins.height, s["MIN_SIDE"]),
    lambda ins, s: check_metadata_policy(ins.metadata, s["CAPTURED_AFTER"], s["REQUIRE_EXIF"]),
    lambda ins, s: check_quality(ins.fingerprint),
)


def first_rejection(ins: Inspection, settings: Mapping[str, Any]) -> Rejection | None:
    return next((r for check in CHECKS if (r := check(ins, settings)) is not None), None)
