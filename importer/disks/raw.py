"""A raw image over any ranged source: one data extent; the file's own data/hole map when the
source is a local file (SEEK_DATA/SEEK_HOLE); or the map the server gives (the imageio
daemon's extents), so a sparse image is never read where it has holes."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator

from ..errors import SourceContentError
from ..formats.pinned import PinnedBytes
from .base import Extent, fill_at

__all__ = ["RawDisk", "file_extents"]

ReadInto = Callable[[int, bytearray | memoryview], int]


class RawDisk:
    read_unit = 0

    def __init__(self, readinto_at: ReadInto, size: int, pins: PinnedBytes, *,
                 local_fd: int | None = None, extent_map: list[Extent] | None = None,
                 complete: bool = True) -> None:
        #: False: the map names only what changed (a warm stage); the rest is left alone
        self.complete = complete
        self._readinto_at = readinto_at
        self._size = size
        self._pins = pins
        self._fd = local_fd
        self._map = extent_map

    @property
    def size(self) -> int:
        return self._size

    def extents(self) -> Iterator[Extent]:
        if self._map is not None:
            yield from self._map
        elif self._fd is not None:
            yield from file_extents(self._fd, self._size)
        elif self._size:
            yield Extent(0, self._size, False)

    def readinto_at(self, offset: int, buf: bytearray | memoryview) -> int:
        want = min(len(buf), self._size - offset)
        view = memoryview(buf)[:want]
        got = fill_at(self._readinto_at, offset, view)
        if got < want:
            raise SourceContentError(f"the source ended at byte {offset + got}, before the "
                                     f"{self._size} bytes it announced")
        self._pins.overlay(offset, view, want)  # the inspected head, never a re-read
        return want


def file_extents(fd: int, size: int) -> Iterator[Extent]:
    """The file's data and holes, from the file system (one data run where it cannot tell)."""
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                yield Extent(pos, size - pos, True)
                return
            yield Extent(pos, size - pos, False)  # no SEEK_DATA here: all of it is data
            return
        data = min(data, size)
        if data > pos:
            yield Extent(pos, data - pos, True)
        if data >= size:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        yield Extent(data, hole - data, False)
        pos = hole
