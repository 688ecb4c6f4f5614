"""A stream that lets the format layer look ahead without losing the bytes it looked at."""

from __future__ import annotations

import io

from ..errors import FormatError

__all__ = ["PeekableStream"]

#: how far ahead a stream may be read for header inspection (a qcow2 header with its
#: extensions lies in the first cluster, at most 2 MiB; vhdx metadata usually within 4 MiB)
PEEK_LIMIT = 8 << 20


class PeekableStream(io.RawIOBase):
    def __init__(self, raw: io.RawIOBase | io.BufferedIOBase) -> None:
        self._raw = raw
        self._head = bytearray()
        self._pos = 0  # position of the consumer
        self._eof = False
        self._passed = False  # the consumer has read beyond the head; no more peeking

    def readable(self) -> bool:
        return True

    def _fill(self, n: int) -> None:
        if self._passed:
            raise RuntimeError("peek after the stream was consumed past its head")
        if n > PEEK_LIMIT:
            raise FormatError(
                f"the image header reaches beyond the first {PEEK_LIMIT >> 20} MiB, which cannot "
                "be inspected while streaming; make the image available from a server that "
                "supports range requests"
            )
        while len(self._head) < n and not self._eof:
            chunk = self._raw.read(max(n - len(self._head), 65536))
            if not chunk:
                self._eof = True
            else:
                self._head += chunk

    def peek_bytes(self, n: int) -> bytes:
        """The first `n` bytes of the stream (fewer if it is shorter)."""
        self._fill(n)
        return bytes(self._head[:n])

    def read_at(self, offset: int, size: int) -> bytes:
        self._fill(offset + size)
        return bytes(self._head[offset : offset + size])

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._pos < len(self._head):
            n = min(len(b), len(self._head) - self._pos)
            b[:n] = self._head[self._pos : self._pos + n]
            self._pos += n
            return n
        if self._head:  # the consumer is past the head: free it, memory stays bounded
            self._head = bytearray()
            self._passed = True
        if self._eof:
            return 0
        return int(self._raw.readinto(b) or 0)

    def close(self) -> None:
        self._raw.close()
        super().close()
