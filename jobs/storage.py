"""Object storage for cohorts: deterministic keys, retried transient errors, streaming reads, presigning.

Works against any S3 server through the ``minio`` client (MinIO in docker-compose, SeaweedFS locally).
Shared by the workers (writes) and the API (reads, listings, presigned URLs); imports no torch.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TypeVar

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

log = logging.getLogger(__name__)
T = TypeVar("T")

#: S3 error codes worth retrying (the server is busy or briefly unwell).
_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "XMinioServerNotInitialized"}


class StorageError(RuntimeError):
    """Object storage failed for a reason retrying will not fix, or kept failing past the retry budget."""


def cohort_prefix(tenant: str, cohort_id: str) -> str:
    """Every object of a cohort lives under ``tenants/{tenant}/cohorts/{cohort_id}/``."""
    return f"tenants/{tenant}/cohorts/{cohort_id}/"


_MISSING_CODES = ("NoSuchKey", "NoSuchObject", "ResourceNotFound")


def _read_whole(response: urllib3.BaseHTTPResponse) -> bytes:
    """A GET's body, with the connection returned to the pool."""
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def _is_transient(err: Exception) -> bool:
    if isinstance(err, S3Error):
        return err.code in _TRANSIENT_CODES
    return isinstance(err, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


class ObjectStore:
    """One bucket on an S3 server.

    Args:
        endpoint: ``host:port`` the workers and the API reach.
        access_key, secret_key: credentials (always required).
        bucket: the bucket holding every tenant's cohorts.
        secure: HTTPS.
        public_endpoint: ``host:port`` users reach, used to sign presigned URLs (signatures are bound to
            the host); defaults to ``endpoint``.
        retry_seconds: how long transient errors are retried, with exponential backoff from 0.1 s.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        public_endpoint: str | None = None,
        region: str = "us-east-1",
        retry_seconds: float = 30.0,
    ) -> None:
        if not access_key or not secret_key:
            raise StorageError("S3 credentials are required")
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=30.0), retries=False)
        self.client = Minio(endpoint, access_key, secret_key, secure=secure, region=region, http_client=http)
        self.signer = Minio(public_endpoint or endpoint, access_key, secret_key, secure=secure, region=region)
        self.bucket = bucket
        self.retry_seconds = retry_seconds

    def _retry(self, what: str, action: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.1
        while True:
            try:
                return action()
            except Exception as err:  # classified below; anything else is re-raised unchanged
                if not _is_transient(err):
                    raise
                if time.monotonic() + delay > deadline:
                    raise StorageError(
                        f"{what}: object storage unavailable for {self.retry_seconds:.0f} s ({err})"
                    ) from err
                log.warning("%s: transient storage error, retrying in %.1f s: %s", what, delay, err)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist."""

        def create() -> None:
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)

        self._retry(f"create bucket {self.bucket}", create)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Write one object (a retried write replaces it whole: S3 puts are atomic)."""
        self._retry(
            f"put {key}",
            lambda: self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type),
        )

    def get_bytes(self, key: str) -> bytes:
        """Read one object whole (small objects: manifests, tables)."""

        return self._retry(f"get {key}", lambda: _read_whole(self.client.get_object(self.bucket, key)))

    def get_bytes_if_present(self, key: str) -> bytes | None:
        """Read one small object whole, or ``None`` when there is no such key."""

        def read() -> bytes | None:
            try:
                return _read_whole(self.client.get_object(self.bucket, key))
            except S3Error as err:
                if err.code in _MISSING_CODES:
                    return None
                raise

        return self._retry(f"get {key}", read)

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""

        def stat() -> bool:
            try:
                self.client.stat_object(self.bucket, key)
            except S3Error as err:
                if err.code in _MISSING_CODES:
                    return False
                raise
            return True

        return self._retry(f"stat {key}", stat)

    def size(self, key: str) -> int:
        """Size of ``key`` in bytes."""
        return int(self._retry(f"stat {key}", lambda: self.client.stat_object(self.bucket, key)).size or 0)

    def stream(self, key: str, chunk_size: int = 1024 * 1024, offset: int = 0, length: int = 0) -> Iterator[bytes]:
        """Yield the object's bytes in chunks, holding one chunk in memory at a time; from ``offset``, and only
        ``length`` of them when it is given (a ranged GET)."""
        response = self._retry(
            f"get {key}", lambda: self.client.get_object(self.bucket, key, offset=offset, length=length)
        )
        try:
            yield from response.stream(chunk_size)
        finally:
            response.close()
            response.release_conn()

    def list_objects(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size in bytes) of every object under ``prefix``, sorted by key."""
        return self._retry(
            f"list {prefix}",
            lambda: sorted(
                (o.object_name, int(o.size or 0)) for o in self.client.list_objects(self.bucket, prefix, recursive=True)
            ),
        )

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix``, sorted."""
        return [key for key, _ in self.list_objects(prefix)]

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many there were."""
        keys = self.list_keys(prefix)
        if keys:
            errors = self._retry(
                f"delete {prefix}",
                lambda: list(self.client.remove_objects(self.bucket, [DeleteObject(k) for k in keys])),
            )
            if errors:
                raise StorageError(f"delete {prefix}: {len(errors)} objects could not be deleted ({errors[0]})")
        return len(keys)

    def presigned_get(self, key: str, expires_seconds: int = 300) -> str:
        """A GET URL for ``key`` signed for the public endpoint, valid ``expires_seconds`` (at least 5)."""
        if not 5 <= expires_seconds <= 7 * 24 * 3600:
            raise StorageError(f"presigned URL expiry must be 5 s to 7 days, got {expires_seconds} s")
        return self.signer.presigned_get_object(self.bucket, key, expires=timedelta(seconds=expires_seconds))
