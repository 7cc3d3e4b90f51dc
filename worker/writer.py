"""A background writer: subjects are encoded and uploaded on background threads while the sampler goes on.

gzip (zlib) and the S3 client release the GIL, as does torch, so encoding and uploading subject i overlaps
decoding subject i + 1, and several writer threads compress several subjects at once (a full-size subject
takes about 0.7 s to gzip on one core, longer than a GPU should take to sample it). The queue is bounded,
so a slow store makes the sampler wait instead of piling up volumes in memory. The task waits for every
write before it returns (and is acknowledged), so the redelivery guarantees of ``acks_late`` are unchanged.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

Item = TypeVar("Item")

_DONE = object()


class BackgroundWriter(Generic[Item]):
    """Calls ``write(item)`` for each submitted item on ``threads`` background threads (in order with one).

    ``submit`` blocks while ``depth`` items wait; it raises the writer's first error as soon as it is known.
    ``close`` (or leaving the ``with`` block) waits for every submitted item, then raises that error if any.
    """

    def __init__(
        self, write: Callable[[Item], None], depth: int = 2, threads: int = 1, name: str = "brainsynth-writer"
    ) -> None:
        if depth < 1 or threads < 1:
            raise ValueError(f"depth and threads must be at least 1, got depth {depth}, threads {threads}")
        self._write = write
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._error_lock = threading.Lock()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{index}", daemon=True) for index in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not _DONE:
            if self._error is None:  # after a failure, drain without writing
                try:
                    self._write(item)  # type: ignore[arg-type]
                except BaseException as err:  # handed to the submitting thread
                    with self._error_lock:
                        self._error = self._error or err

    def _finish(self) -> None:
        self._closed = True
        for _ in self._threads:
            self._queue.put(_DONE)
        for thread in self._threads:
            thread.join()

    def submit(self, item: Item) -> None:
        if self._closed:
            raise RuntimeError("the writer is closed")
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def close(self) -> None:
        """Wait for every submitted item to be written; raise the first write error."""
        if not self._closed:
            self._finish()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> BackgroundWriter[Item]:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
            return
        # The block failed: finish what was submitted (each write is whole and idempotent), keep its error.
        self._finish()
