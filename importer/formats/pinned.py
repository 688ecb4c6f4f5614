"""The bytes the header inspector judged, pinned so that every later reader sees exactly them.

A hostile server can answer the inspector's small range requests with a clean qcow2 header and
the converter's large ones with a header naming an external data file (`/etc/passwd`); the ETag
is the same for both, so If-Range does not help. Hence: every region the format layer read to
decide "safe" is kept, and every reader after it (the NBD export qemu-img reads, parallel ranged
copies, xz block decoding) gets those regions from this copy, never from a second fetch. What
was inspected is what gets used.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

from ..errors import FormatError

__all__ = ["MAX_PINNED", "PinnedBytes"]

Chunk = bytes | bytearray | memoryview
#: inspection reads headers only; a bound keeps a hostile header from pinning the whole image
MAX_PINNED = 16 << 20


class PinnedBytes:
    """Non-overlapping regions (start -> bytes) of the image, first seen wins."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._data: list[bytes] = []
        self._lock = threading.Lock()
        self.total = 0

    def _overlapping(self, offset: int, end: int) -> list[int]:
        i = bisect.bisect_right(self._starts, offset) - 1
        i = max(i, 0)
        out = []
        while i < len(self._starts) and self._starts[i] < end:
            if self._starts[i] + len(self._data[i]) > offset:
                out.append(i)
            i += 1
        return out

    def overlay(self, offset: int, buf: bytearray | memoryview, length: int | None = None) -> None:
        """Copy the pinned bytes over buf[:length], which holds the image at `offset`."""
        end = offset + (len(buf) if length is None else length)
        with self._lock:
            for i in self._overlapping(offset, end):
                s, d = self._starts[i], self._data[i]
                lo, hi = max(s, offset), min(s + len(d), end)
                buf[lo - offset : hi - offset] = d[lo - s : hi - s]

    def apply(self, offset: int, data: Chunk) -> Chunk:
        """`data` (the image at `offset`) with the pinned bytes in it; copied only if needed."""
        with self._lock:
            hit = bool(self._overlapping(offset, offset + len(data)))
        if not hit:
            return data
        buf = bytearray(data)
        self.overlay(offset, buf)
        return buf

    def covered(self, offset: int, length: int) -> bytes | None:
        """The bytes at [offset, offset+length) when one pinned region holds them all."""
        with self._lock:
            i = bisect.bisect_right(self._starts, offset) - 1
            if i >= 0:
                s, d = self._starts[i], self._data[i]
                if s + len(d) >= offset + length:
                    return d[offset - s : offset - s + length]
        return None

    def pin(self, offset: int, data: Chunk) -> bytes:
        """Record what a reader saw at `offset` and return the consistent view: regions pinned
        earlier keep their bytes, the rest of `data` is pinned from now on."""
        buf = bytearray(data)
        self.overlay(offset, buf)
        with self._lock:
            pos = offset
            end = offset + len(buf)
            gaps: list[tuple[int, int]] = []
            for i in self._overlapping(offset, end):
                s = self._starts[i]
                if s > pos:
                    gaps.append((pos, s))
                pos = max(pos, s + len(self._data[i]))
            if pos < end:
                gaps.append((pos, end))
            for lo, hi in gaps:
                if self.total + hi - lo > MAX_PINNED:
                    raise FormatError(f"the image header asks for more than {MAX_PINNED >> 20} "
                                      "MiB of metadata to be inspected; refusing")
                k = bisect.bisect_left(self._starts, lo)
                self._starts.insert(k, lo)
                self._data.insert(k, bytes(buf[lo - offset : hi - offset]))
                self.total += hi - lo
        return bytes(buf)

    def reader(self, read_at: Callable[[int, int], Chunk]) -> Callable[[int, int], bytes]:
        """A read_at for the inspector: fetched through `read_at`, pinned, consistent."""

        def read(offset: int, length: int) -> bytes:
            if length <= 0:
                return b""
            held = self.covered(offset, length)
            return held if held is not None else self.pin(offset, read_at(offset, length))

        return read
