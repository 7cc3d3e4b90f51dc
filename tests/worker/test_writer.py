"""The background writer: in order, bounded, errors surface, everything written before close returns."""

from __future__ import annotations

import threading
import time

import pytest

from worker.writer import BackgroundWriter


def test_writes_every_item_in_order_before_close_returns() -> None:
    written: list[int] = []

    def slow_write(item: int) -> None:
        time.sleep(0.01)
        written.append(item)

    with BackgroundWriter(slow_write, depth=2) as writer:
        for item in range(10):
            writer.submit(item)
    assert written == list(range(10))


def test_submit_blocks_while_the_queue_is_full() -> None:
    release = threading.Event()
    writer: BackgroundWriter[int] = BackgroundWriter(lambda _item: release.wait(5), depth=1)
    writer.submit(0)  # taken by the thread, which then waits
    time.sleep(0.05)
    writer.submit(1)  # fills the queue
    blocked = threading.Thread(target=writer.submit, args=(2,))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # bounded: the producer waits instead of piling up items
    release.set()
    blocked.join(5)
    assert not blocked.is_alive()
    writer.close()


def test_a_write_error_reaches_the_producer_and_later_items_are_not_written() -> None:
    written: list[int] = []

    def write(item: int) -> None:
        if item == 1:
            raise OSError("disk full")
        written.append(item)

    writer: BackgroundWriter[int] = BackgroundWriter(write, depth=1)
    with pytest.raises(OSError, match="disk full"):
        for item in range(50):
            writer.submit(item)
            time.sleep(0.005)
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    assert written == [0]


def test_a_failing_block_still_finishes_submitted_writes() -> None:
    written: list[int] = []
    with pytest.raises(RuntimeError, match="sampler failed"), BackgroundWriter(written.append, depth=4) as writer:
        writer.submit(1)
        writer.submit(2)
        raise RuntimeError("sampler failed")
    assert written == [1, 2]
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(3)


def test_threads_write_concurrently_and_all_items_land() -> None:
    running, peak, written = 0, 0, []
    lock = threading.Lock()

    def write(item: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1
            written.append(item)

    with BackgroundWriter(write, depth=4, threads=3) as writer:
        for item in range(12):
            writer.submit(item)
    assert sorted(written) == list(range(12))
    assert peak == 3  # three writes in flight at once, never more
    with pytest.raises(ValueError, match="threads"):
        BackgroundWriter(write, threads=0)
