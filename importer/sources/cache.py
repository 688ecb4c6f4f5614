"""Read-ahead cache over Source.read_at, for consumers that issue many small reads (qemu-img
reading a qcow2 over NBD asks for 64 KiB clusters). Reads are widened to aligned windows
fetched on a pool of connections, the next windows are prefetched, and concurrent misses on
the same window share one fetch. Memory is bounded by slots x window."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

__all__ = ["ReadAheadCache"]


class ReadAheadCache:
    def __init__(self, read_at: Callable[[int, int], bytes], size: int, *,
                 window: int = 2 << 20, slots: int = 24, workers: int = 4, ahead: int = 2) -> None:
        self._read_at = read_at
        self.size = size
        self._w = window
        self._slots = slots
        self._ahead = ahead
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fetch")
        self._windows: OrderedDict[int, Future[bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self.fetched = 0  # bytes fetched from the source

    def _fetch(self, index: int) -> bytes:
        start = index * self._w
        data = self._read_at(start, min(self._w, self.size - start))
        self.fetched += len(data)
        return data

    def _window(self, index: int) -> Future[bytes]:
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

    def read(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        first, last = offset // self._w, (offset + length - 1) // self._w
        futures = [self._window(i) for i in range(first, last + 1)]
        for i in range(last + 1, min(last + 1 + self._ahead, (self.size - 1) // self._w + 1)):
            self._window(i)
        out = bytearray()
        for i, fut in zip(range(first, last + 1), futures, strict=True):
            data = fut.result()
            lo = max(offset, i * self._w) - i * self._w
            hi = min(offset + length, (i + 1) * self._w) - i * self._w
            out += data[lo:hi]
        return bytes(out)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
