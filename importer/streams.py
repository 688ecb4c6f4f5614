"""Small stream adapters shared by the pipelines."""

from __future__ import annotations

import io
import queue
import threading
from typing import Any

from .progress import Progress

__all__ = [
    "CountingStream",
    "HeadThenStream",
    "PositionedReader",
    "ThreadedReader",
    "drain",
    "read_full",
]

#: what format detection sniffs (formats/detect.py SNIFF_BYTES): read on demand, before a plan
#: says whether the rest is read in order at all
DETECTION_HEAD = 64 << 10


def read_full(stream: io.RawIOBase, buf: memoryview) -> int:
    """Fill buf from the stream; fewer bytes only at its end."""
    n = 0
    while n < len(buf):
        got = stream.readinto(buf[n:])
        if not got:
            break
        n += got
    return n


def drain(stream: io.RawIOBase) -> None:
    """Read a stream to its end, discarding the bytes (checks that run at EOF then run)."""
    buf = bytearray(1 << 20)
    while stream.readinto(buf):
        pass


class PositionedReader(io.RawIOBase):
    """Base of the read-only, seekable files over other things (a source's read_at, a blob, a
    forward-only stream) that libraries such as tarfile and python-xz want: each keeps its
    position in `_pos` and implements seek and readinto."""

    _pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos


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
        drain(self)

    def close(self) -> None:
        self._raw.close()
        super().close()


class HeadThenStream(io.RawIOBase):
    """A random-access source's bytes in order: the head by ranged reads, the rest (if a plan
    wants it) by one streaming request from there. Detection needs only the head, and a plan
    that then reads at random would otherwise leave a whole-object GET half read: wasted
    transfer, and a deadlock on a server that answers one request at a time."""

    HEAD = DETECTION_HEAD

    def __init__(self, source: Any, size: int, head: bytes = b"") -> None:
        """`head`: the source's first bytes, already read (by the OVA probe): served from here
        rather than asked for again."""
        self._src = source
        self._size = size
        self._pos = 0
        self._stream: io.RawIOBase | None = None
        self._head = head

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("read of a closed stream")
        if self._pos < len(self._head):
            n = min(len(b), len(self._head) - self._pos)
            b[:n] = self._head[self._pos:self._pos + n]
            self._pos += n
            return n
        if self._stream is None and self._pos < min(self.HEAD, self._size):
            want = min(len(b), self.HEAD - self._pos, self._size - self._pos)
            n = int(self._src.readinto_at(self._pos, memoryview(b)[:want]))
            self._pos += n
            return n
        if self._stream is None:
            if self._pos >= self._size:
                return 0
            stream = self._src.open_stream(self._pos)
            if self.closed:  # closed meanwhile by another thread: never left open
                stream.close()
                raise ValueError("read of a closed stream")
            self._stream = stream
        n = self._stream.readinto(b) or 0
        self._pos += n
        return n

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        super().close()


_EOF = object()


class ThreadedReader(io.RawIOBase):
    """Reads `raw` in a background thread so network I/O overlaps decompression and writing.
    Buffers come from a fixed pool and are reused: a fresh buffer per chunk makes the kernel
    map and zero new pages every time, which cost more than the copy itself (measured: 8.7 s
    of system time for a 4 GiB local import, 1.2 s with the pool). Memory: depth x chunk.

    Until `run_ahead()` it reads only what the consumer asks for: detection needs the head,
    and a plan that then reads at random would waste the read-ahead (8 MiB of download)."""

    def __init__(self, raw: io.RawIOBase, chunk: int = 1 << 20, depth: int = 8) -> None:
        self._raw = raw
        self._go = threading.Event()
        self._want = threading.Event()
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._chunk = chunk
        self._unmade = depth  # buffers are made when first needed (a small import needs one)
        self._q: queue.Queue[Any] = queue.Queue()
        self._cur: bytearray | None = None
        self._pos = 0
        self._end = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="reader")
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._go.is_set() and not self._want.wait(timeout=0.2):
                    continue
                if self._stop.is_set():  # close() wakes a waiting thread: it must not read
                    break
                if self._unmade and self._free.empty():
                    self._unmade -= 1
                    buf = bytearray(self._chunk)
                else:
                    try:
                        buf = self._free.get(timeout=0.2)
                    except queue.Empty:
                        continue
                self._want.clear()  # only now: a demand is never lost to a busy pool
                # on demand (detection) a small read: a random-access plan reads the rest itself
                n = self._raw.readinto(buf if self._go.is_set() else memoryview(buf)[:DETECTION_HEAD]) or 0
                if n == 0:
                    break
                self._q.put((buf, n))
            self._q.put(_EOF)
        except BaseException as exc:  # handed to the consumer, raised there
            self._q.put(exc)

    def readable(self) -> bool:
        return True

    def run_ahead(self) -> None:
        """From now on read ahead of the consumer (a plan that reads the whole stream)."""
        self._go.set()

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._cur is None:
            if not self._go.is_set() and self._q.empty():
                self._want.set()
            item = self._q.get()
            if item is _EOF:
                self._q.put(item)  # later calls see the same end
                return 0
            if isinstance(item, BaseException):
                self._q.put(item)
                raise item
            self._cur, self._end = item
            self._pos = 0
        n = min(len(b), self._end - self._pos)
        b[:n] = memoryview(self._cur)[self._pos : self._pos + n]
        self._pos += n
        if self._pos == self._end:
            self._free.put(self._cur)
            self._cur = None
        return n

    def close(self) -> None:
        self._stop.set()
        self._want.set()  # wakes the thread if it waits for a demand
        self._raw.close()  # first: wakes the thread if it is blocked reading
        self._thread.join(timeout=2)
        super().close()
