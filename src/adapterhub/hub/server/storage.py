"""Blob storage for published archives: a local folder (embedded default) or an S3-compatible bucket.

Blobs are content-addressed (``blobs/sha256/ab/abcdef....tar.gz``), written atomically (a local write goes to a
temporary file that is renamed into place; an S3 PUT is atomic), and never rewritten.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from adapterhub.hub.errors import HubError

CHUNK = 1 << 16


def blob_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256[:2]}/{sha256}.tar.gz"


class Storage(Protocol):
    url: str

    def put_file(self, key: str, path: Path) -> None: ...

    def exists(self, key: str) -> bool: ...

    def iter_bytes(self, key: str) -> Iterator[bytes]: ...

    def local_path(self, key: str) -> Path | None: ...


class LocalStorage:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)
        (self.root / ".tmp").mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise HubError(f"storage key {key!r} escapes the storage folder")
        return path

    def put_file(self, key: str, path: Path) -> None:
        final = self._path(key)
        if final.exists():
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root / ".tmp", prefix="put-")
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                while chunk := src.read(CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
            dir_fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        with open(self._path(key), "rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


class S3Storage:
    """``s3://bucket/prefix``; the endpoint comes from ``--s3-endpoint`` or ``ADAPTERHUB_S3_ENDPOINT_URL``."""

    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as error:  # pragma: no cover - depends on the installation
            raise HubError("S3 storage needs boto3: pip install boto3") from error
        rest = url[len("s3://") :]
        self.bucket, _, prefix = rest.partition("/")
        if not self.bucket:
            raise HubError(f"S3 storage URL {url!r} has no bucket: use s3://BUCKET/PREFIX")
        self.prefix = prefix.strip("/")
        self.url = url
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=32),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put_file(self, key: str, path: Path) -> None:
        if self.exists(key):
            return
        self.client.upload_file(str(path), self.bucket, self._key(key))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        try:
            yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def local_path(self, key: str) -> Path | None:
        return None


def open_storage(url: str, endpoint_url: str | None = None) -> Storage:
    if url.startswith("s3://"):
        storage = S3Storage(url, endpoint_url)
        storage.ensure_bucket()
        return storage
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url:
        raise HubError(f"Unsupported storage URL {url!r}: use a folder path or s3://BUCKET/PREFIX.")
    return LocalStorage(url)
