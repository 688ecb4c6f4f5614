"""A stream as the core's source, read once and in order: an upload body, standard input.
The plans that need random access stage it (or, for qcow2, convert it as it streams)."""

from __future__ import annotations

import io

from ..errors import SourceError
from .base import SourceInfo

__all__ = ["StreamSource"]


class StreamSource:
    """`guest_data`: the bytes are a disk as it is (a clone), never sniffed."""

    def __init__(self, stream: io.RawIOBase, size: int | None, name: str, *,
                 guest_data: bool = False,
                 reason: str = "an upload body cannot be read twice") -> None:
        self._stream = stream
        self._size = size
        self._name = name
        self._guest = guest_data
        self._reason = reason
        self._opened = False

    def info(self) -> SourceInfo:
        return SourceInfo(size=self._size, random_access=False, name=self._name,
                          sequential_reason=self._reason, guest_data=self._guest)

    def open_stream(self, offset: int = 0) -> io.RawIOBase:
        if offset or self._opened:
            raise SourceError(f"{self._name} broke off and cannot be read again ({self._reason});"
                              " start again (an upload: or use the resumable endpoint)")
        self._opened = True
        return self._stream

    def read_at(self, offset: int, size: int) -> bytes:
        raise SourceError(f"{self._name} cannot be read at random")

    def readinto_at(self, offset: int, buf: bytearray) -> int:
        raise SourceError(f"{self._name} cannot be read at random")

    def verify(self) -> None:
        pass

    def close(self) -> None:
        pass
