"""Small stream adapters shared by the pipelines."""

from __future__ import annotations

import io
import queue
import threading
from typing import Any

from .progress import Progress

__all__ = ["CountingStream", "ThreadedReader"]


class CountingStream(io.RawIOBase):
    """Counts (and optionally hashes) the bytes exactly as received from the source."""

    def __init__(self, raw: io.RawIOBase, progress: Progress, hasher: Any = None) -> None:
        self._raw = raw
        self._progress = progress
        self.hasher = hasher
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._raw.readinto(b) or 0
        if n:
            if self.hasher is not None:
                self.hasher.update(memoryview(b)[:n])
            self.count += n
            self._progress.update(n)
        return n

    def drain(self) -> None:
        """Read to the end so the checksum covers every byte (tar padding, trailing data)."""
        buf = bytearray(1 << 20)
        while self.readinto(buf):
            pass

    def close(self) -> None:
        self._raw.close()
        super().close()


_EOF = object()


class ThreadedReader(io.RawIOBase):
    """Reads `raw` in a background thread so network I/O overlaps decompression and writing.
    Memory is bounded by depth x chunk bytes."""

    def __init__(self, raw: io.RawIOBase, chunk: int = 1 << 20, depth: int = 8) -> None:
        self._raw = raw
        self._q: queue.Queue[Any] = queue.Queue(depth)
        self._cur = memoryview(b"")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(chunk,), daemon=True,
                                        name="reader")
        self._thread.start()

    def _run(self, chunk: int) -> None:
        try:
            while not self._stop.is_set():
                buf = bytearray(chunk)
                n = self._raw.readinto(buf) or 0
                if n == 0:
                    break
                self._put(memoryview(buf)[:n])
            self._put(_EOF)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._cur:
            item = self._q.get()
            if item is _EOF:
                self._q.put(_EOF)
                return 0
            if isinstance(item, BaseException):
                self._q.put(item)
                raise item
            self._cur = item
        n = min(len(b), len(self._cur))
        b[:n] = self._cur[:n]
        self._cur = self._cur[n:]
        return n

    def close(self) -> None:
        self._stop.set()
        self._raw.close()  # first: wakes the thread if it is blocked reading
        self._thread.join(timeout=2)
        super().close()
