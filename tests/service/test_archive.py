"""The streamed ZIP writer: valid archives, stored entries, ZIP64 past 4 GiB, constant memory."""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Iterator

from service.archive import stream_zip

CHUNK = b"\x00" * (1 << 20)


def test_small_archive_round_trips_and_is_deterministic() -> None:
    entries = [("d/a.nii.gz", 7, [b"abc", b"defg"]), ("d/SHA256SUMS", 2, [b"ok"])]
    data = b"".join(stream_zip(entries))
    assert data == b"".join(stream_zip(entries))
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        assert bundle.testzip() is None
        assert bundle.read("d/a.nii.gz") == b"abcdefg"
        assert all(info.compress_type == zipfile.ZIP_STORED for info in bundle.infolist())


class _Sparse(io.RawIOBase):
    """A read-only view of an archive of which only the head and tail were kept (the middle is zeros)."""

    def __init__(self, head: bytes, tail: bytes, size: int) -> None:
        self.head, self.tail, self.size, self.pos = head, tail, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        end = min(self.pos + len(buffer), self.size)
        out = bytearray()
        for offset in range(self.pos, end):
            if offset < len(self.head):
                out.append(self.head[offset])
            elif offset >= self.size - len(self.tail):
                out.append(self.tail[offset - (self.size - len(self.tail))])
            else:
                out.append(0)
        buffer[: len(out)] = out
        self.pos = end
        return len(out)


def test_an_entry_over_4_gib_gets_zip64_records_in_bounded_memory() -> None:
    size = (4 << 30) + (5 << 20)  # 4 GiB + 5 MiB of zeros, never held in memory

    def chunks() -> Iterator[bytes]:
        for _ in range(size // len(CHUNK)):
            yield CHUNK

    head, tail, total, largest = b"", b"", 0, 0
    for block in stream_zip([("big.bin", size, chunks()), ("after.txt", 2, [b"hi"])]):
        if len(head) < 4096:
            head += block[: 4096 - len(head)]
        tail = (tail + block)[-4096:]
        total += len(block)
        largest = max(largest, len(block))
    assert largest <= 2 * len(CHUNK)  # the writer hands on what it gets: memory stays at one chunk
    with zipfile.ZipFile(_Sparse(head, tail, total)) as bundle:  # type: ignore[arg-type]
        big, after = bundle.infolist()
        assert big.file_size == size and big.compress_size == size
        crc = big.CRC
        assert crc == _crc_of_zeros(size)
        assert after.header_offset > 0xFFFFFFFF  # a ZIP64 offset
        assert bundle.read("after.txt") == b"hi"


def _crc_of_zeros(size: int) -> int:
    crc = 0
    for _ in range(size // len(CHUNK)):
        crc = zlib.crc32(CHUNK, crc)
    return crc
