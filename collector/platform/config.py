"""Settings as data: one table read from ``COLLECTOR_*`` environment variables.

Each setting is declared once, with its default and help text; the README's settings table is
checked against this list by ``tests/test_docs.py``. Nothing is read at import time:
``load_settings`` is called by ``create_app``, and returns a frozen ``Settings``: a running
app's settings cannot change, and tests override them through ``create_app(test_config)``.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX = "COLLECTOR_"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _date(value: str) -> dt.date | None:
    return dt.date.fromisoformat(value.strip()) if value.strip() else None


def _plate_policy(value: str) -> str:
    v = value.strip().lower()
    if v not in ("review", "hold", "off"):
        raise ValueError(f"expected review, hold or off, got {value!r}")
    return v


def _positive_int(value: str) -> int:
    n = int(value)
    if n <= 0:
        raise ValueError(f"expected a positive whole number, got {value!r}")
    return n


@dataclass(frozen=True)
class Setting:
    name: str  # without the prefix
    default: Any
    help: str
    parse: Callable[[str], Any] = str

    @property
    def env(self) -> str:
        return PREFIX + self.name


SETTINGS: list[Setting] = [
    Setting("DATA_DIR", None, "Data root for the embedded defaults (database, photos, secret key). Default: `storage/` in the project folder."),
    Setting("DATABASE_URL", None, "Any SQLAlchemy URL, e.g. `postgresql+psycopg://user@host/db`. Default: the SQLite file `storage/collector.sqlite3`."),
    Setting("STORAGE_URL", None, "Where photo bytes go: a folder path, or `s3://BUCKET/PREFIX`. Default: the folder `storage/photos`."),
    Setting("S3_ENDPOINT_URL", None, "Endpoint of an S3-compatible server (MinIO, Ceph, moto...). Default: AWS. Credentials and region come from boto3's usual chain."),
    Setting("SECRET_KEY", None, "Session and token signing key. Default: generated once and kept in `storage/secret_key` with mode 0600."),
    Setting("QUOTA", 25, "Accepted photos that pay the meetup fee.", _positive_int),
    Setting("MAX_PHOTOS", 100, "Cap of accepted photos per contributor (`quota_cap` beyond it).", _positive_int),
    Setting("MAX_UPLOAD_MB", 25, "Largest file accepted, in MiB (`too_large` beyond it).", _positive_int),
    Setting("MIN_SIDE", 480, "Shorter side in pixels, after orientation (`too_small` below it).", _positive_int),
    Setting("MAX_PIXELS", 120_000_000, "Decompression-bomb guard: most pixels an image may declare (`too_many_pixels`).", _positive_int),
    Setting("DECODE_PROCESSES", 1, "Decoder processes per web worker: at most this many images are decoded at once per worker, each with the memory and CPU limits below. 0 decodes in the worker itself, without those limits (not for production).", int),
    Setting("DECODE_MEMORY_MB", 320, "Memory limit (RLIMIT_DATA) of each decoder process, in MiB; the full-size formats' pixel limits follow from it (`too_many_pixels`).", _positive_int),
    Setting("DECODE_CPU_SECONDS", 6, "Most CPU seconds one decode may use (less for smaller images: 0.5 s plus 3x the measured cost of its pixels) before its decoder process is killed (`too_complex`).", _positive_int),
    Setting("CAPTURED_AFTER", None, "ISO date; photos whose EXIF capture date is older are refused (`metadata_policy`).", _date),
    Setting("REQUIRE_EXIF", False, "Refuse photos without an EXIF capture date (`metadata_policy`).", _bool),
    Setting("NEAR_DUPLICATE_DISTANCE", 31, "Largest PDQ Hamming distance (of 256 bits) that counts as the same picture; at most 31 (the index is built for it).", int),
    Setting("LICENCE", "CC BY 4.0", "Licence contributors agree to for the dataset."),
    Setting("LICENCE_URL", "https://creativecommons.org/licenses/by/4.0/", "Link to the licence text shown at registration."),
    Setting("COOKIE_SECURE", False, "Send session cookies only over HTTPS. Turn on when served behind TLS.", _bool),
    Setting("DB_POOL_SIZE", None, "Pooled database connections per process. Default: gunicorn's `--threads` + 2 (8 + 2 without it), so no request thread ever waits for a connection.", _positive_int),
    Setting("UPLOAD_EXPIRY_HOURS", 24, "Hours an unfinished resumable upload is kept after its last byte before `flask uploads clean` (or the next upload) removes it.", _positive_int),
    Setting("MAX_OPEN_UPLOADS", 30, "Unfinished resumable uploads one account may have at once (`too_many_uploads` beyond it).", _positive_int),
    Setting("PLATE_POLICY", "review", "What a photo where no plate was found does to its credit: `review` (keeps it, goes to the review queue), `hold` (the credit waits for an organiser) or `off` (plates are not read).", _plate_policy),
    Setting("DISTINCT_PLATES", False, "Only distinct plate texts count toward the fee: a second photo of a plate the contributor already sent earns no credit.", _bool),
    Setting("LOGIN_MAX_FAILURES", 10, "Failed log-ins for one email from one address within 15 minutes before that pair must wait (`rate_limited`); an address gets 30 times as many for unknown emails, an account 10 times as many across addresses.", _positive_int),
    Setting("REGISTRATIONS_PER_ADDRESS", 30, "Registrations from one address within 10 minutes (`rate_limited` beyond). An address may be a whole wifi.", _positive_int),
    Setting("UPLOADS_PER_MINUTE", 60, "Upload requests per account per minute (`rate_limited` beyond), counted before the body is read.", _positive_int),
    Setting("MAX_API_TOKENS", 10, "Active API tokens per account.", _positive_int),
    Setting("TRUSTED_PROXIES", 0, "Number of reverse proxies in front of the app whose `X-Forwarded-For`/`-Proto` are believed. 0: the socket's address is the client's.", int),
    Setting("HEADER_TIMEOUT", 10, "Seconds a connection has to send a request's headers (production server).", _positive_int),
    Setting("BODY_TIMEOUT", 300, "Seconds a request has to send its whole body; also closed after 30 s without a byte (production server).", _positive_int),
]


@dataclass(frozen=True, slots=True)
class Settings:
    """One typed attribute per entry of ``SETTINGS`` (which holds the defaults, help and parsers),
    after ``load_settings`` has filled in the defaults that depend on ``DATA_DIR``.

    Read as ``settings.QUOTA`` or ``settings["QUOTA"]``; assigning raises ``FrozenInstanceError``.
    """

    DATA_DIR: Path
    DATABASE_URL: str
    STORAGE_URL: str
    S3_ENDPOINT_URL: str | None
    SECRET_KEY: str
    QUOTA: int
    MAX_PHOTOS: int
    MAX_UPLOAD_MB: int
    MIN_SIDE: int
    MAX_PIXELS: int
    DECODE_PROCESSES: int
    DECODE_MEMORY_MB: int
    DECODE_CPU_SECONDS: int
    CAPTURED_AFTER: dt.date | None
    REQUIRE_EXIF: bool
    NEAR_DUPLICATE_DISTANCE: int
    LICENCE: str
    LICENCE_URL: str
    COOKIE_SECURE: bool
    DB_POOL_SIZE: int | None
    UPLOAD_EXPIRY_HOURS: int
    MAX_OPEN_UPLOADS: int
    PLATE_POLICY: str
    DISTINCT_PLATES: bool
    LOGIN_MAX_FAILURES: int
    REGISTRATIONS_PER_ADDRESS: int
    UPLOADS_PER_MINUTE: int
    MAX_API_TOKENS: int
    TRUSTED_PROXIES: int
    HEADER_TIMEOUT: int
    BODY_TIMEOUT: int

    def __getitem__(self, name: str) -> Any:
        if name not in self.__slots__:
            raise KeyError(name)
        return getattr(self, name)


def load_settings(environ: dict[str, str] | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Defaults, then environment, then explicit overrides (tests). Names have no prefix."""
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    unknown = set(overrides) - {s.name for s in SETTINGS}
    if unknown:
        raise KeyError(f"unknown settings: {sorted(unknown)}")
    values = {s.name: overrides[s.name] if s.name in overrides else _from_environ(s, environ) for s in SETTINGS}

    data_dir = Path(values["DATA_DIR"] or PROJECT_ROOT / "storage")
    values["DATA_DIR"] = data_dir
    if not values["DATABASE_URL"]:
        values["DATABASE_URL"] = f"sqlite:///{data_dir / 'collector.sqlite3'}"
    if not values["STORAGE_URL"]:
        values["STORAGE_URL"] = str(data_dir / "photos")
    if not values["SECRET_KEY"]:
        values["SECRET_KEY"] = _stored_secret(data_dir / "secret_key")
    if not 0 <= values["NEAR_DUPLICATE_DISTANCE"] <= 31:
        raise SystemExit(f"{PREFIX}NEAR_DUPLICATE_DISTANCE must be between 0 and 31")
    return Settings(**values)


def _from_environ(s: Setting, environ: dict[str, str]) -> Any:
    raw = environ.get(s.env)
    if raw is None or raw == "":
        return s.default
    try:
        return s.parse(raw)
    except ValueError as exc:
        raise SystemExit(f"{s.env}: {exc}") from None


def _stored_secret(path: Path) -> str:
    """Generate the key once, with mode 0600, and reuse it; safe when several workers start at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process may be between create and write
            key = path.read_text().strip()
            if key:
                return key
            time.sleep(0.02)
        raise SystemExit(f"{path} is empty: delete it or set {PREFIX}SECRET_KEY") from None
    with os.fdopen(fd, "w") as fh:
        key = secrets.token_hex(32)
        fh.write(key + "\n")
    return key
