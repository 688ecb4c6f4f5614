"""`importer verify`: a sink that compares instead of writing. The plans hand it what an import
would write (data at offsets, zero ranges); it reads DEST at the same places and notes the
first byte that differs, so the source is read exactly as an import reads it (holes and zero
clusters never fetched) and DEST only where the disk says something. Where the plan leaves a
range untouched (a fresh file already reads zeros there), DEST is checked for zeros at the end,
skipping its holes with SEEK_DATA.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import ImporterError, TargetError
from .target import dest_kind

__all__ = ["CompareSink", "Differs"]

CHUNK = 4 << 20
_ZEROS = bytes(CHUNK)


class Differs(ImporterError):
    """DEST is not what SOURCE gives: the first byte that differs, found early."""

    def __init__(self, offset: int, why: str) -> None:
        super().__init__(f"DEST differs from what SOURCE gives at byte {offset}: {why}")
        self.offset = offset


class CompareSink:
    """The Sink protocol (sinks/target.py) over DEST opened read-only."""

    mode = "apply"
    #: taken in order, as a pipe is: every zero range is reported, the extent copier writes in
    #: the disk's order, and qemu-img's plans convert to a sparse scratch file first
    sequential = True

    def __init__(self, path: Path) -> None:
        kind = dest_kind(path)
        if kind not in ("file", "block"):
            raise TargetError(f"{path} is not a file or block device to compare with")
        self.path = path
        self.is_block = kind == "block"
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.dest_size = os.lseek(self.fd, 0, os.SEEK_END)
        self.capacity: int | None = self.dest_size if self.is_block else None
        self.expected_size: int | None = None
        self.compared = 0
        self._covered: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ Sink

    def check_fits(self, virtual_size: int | None) -> None:
        if virtual_size is not None and virtual_size > self.dest_size:
            raise Differs(self.dest_size, f"DEST ends there, the disk is {virtual_size} bytes")

    @contextlib.contextmanager
    def writing(self, written: Callable[[], int | None] = lambda: None) -> Iterator[None]:
        yield

    def write_at(self, offset: int, data: memoryview) -> None:
        got = os.pread(self.fd, len(data), offset)
        if got != data:
            at = offset + _first_difference(data, got)
            raise Differs(at, "DEST ends there" if at >= offset + len(got) else
                          "the bytes differ")
        self._cover(offset, len(data))

    def zero_range(self, offset: int, length: int) -> None:
        self._check_zeros(offset, offset + length)
        self._cover(offset, length)

    def preallocate(self, size: int) -> None:
        pass

    def set_size(self, size: int) -> None:
        self.expected_size = size

    def current_size(self) -> int:
        return self.expected_size or 0

    # ------------------------------------------------------------------ the end

    def finish(self) -> dict[str, Any]:
        """Check what no write or zero range covered (it must read as zeros) and DEST's size;
        raise Differs, or return the figures of a match."""
        size = self.expected_size
        if size is None:
            size = max((end for _start, end in self._covered), default=0)
        if self.dest_size < size:
            raise Differs(self.dest_size, f"DEST ends there, the disk is {size} bytes")
        pos = 0
        for start, end in sorted(self._covered):
            if start > pos:
                self._check_zeros(pos, min(start, size))
            pos = max(pos, end)
        if pos < size:
            self._check_zeros(pos, size)
        extra = self.dest_size - size
        if extra and not self.is_block:
            self._check_zeros(size, self.dest_size)  # a file grown by --image-size
        return {"compared_bytes": self.compared, "dest_size": self.dest_size,
                "disk_size": size}

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # ------------------------------------------------------------------ helpers

    def _cover(self, offset: int, length: int) -> None:
        with self._lock:
            self._covered.append((offset, offset + length))
            self.compared += length

    def _check_zeros(self, start: int, end: int) -> None:
        for lo, hi in self._data_regions(start, end):
            pos = lo
            while pos < hi:
                n = min(CHUNK, hi - pos)
                got = os.pread(self.fd, n, pos)
                if len(got) < n:
                    raise Differs(pos + len(got), "DEST ends there")
                if got != _ZEROS[:n]:
                    raise Differs(pos + _first_difference(_ZEROS[:n], got),
                                  "DEST holds data where the disk is zeros")
                pos += n

    def _data_regions(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """The parts of [start, end) that may hold data: a file's holes are skipped."""
        if self.is_block:
            yield start, end
            return
        pos = start
        while pos < end:
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole up to the end of the file
                    return
                yield pos, end
                return
            if data >= end:
                return
            hole = min(os.lseek(self.fd, data, os.SEEK_HOLE), end)
            yield data, hole
            pos = hole


def _first_difference(want: bytes | memoryview, got: bytes) -> int:
    n = min(len(want), len(got))
    lo, hi = 0, n
    view = memoryview(want)
    if view[:n] == got[:n]:
        return n
    while hi - lo > 1:  # bisect on slices: C comparisons, not a Python loop per byte
        mid = (lo + hi) // 2
        if view[lo:mid] != got[lo:mid]:
            hi = mid
        else:
            lo = mid
    return lo
