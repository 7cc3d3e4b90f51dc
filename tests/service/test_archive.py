"""The ZIP layout: valid archives (zipfile, Info-ZIP's unzip), stored entries, any byte range equal to the same
bytes of the whole, ZIP64 past 4 GiB in constant memory, and RFC 9110 range parsing."""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Iterator

import pytest

from service.archive import ArchiveEntry, ZipLayout, archive_part, parse_range, subject_of

CHUNK = b"\x00" * (1 << 20)


def _layout(objects: dict[str, bytes]) -> tuple[ZipLayout, bytes]:
    entries = [ArchiveEntry(f"d/{key}", len(data), zlib.crc32(data), key) for key, data in objects.items()]
    layout = ZipLayout(entries)
    data = b"".join(
        layout.read(0, layout.size, lambda key, offset, length: iter([objects[key][offset : offset + length]]))
    )
    return layout, data


def test_small_archive_round_trips_is_deterministic_and_every_range_is_its_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import shutil
    import subprocess

    objects = {"a.nii.gz": b"abcdefg", "ü.json": b"{}", "empty": b"", "SHA256SUMS": b"ok\n"}
    layout, data = _layout(objects)
    assert len(data) == layout.size and data == _layout(objects)[1]
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        assert bundle.testzip() is None
        assert bundle.read("d/a.nii.gz") == b"abcdefg" and bundle.read("d/ü.json") == b"{}"
        assert all(info.compress_type == zipfile.ZIP_STORED for info in bundle.infolist())
        assert [info.filename for info in bundle.infolist()][-1] == "d/SHA256SUMS"
    read = lambda key, offset, length: iter([objects[key][offset : offset + length]])  # noqa: E731
    for start in range(0, layout.size, 5):
        for stop in range(start, layout.size + 1, 9):
            assert b"".join(layout.read(start, stop, read)) == data[start:stop]
    with pytest.raises(ValueError):
        list(layout.read(0, layout.size + 1, read))
    if shutil.which("unzip"):
        (tmp_path / "a.zip").write_bytes(data)
        tested = subprocess.run(["unzip", "-t", str(tmp_path / "a.zip")], capture_output=True, text=True)
        assert tested.returncode == 0 and "No errors detected" in tested.stdout


def test_ranges_parse_as_rfc_9110_says() -> None:
    assert parse_range(None, 100) is None and parse_range("bytes=0-99", 100) == (0, 100)
    assert parse_range("bytes=10-19", 100) == (10, 20) and parse_range("bytes=90-", 100) == (90, 100)
    assert parse_range("bytes=-10", 100) == (90, 100) and parse_range("bytes=-500", 100) == (0, 100)
    assert parse_range("bytes=50-500", 100) == (50, 100)  # clipped to the content
    for ignored in ("items=0-1", "bytes=0-1,5-6", "bytes=a-b", "bytes=5-2", "bytes=-", "bytes"):
        assert parse_range(ignored, 100) is None  # answered whole
    for unsatisfiable in ("bytes=100-", "bytes=100-200", "bytes=-0"):
        with pytest.raises(ValueError):
            parse_range(unsatisfiable, 100)


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

    def read(key: str, offset: int, length: int) -> Iterator[bytes]:
        if key == "after":
            yield b"hi"[offset : offset + length]
            return
        while length > 0:
            yield CHUNK[: min(length, len(CHUNK))]
            length -= min(length, len(CHUNK))

    big = ArchiveEntry("big.bin", size, _crc_of_zeros(size), "big")
    layout = ZipLayout([big, ArchiveEntry("after.txt", 2, zlib.crc32(b"hi"), "after")])
    head, tail, total, largest = b"", b"", 0, 0
    for block in layout.read(0, layout.size, read):
        if len(head) < 4096:
            head += block[: 4096 - len(head)]
        tail = (tail + block)[-4096:]
        total += len(block)
        largest = max(largest, len(block))
    assert total == layout.size and largest <= len(CHUNK)  # memory stays at one chunk
    with zipfile.ZipFile(_Sparse(head, tail, total)) as bundle:  # type: ignore[arg-type]
        big, after = bundle.infolist()
        assert big.file_size == size and big.compress_size == size
        assert _crc_of_zeros(size) == big.CRC
        assert after.header_offset > 0xFFFFFFFF  # a ZIP64 offset
        assert bundle.read("after.txt") == b"hi"


def _crc_of_zeros(size: int) -> int:
    crc = 0
    for _ in range(size // len(CHUNK)):
        crc = zlib.crc32(CHUNK, crc)
    return crc


def test_parts_split_whole_subjects_contiguously_and_each_carries_the_dataset_files() -> None:
    root = "cohort-x/"
    names = ["dataset_description.json", "participants.tsv", "derivatives/samseg/dataset_description.json"]
    for i in range(1, 8):
        names += [f"sub-{i:06d}/anat/sub-{i:06d}_T1w.nii.gz", f"sub-{i:06d}/anat/sub-{i:06d}_T1w.json",
                  f"derivatives/samseg/sub-{i:06d}/anat/sub-{i:06d}_dseg.nii.gz"]  # fmt: skip
    names.append("SHA256SUMS")
    entries = [ArchiveEntry(root + name, 10, 0, name) for name in names]
    assert subject_of(root + "derivatives/samseg/sub-000003/anat/x.nii.gz") == "sub-000003"
    assert subject_of(root + "participants.tsv") is None
    parts = [archive_part(entries, part, 3) for part in (1, 2, 3)]
    subjects = [sorted({subject_of(e.name) for e in p} - {None}) for p in parts]
    assert subjects == [["sub-000001", "sub-000002"], ["sub-000003", "sub-000004"],
                        ["sub-000005", "sub-000006", "sub-000007"]]  # fmt: skip
    for part in parts:
        assert part[-1].name.endswith("SHA256SUMS")
        assert {e.name for e in part if subject_of(e.name) is None} == {root + n for n in names if "sub-" not in n}
        # a subject's files travel together: its derivative with its image
        for subject in {subject_of(e.name) for e in part} - {None}:
            assert sum(subject_of(e.name) == subject for e in part) == 3
    assert sorted({e.name for p in parts for e in p}) == sorted(e.name for e in entries)
    assert archive_part(entries, 1, 1) == entries
    for part, count in ((0, 3), (4, 3), (1, 8)):
        with pytest.raises(ValueError):
            archive_part(entries, part, count)
