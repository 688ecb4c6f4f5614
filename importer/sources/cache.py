"""Read-ahead cache over Source.read_at, for consumers that issue many small reads (qemu-img
reading a qcow2 over NBD asks for 64 KiB clusters). Reads are widened to aligned windows
fetched on a pool of connections, the next windows are prefetched, and concurrent misses on
the same window share one fetch. Memory is bounded by slots x window."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

Chunk = bytes | bytearray | memoryview

__all__ = ["ReadAheadCache"]


class ReadAheadCache:
    DIRECT = 512 << 10  # reads at least this large bypass the windows
    def __init__(self, readinto_at: Callable[[int, bytearray], int], size: int, *,
                 window: int = 2 << 20, slots: int = 24, workers: int = 4, ahead: int = 2) -> None:
        self._readinto_at = readinto_at
        self.size = size
        self._w = window
        self._slots = slots
        self._ahead = ahead
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fetch")
        self._windows: OrderedDict[int, Future[bytearray]] = OrderedDict()
        self._lock = threading.Lock()
        self.fetched = 0  # bytes fetched from the source

    def _fetch(self, index: int) -> bytearray:
        start = index * self._w
        buf = bytearray(min(self._w, self.size - start))
        n = self._readinto_at(start, buf)
        if n != len(buf):
            raise OSError(5, f"short read at {start}: {n} of {len(buf)} bytes")
        self.fetched += n
        return buf

    def _window(self, index: int) -> Future[bytearray]:
        with self._lock:
            fut = self._windows.get(index)
            if fut is None:
                fut = self._pool.submit(self._fetch, index)
                self._windows[index] = fut
                while len(self._windows) > self._slots:
                    old_index, old = next(iter(self._windows.items()))
                    if not old.done():
                        break
                    del self._windows[old_index]
            else:
                self._windows.move_to_end(index)
            if fut.done() and fut.exception() is not None:  # do not cache failures
                del self._windows[index]
            return fut

    def read(self, offset: int, length: int) -> Chunk:
        """The bytes at [offset, offset+length); a view into the cached window when the range
        lies in one window (the usual case), so serving it copies nothing."""
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        if length >= self.DIRECT:
            # Large reads go straight to the source: the client keeps several in flight (qemu-img
            # -m 8), which become parallel ranged reads, and windows would only add waiting and
            # copying (measured: 1.25 s through windows, 0.87 s direct, local 1.2 GiB qcow2).
            buf = bytearray(length)
            n = self._readinto_at(offset, buf)
            if n != length:
                raise OSError(5, f"short read at {offset}: {n} of {length} bytes")
            self.fetched += n
            return buf
        first, last = offset // self._w, (offset + length - 1) // self._w
        futures = [self._window(i) for i in range(first, last + 1)]
        for i in range(last + 1, min(last + 1 + self._ahead, (self.size - 1) // self._w + 1)):
            self._window(i)
        if first == last:
            lo = offset - first * self._w
            return memoryview(futures[0].result())[lo : lo + length]
        out = bytearray()
        for i, fut in zip(range(first, last + 1), futures, strict=True):
            data = fut.result()
            lo = max(offset, i * self._w) - i * self._w
            hi = min(offset + length, (i + 1) * self._w) - i * self._w
            out += memoryview(data)[lo:hi]
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
