"""The sparse raw writer: raw bytes to the target, all-zero blocks skipped.

Zero blocks become holes in a fresh file (it was truncated, so they already read as zeros) and
zero ranges on a block device or on the existing disk a delta stage applies onto (whose old
content is unknown), merged into as few calls as possible. With preallocation a file is fully
allocated up front and a block device gets every zero written. Writes may come in any order
(the parallel xz decoder writes blocks as they finish), so every call names its offset.
"""

from __future__ import annotations

import io
import queue
import threading
from typing import Any

from ..errors import TargetError, TargetTooSmallError
from ..progress import Progress
from ..streams import read_full
from .target import Sink, start_writeback

__all__ = ["SparseWriter", "pump"]

ZERO_BLOCK = 64 << 10
_ZEROS = bytes(ZERO_BLOCK)
CHUNK = 4 << 20
#: buffered data is pushed to the device every so often so the final fsync is short and the
#: page cache does not balloon (CDI pods are OOM-killed that way under their 600 MB limit)
FLUSH_EVERY = 64 << 20


class SparseWriter:
    def __init__(self, target: Sink, progress: Progress, *, preallocate: bool) -> None:
        self.target = target
        self.progress = progress
        self.skip_zeros = not (preallocate and target.is_block)
        self._lock = threading.Lock()
        self._pending_zero: tuple[int, int] | None = None  # block targets: (start, end)
        self.high_water = 0  # end of the furthest byte handled
        self._since_flush = 0
        self.tail = b""  # last 512 bytes of the stream, for the fixed-VHD footer check

    def write(self, offset: int, buf: bytes | bytearray, length: int, start: int = 0) -> int:
        """Write buf[start:start+length] at offset. `buf` is bytes or a bytearray, not a
        memoryview: startswith() on them compares against the zero block at memory speed, where
        memoryview comparisons are ~100x slower."""
        self._check_capacity(offset, length)
        fd = self.target.fd
        pos = 0
        data_bytes = zero_bytes = 0
        view = memoryview(buf)[start : start + length]
        while pos < length:
            # a run of data blocks, then a run of zero blocks
            first = pos
            while pos < length and not self._is_zero(buf, start + pos, length - pos):
                pos = min(pos + ZERO_BLOCK, length)
            if pos > first:
                self._flush_zero_before(offset + first)
                self._pwrite(fd, view[first:pos], offset + first)
                data_bytes += pos - first
            first = pos
            while pos < length and self._is_zero(buf, start + pos, length - pos):
                pos = min(pos + ZERO_BLOCK, length)
            if pos > first:
                self._zero(offset + first, offset + pos)
                zero_bytes += pos - first
        with self._lock:
            self.high_water = max(self.high_water, offset + length)
            self._since_flush += data_bytes
            flush = self._since_flush >= FLUSH_EVERY
            if flush:
                self._since_flush = 0
        if flush:
            self._start_writeback()
        self.progress.wrote(data_bytes, zero_bytes)
        return zero_bytes

    def write_zeros(self, offset: int, length: int) -> None:
        """A range known to be zeros without looking at data (a hole, a repeated zero block)."""
        self._check_capacity(offset, length)
        self._zero(offset, offset + length)
        with self._lock:
            self.high_water = max(self.high_water, offset + length)
        self.progress.wrote(0, length)

    def _check_capacity(self, offset: int, length: int) -> None:
        if self.target.capacity is not None and offset + length > self.target.capacity:
            raise TargetTooSmallError(
                f"the image does not fit: it continues past byte {self.target.capacity}, the "
                f"size of {self.target.path}; a larger target is required",
                required=offset + length, available=self.target.capacity)

    def _is_zero(self, buf: bytes | bytearray, pos: int, left: int) -> bool:
        """Whether buf[pos:pos+min(ZERO_BLOCK, left)] is all zeros."""
        if not self.skip_zeros:
            return False
        n = min(ZERO_BLOCK, left)
        if n == ZERO_BLOCK:
            return buf.startswith(_ZEROS, pos)
        return buf.startswith(_ZEROS[:n], pos)

    def _pwrite(self, fd: int, data: memoryview, offset: int) -> None:
        self.target.write_at(offset, data)  # in order on a stream, anywhere on a file

    def _zero(self, start: int, end: int) -> None:
        if self.target.sequential:
            self.target.zero_range(start, end - start)  # a pipe has no holes
            return
        if not self.target.is_block and self.target.mode != "apply":
            return  # a fresh or preallocated file already reads zeros there
        with self._lock:
            pend = self._pending_zero
            if pend and pend[1] == start:
                self._pending_zero = (pend[0], end)
                return
            self._pending_zero = (start, end)
        if pend:
            self.target.zero_range(pend[0], pend[1] - pend[0])

    def _flush_zero_before(self, offset: int) -> None:
        # Zero and data ranges never overlap (each byte is handled once), so a pending zero
        # range may be flushed whenever data arrives, in whatever order writers run.
        with self._lock:
            pend, self._pending_zero = self._pending_zero, None
        if pend:
            self.target.zero_range(pend[0], pend[1] - pend[0])

    def _start_writeback(self) -> None:
        """Start writeback of what was written so far without waiting for it, so dirty pages
        do not pile up (what gets CDI pods OOM-killed) and the final fsync is short;
        fdatasync here would stall the pipeline on every flush."""
        start_writeback(self.target.fd)

    def finish(self) -> None:
        with self._lock:
            pend, self._pending_zero = self._pending_zero, None
        if pend:
            self.target.zero_range(pend[0], pend[1] - pend[0])


_DONE = object()


def pump(stream: io.RawIOBase, writer: SparseWriter, *, limit: int | None = None,
         cancel: threading.Event | None = None) -> int:
    """Copy `stream` to the writer from offset 0: a reader thread fills pooled 4 MiB buffers
    (reused, not reallocated: a fresh buffer per chunk halved throughput in the design
    measurements) while this thread writes. Bytes past `limit` are read (checksums cover the
    whole stream) but not written. Returns the number of bytes the stream held."""
    free: queue.Queue[Any] = queue.Queue()
    for _ in range(4):
        free.put(bytearray(CHUNK))
    full: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                buf = free.get()
                if buf is _DONE:
                    return
                n = read_full(stream, memoryview(buf))
                full.put((buf, n))
                if n < CHUNK:
                    full.put(_DONE)
                    return
        except BaseException as exc:
            full.put(exc)

    t = threading.Thread(target=reader, name="pump-reader", daemon=True)
    t.start()
    offset = 0
    tail = b""
    try:
        while True:
            if cancel is not None and cancel.is_set():
                raise TargetError("cancelled")
            item = full.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            buf, n = item
            writable = n if limit is None else max(0, min(n, limit - offset))
            if writable:
                writer.write(offset, buf, writable)
            tail = (tail + bytes(buf[max(0, n - 512):n]))[-512:]
            offset += n
            free.put(buf)
        writer.tail = tail
        writer.finish()
    except BaseException:
        # no join: the reader may be blocked in a slow download; it is a daemon thread and the
        # caller closes the stream, which wakes it
        stop.set()
        free.put(_DONE)
        raise
    stop.set()
    free.put(_DONE)
    t.join(timeout=10)
    return offset
