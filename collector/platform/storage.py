"""Where photo bytes live: one small interface, a local folder and an S3 implementation.

Keys are derived from the SHA-256 of the content, so a key never changes meaning: ``put``
never overwrites (an existing object already holds the same bytes) and a crash can at worst
leave an object that no row references, which ``storage-check`` finds.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol


class StorageUnavailable(Exception):
    """The store cannot be reached or refused the write: the caller should retry later."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified: dt.datetime


def photo_key(sha256: str, ext: str) -> str:
    return f"originals/{sha256[:2]}/{sha256[2:4]}/{sha256}.{ext}"


def thumb_key(sha256: str) -> str:
    return f"thumbs/{sha256[:2]}/{sha256[2:4]}/{sha256}.jpg"


class Storage(Protocol):
    # Both return True when this call created the object, False when it was already there
    # (keys are content-addressed: the same key always holds the same bytes).
    def put_file(self, key: str, path: Path, sha256_hex: str) -> bool: ...
    def put_bytes(self, key: str, data: bytes) -> bool: ...
    def open(self, key: str) -> BinaryIO: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str = "") -> Iterator[StoredObject]: ...
    # Half-written objects a killed writer left behind (never referenced by a row).
    def temporaries(self) -> Iterator[StoredObject]: ...


class LocalStorage:
    """A folder. Writes go to a temporary file, are fsynced, then linked into place."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad storage key {key!r}")
        return self.root / key

    def put_file(self, key: str, path: Path, sha256_hex: str) -> bool:
        with open(path, "rb") as fh:
            return self._write(key, fh)

    def put_bytes(self, key: str, data: bytes) -> bool:
        return self._write(key, io.BytesIO(data))

    def _write(self, key: str, src: BinaryIO) -> bool:
        final = self._path(key)
        if final.exists():
            return False
        created = False
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                try:
                    os.link(tmp, final)  # atomic, and never replaces an existing object
                    created = True
                except FileExistsError:
                    pass
            finally:
                os.unlink(tmp)
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StorageUnavailable(f"cannot write {key}: {exc.strerror or exc}") from exc
        return created

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink()

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        yield from self._walk(prefix, temporary=False)

    def temporaries(self) -> Iterator[StoredObject]:
        """``.tmp-*`` files: writes that a killed process never linked into place."""
        yield from self._walk("", temporary=True)

    def _walk(self, prefix: str, temporary: bool) -> Iterator[StoredObject]:
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".tmp-") != temporary:
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    try:
                        st = full.stat()
                    except FileNotFoundError:  # a write finished or was taken back meanwhile
                        continue
                    yield StoredObject(key, st.st_size, dt.datetime.fromtimestamp(st.st_mtime, dt.UTC))


class S3Storage:
    """Any S3-compatible store through boto3 (credentials and region from boto3's usual chain)."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                retries={"mode": "standard", "max_attempts": 4},
                connect_timeout=5,
                read_timeout=30,
            ),
        )

    def __repr__(self) -> str:
        return f"S3Storage(s3://{self.bucket}/{self.prefix})"

    def _errors(self):
        from botocore.exceptions import BotoCoreError, ClientError

        return BotoCoreError, ClientError

    def put_file(self, key: str, path: Path, sha256_hex: str) -> bool:
        with open(path, "rb") as fh:
            return self._put(key, fh, sha256_hex)

    def put_bytes(self, key: str, data: bytes) -> bool:
        return self._put(key, io.BytesIO(data), hashlib.sha256(data).hexdigest())

    def _put(self, key: str, body: BinaryIO, sha256_hex: str) -> bool:
        from botocore.exceptions import ClientError

        if self.exists(key):
            return False
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.prefix + key,
                Body=body,
                ChecksumAlgorithm="SHA256",  # the store verifies the bytes against our hash
                ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256_hex)).decode(),
                IfNoneMatch="*",  # never overwrite; a racing writer holds the same bytes
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in {"PreconditionFailed", "ConditionalRequestConflict"}:
                return False
            raise StorageUnavailable(f"object store refused {key}: {code or exc}") from exc
        except self._errors() as exc:
            raise StorageUnavailable(f"object store unreachable: {exc}") from exc
        return True

    def open(self, key: str) -> BinaryIO:
        with self._missing_as_file_not_found(key):
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"]

    def exists(self, key: str) -> bool:
        try:
            with self._missing_as_file_not_found(key):
                self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except FileNotFoundError:
            return False
        return True

    @contextmanager
    def _missing_as_file_not_found(self, key: str) -> Iterator[None]:
        """S3's "no such key" as FileNotFoundError; any other failure as StorageUnavailable."""
        from botocore.exceptions import ClientError

        try:
            yield
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                raise FileNotFoundError(key) from exc
            raise StorageUnavailable(str(exc)) from exc
        except self._errors() as exc:
            raise StorageUnavailable(f"object store unreachable: {exc}") from exc

    def delete(self, key: str) -> None:
        if not self.exists(key):
            raise FileNotFoundError(key)
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def temporaries(self) -> Iterator[StoredObject]:
        """None: a PUT is atomic in S3, so a killed writer leaves nothing half-written."""
        return iter(())

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for obj in page.get("Contents", []):
                    yield StoredObject(obj["Key"][len(self.prefix):], obj["Size"], obj["LastModified"])
        except self._errors() as exc:
            raise StorageUnavailable(f"object store unreachable: {exc}") from exc


def open_storage(url: str, endpoint_url: str | None = None) -> Storage:
    """``s3://bucket/prefix`` or a folder path."""
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not bucket:
            raise SystemExit(f"storage URL {url!r} names no bucket")
        return S3Storage(bucket, prefix, endpoint_url)
    if "://" in url and not url.startswith("file://"):
        raise SystemExit(f"unsupported storage URL {url!r}: use a folder or s3://BUCKET/PREFIX")
    return LocalStorage(url.removeprefix("file://"))
