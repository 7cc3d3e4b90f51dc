"""What a worker records of each subject as it uploads it, so finalisation never reads an image back.

A subject's record holds the sha256, size and CRC-32 of every file of it under the BIDS prefix, computed from the
very bytes uploaded (the CRC lets the archive lay out its ZIP without reading them: :mod:`service.archive`),
and the sidecar fields participants.tsv is made from (:func:`models.dataset.bids.sidecar_essentials`).
It lives in Redis (``brainsynth:cohort:{id}:records``, one hash field per subject, a few hundred bytes) for a fast
finalisation, and in object storage beside the dataset (``records/{pid}.json``, outside the BIDS tree, never in
the archive) for when Redis lost it.

A record is written *before* the subject's sidecar (the marker that it is stored or measured), and the sidecar
bytes it names are the ones uploaded next: so wherever a sidecar marks a subject, its record describes the bytes
that are stored, a redelivered task included (it writes the same files and the same record again, or, for a later
attempt, replaces both).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from jobs.state import CohortState, cohort_key
from jobs.storage import ObjectStore, cohort_prefix

#: (sha256 hex, size in bytes, CRC-32) of one file.
Digest = tuple[str, int, int]
#: Digests by path relative to the BIDS root.
FileDigests = dict[str, Digest]


def digest(content: bytes) -> Digest:
    """A file's sha256 (hex), size and CRC-32."""
    return hashlib.sha256(content).hexdigest(), len(content), zlib.crc32(content)


class StreamDigest:
    """The same, of bytes that arrive in chunks (a file read back as it streams)."""

    def __init__(self) -> None:
        self._sha, self._size, self._crc = hashlib.sha256(), 0, 0

    def update(self, chunk: bytes) -> None:
        self._sha.update(chunk)
        self._size += len(chunk)
        self._crc = zlib.crc32(chunk, self._crc)

    def digest(self) -> Digest:
        return self._sha.hexdigest(), self._size, self._crc


def record_key(tenant: str, cohort_id: str, participant_id: str) -> str:
    """The durable copy of a subject's record in object storage (outside the BIDS tree)."""
    return cohort_prefix(tenant, cohort_id) + f"records/{participant_id}.json"


def archive_index_key(tenant: str, cohort_id: str) -> str:
    """Finalisation's list of the archive's files, in archive order, with their sizes and CRC-32
    (:mod:`service.archive` lays the ZIP out from it); outside the BIDS tree, written just before the manifest."""
    return cohort_prefix(tenant, cohort_id) + "archive.json"


def _records_key(cohort_id: str) -> str:
    return f"{cohort_key(cohort_id)}:records"


class SubjectRecords:
    """Subjects' records of one deployment: Redis first, object storage as the durable copy."""

    def __init__(self, state: CohortState, store: ObjectStore) -> None:
        self.state, self.store = state, store

    def put(
        self,
        tenant: str,
        cohort_id: str,
        participant_id: str,
        essentials: Mapping[str, Any],
        files: Mapping[str, bytes],
        *,
        merge: bool = False,
    ) -> None:
        """Record ``files`` (relative path -> the bytes about to be, or just, uploaded) and the sidecar's
        ``essentials``; with ``merge`` the subject's earlier files stay recorded (a measurement adds its
        derivatives and replaces the sidecar), otherwise the record is replaced (a new attempt)."""
        recorded: FileDigests = {}
        if merge:
            earlier = self.get(tenant, cohort_id, participant_id)
            recorded = dict(earlier["files"]) if earlier else {}
        recorded.update({relative: digest(content) for relative, content in files.items()})
        text = json.dumps({"sidecar": dict(essentials), "files": recorded}, separators=(",", ":"), sort_keys=True)
        self.store.put_bytes(record_key(tenant, cohort_id, participant_id), text.encode(), "application/json")
        self.state.redis.hset(_records_key(cohort_id), participant_id, text)

    def get(self, tenant: str, cohort_id: str, participant_id: str) -> dict[str, Any] | None:
        """One subject's record, or ``None`` where none was written."""
        raw = self.state.redis.hget(_records_key(cohort_id), participant_id)
        if raw is None:
            raw = self.store.get_bytes_if_present(record_key(tenant, cohort_id, participant_id))
        return None if raw is None else _parse(raw)

    def load(self, tenant: str, cohort_id: str, participants: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The records of ``participants``: one Redis round trip, then object storage for those Redis lacks."""
        wanted = list(participants)
        found = {
            key.decode(): _parse(value) for key, value in self.state.redis.hgetall(_records_key(cohort_id)).items()
        }
        for participant in wanted:
            if participant not in found:
                raw = self.store.get_bytes_if_present(record_key(tenant, cohort_id, participant))
                if raw is not None:
                    found[participant] = _parse(raw)
        return {participant: found[participant] for participant in wanted if participant in found}


def _parse(raw: bytes | str) -> dict[str, Any]:
    record = json.loads(raw)
    files = record["files"].items()
    record["files"] = {relative: (value[0], int(value[1]), int(value[2])) for relative, value in files}
    return record
