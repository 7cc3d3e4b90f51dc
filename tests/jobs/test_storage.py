"""Object storage against a real S3 server (SeaweedFS): bytes round trip, listing, presigning, retries."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from minio.error import S3Error

from jobs.storage import ObjectStore, StorageError, cohort_prefix
from service.localstack import S3Server, start_s3
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY


def _store(server: S3Server, bucket: str | None = None, **kwargs: object) -> ObjectStore:
    store = ObjectStore(server.endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, bucket or f"b-{uuid.uuid4().hex[:12]}", **kwargs)
    store.ensure_bucket()
    return store


def test_bytes_round_trip_list_and_delete(s3_server: S3Server) -> None:
    store = _store(s3_server)
    prefix = cohort_prefix("lab-a", "c1")
    payload = bytes(range(256)) * 5000  # 1.28 MB, streamed in chunks
    store.put_bytes(prefix + "sub-000001/anat/sub-000001_T1w.nii.gz", payload)
    store.put_bytes(prefix + "participants.tsv", b"participant_id\n", "text/tab-separated-values")
    assert store.get_bytes(prefix + "participants.tsv") == b"participant_id\n"
    assert b"".join(store.stream(prefix + "sub-000001/anat/sub-000001_T1w.nii.gz", 64 * 1024)) == payload
    assert store.size(prefix + "sub-000001/anat/sub-000001_T1w.nii.gz") == len(payload)
    assert store.exists(prefix + "participants.tsv") and not store.exists(prefix + "missing")
    assert store.list_keys(prefix) == [prefix + "participants.tsv", prefix + "sub-000001/anat/sub-000001_T1w.nii.gz"]
    assert store.list_keys(cohort_prefix("lab-b", "c1")) == []
    assert store.delete_prefix(prefix) == 2
    assert store.list_keys(prefix) == []


def test_credentials_are_enforced(s3_server: S3Server) -> None:
    store = _store(s3_server)
    store.put_bytes("k", b"v")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://{s3_server.endpoint}/{store.bucket}/k", timeout=5)
    assert info.value.code == 403
    wrong = ObjectStore(s3_server.endpoint, S3_ACCESS_KEY, "not-the-secret", store.bucket, retry_seconds=1)
    with pytest.raises(S3Error, match=r"SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        wrong.get_bytes("k")
    with pytest.raises(StorageError, match="credentials"):
        ObjectStore(s3_server.endpoint, "", "", "x")


def test_presigned_url_works_then_expires(s3_server: S3Server) -> None:
    store = _store(s3_server)
    store.put_bytes("sub.nii.gz", b"NIfTI bytes")
    url = store.presigned_get("sub.nii.gz", expires_seconds=5)
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.read() == b"NIfTI bytes"
    time.sleep(7)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(url, timeout=5)
    assert info.value.code == 403
    with pytest.raises(StorageError, match="expiry"):
        store.presigned_get("sub.nii.gz", expires_seconds=1)


def test_presigned_url_is_signed_for_the_public_endpoint(s3_server: S3Server) -> None:
    store = _store(s3_server, public_endpoint="files.example.org:9000")
    assert store.presigned_get("k", 60).startswith(f"http://files.example.org:9000/{store.bucket}/k?")


def test_s3_down_for_a_few_seconds_is_retried(tmp_path: Path) -> None:
    server = start_s3(tmp_path / "s3", S3_ACCESS_KEY, S3_SECRET_KEY)
    try:
        store = _store(server, retry_seconds=60)
        store.put_bytes("before", b"1")
        server.stop()
        restarted: list[S3Server] = []

        def restart_later() -> None:
            time.sleep(3)
            restarted.append(start_s3(tmp_path / "s3", S3_ACCESS_KEY, S3_SECRET_KEY, port_base=server.port_base))

        thread = threading.Thread(target=restart_later)
        thread.start()
        started = time.monotonic()
        store.put_bytes("during", b"2")  # blocks, retrying, until the server is back
        assert time.monotonic() - started >= 2.5
        thread.join()
        assert store.get_bytes("before") == b"1" and store.get_bytes("during") == b"2"
    finally:
        server.stop()
        for again in restarted:
            again.stop()


def test_retry_budget_ends_in_a_clear_error(tmp_path: Path) -> None:
    server = start_s3(tmp_path / "s3", S3_ACCESS_KEY, S3_SECRET_KEY)
    store = _store(server, retry_seconds=1.5)
    server.stop()
    with pytest.raises(StorageError, match="object storage unavailable"):
        store.put_bytes("k", b"v")
