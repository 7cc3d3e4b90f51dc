"""A ZIP of a cohort streamed from object storage in constant memory (ZIP64 for any size, files stored).

``zipfile`` writes to a non-seekable sink with data descriptors after each entry; the sink hands every
written block on to the HTTP response, so memory holds one object chunk plus zipfile's own buffers.
NIfTI files are already gzip-compressed, so entries are stored, not deflated.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Iterator

#: Fixed entry timestamp: archives of the same cohort are byte-identical.
_DATE_TIME = (2020, 1, 1, 0, 0, 0)


class _Sink(io.RawIOBase):
    """A write-only, non-seekable file that collects what zipfile writes until it is drained."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._parts.append(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def seekable(self) -> bool:
        return False

    def seek(self, *_args: object) -> int:
        raise io.UnsupportedOperation("the archive is streamed")

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def stream_zip(entries: Iterable[tuple[str, int, Iterable[bytes]]]) -> Iterator[bytes]:
    """Yield a ZIP archive of ``(name, size, chunks)`` entries as it is written.

    ``size`` (known from the object listing) lets zipfile choose ZIP64 headers up front for large entries;
    the central directory gets ZIP64 records when offsets or counts need them.
    """
    sink = _Sink()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, size, chunks in entries:
            info = zipfile.ZipInfo(name, date_time=_DATE_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            info.file_size = size
            with archive.open(info, mode="w", force_zip64=size >= zipfile.ZIP64_LIMIT) as member:
                for chunk in chunks:
                    member.write(chunk)
                    if block := sink.drain():
                        yield block
            if block := sink.drain():
                yield block
    if block := sink.drain():
        yield block
