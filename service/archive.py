"""A cohort's ZIP, laid out before a byte is read: every entry's size and CRC-32 are known (recorded when the
workers uploaded the files, :mod:`jobs.records`, and listed by finalisation in the cohort's archive index), so
the archive's length and the position of every byte are computable. That gives ``Content-Length``, ``Range``
(a resumed download reads only what it lacks) and ``HEAD``; the layout is deterministic, so the same cohort
always gives the same bytes.

The format is APPNOTE 6.3.x: stored entries (NIfTI files are gzip-compressed already), local headers carrying
their CRC and sizes (no data descriptors), ZIP64 extra fields where a size or an offset reaches 0xFFFFFFFF, and
ZIP64 end records where the entry count, the central directory's size or its offset need them. Entries are
streamed from object storage in chunks, so memory holds one chunk whatever the archive's size.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

#: Fixed entry timestamp (2020-01-01 00:00, DOS format): archives of the same cohort are byte-identical.
_DOS_DATE, _DOS_TIME = (2020 - 1980) << 9 | 1 << 5 | 1, 0
_LIMIT = 0xFFFFFFFF
_UTF8 = 0x800
_UNIX = 3
_MODE = 0o100644 << 16  # a regular file, rw-r--r--

#: Reads ``length`` bytes of an object from ``offset``: (key, offset, length) -> chunks.
ReadObject = Callable[[str, int, int], Iterator[bytes]]


@dataclass(frozen=True)
class ArchiveEntry:
    """One file of the archive: its name in the ZIP, size, CRC-32, and the object key its bytes are read from."""

    name: str
    size: int
    crc32: int
    key: str


def _zip64_extra(*values: int) -> bytes:
    return struct.pack(f"<HH{len(values)}Q", 1, 8 * len(values), *values) if values else b""


def _local_header(entry: ArchiveEntry, name: bytes) -> bytes:
    big = entry.size >= _LIMIT
    extra = _zip64_extra(entry.size, entry.size) if big else b""
    size = _LIMIT if big else entry.size
    return struct.pack("<4sHHHHHLLLHH", b"PK\x03\x04", 45 if big else 20, _UTF8, 0, _DOS_TIME, _DOS_DATE,
                       entry.crc32, size, size, len(name), len(extra)) + name + extra  # fmt: skip


def _central_header(entry: ArchiveEntry, name: bytes, offset: int) -> bytes:
    wide = ([entry.size, entry.size] if entry.size >= _LIMIT else []) + ([offset] if offset >= _LIMIT else [])
    extra = _zip64_extra(*wide)
    version = 45 if wide else 20
    size = _LIMIT if entry.size >= _LIMIT else entry.size
    return struct.pack("<4sBBHHHHHLLLHHHHHLL", b"PK\x01\x02", version, _UNIX, version, _UTF8, 0, _DOS_TIME,
                       _DOS_DATE, entry.crc32, size, size, len(name), len(extra), 0, 0, 0, _MODE,
                       min(offset, _LIMIT)) + name + extra  # fmt: skip


def _end_records(count: int, directory_size: int, directory_offset: int) -> bytes:
    wide = count >= 0xFFFF or directory_size >= _LIMIT or directory_offset >= _LIMIT
    out = b""
    if wide:
        record_offset = directory_offset + directory_size
        out += struct.pack("<4sQHHLLQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, directory_size,
                           directory_offset)  # fmt: skip
        out += struct.pack("<4sLQL", b"PK\x06\x07", 0, record_offset, 1)
    return out + struct.pack("<4sHHHHLLH", b"PK\x05\x06", 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
                             min(directory_size, _LIMIT), min(directory_offset, _LIMIT), 0)  # fmt: skip


class ZipLayout:
    """The byte layout of a stored ZIP of ``entries``: ``size``, and :meth:`read` of any byte range."""

    def __init__(self, entries: Sequence[ArchiveEntry]) -> None:
        #: (offset, bytes written as they are | an entry whose object's bytes go there)
        self._parts: list[tuple[int, bytes | ArchiveEntry]] = []
        offset = 0
        directory = []
        for entry in entries:
            name = entry.name.encode()
            header = _local_header(entry, name)
            directory.append(_central_header(entry, name, offset))
            self._parts.append((offset, header))
            offset += len(header)
            self._parts.append((offset, entry))
            offset += entry.size
        central = b"".join(directory)
        self._parts.append((offset, central + _end_records(len(entries), len(central), offset)))
        self.size = offset + len(central) + len(_end_records(len(entries), len(central), offset))

    def read(self, start: int, stop: int, read_object: ReadObject) -> Iterator[bytes]:
        """The archive's bytes ``start`` to ``stop`` (exclusive), objects read from ``read_object``."""
        if not 0 <= start <= stop <= self.size:
            raise ValueError(f"range {start}-{stop} is outside the archive's {self.size} bytes")
        for offset, part in self._parts:
            length = len(part) if isinstance(part, bytes) else part.size
            begin, end = max(start, offset), min(stop, offset + length)
            if begin >= end:
                continue
            if isinstance(part, bytes):
                yield part[begin - offset : end - offset]
            else:
                yield from read_object(part.key, begin - offset, end - begin)


def subject_of(name: str) -> str | None:
    """The participant an archive entry belongs to (its first ``sub-*`` path component, derivatives included);
    ``None`` for a dataset-level file (participants.tsv, dataset_description.json, SHA256SUMS, ...)."""
    return next((part for part in name.split("/")[:-1] if part.startswith("sub-")), None)


def archive_part(entries: Sequence[ArchiveEntry], part: int, parts: int) -> list[ArchiveEntry]:
    """Part ``part`` of ``parts`` (1-based) of an archive: every dataset-level file, and the files of a contiguous
    ``1/parts`` share of the subjects in participant order (whole subjects, never split). Unzipped together, the
    parts give exactly the whole archive's files; the split depends only on the cohort, so a part's bytes are
    the same on every request."""
    subjects = sorted({s for entry in entries if (s := subject_of(entry.name)) is not None})
    if not 1 <= part <= parts <= max(len(subjects), 1):
        raise ValueError(f"part {part} of {parts} is not a part of an archive of {len(subjects)} subjects")
    mine = set(subjects[(part - 1) * len(subjects) // parts : part * len(subjects) // parts])
    return [entry for entry in entries if subject_of(entry.name) in mine or subject_of(entry.name) is None]


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A single ``Range: bytes=first-last`` (or ``bytes=first-``, or the suffix ``bytes=-count``) as (start, stop
    exclusive) within ``size`` bytes (RFC 9110 section 14); ``None`` where the whole content is the answer (no
    range, several ranges, another unit, a malformed one: each is ignored).

    Raises:
        ValueError: a well-formed range that no byte satisfies (the caller answers 416).
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, dash, last = header[len("bytes=") :].strip().partition("-")
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == "") or first == last == "":
        return None
    if first == "":  # the last ``count`` bytes
        count = int(last)
        if count == 0 or size == 0:
            raise ValueError(f"bytes=-{count} of {size}")
        return max(size - count, 0), size
    start = int(first)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        raise ValueError(f"bytes={start}- of {size}")
    return start, size if last == "" else min(int(last) + 1, size)
