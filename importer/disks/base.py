"""The random-access disk protocol.

A disk is the guest's view of an image: `size` bytes, a map of data and zero runs
(`extents()`, coarse is fine: a run called data may hold zeros, a run called zero never holds
data), and `readinto_at(offset, buf)` for the data. The argument order is the one of
`Source.readinto_at`, so the two protocols never swap arguments silently.

Implementations: raw over a ranged source (disks/raw.py), multi-block xz (disks/xz.py), native
qcow2 (disks/qcow2.py); later an NBD client (VDDK) and imageio's extents API.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Extent", "NativeUnsupported", "RandomAccessDisk", "add_run", "fetch_spans", "fill_at",
           "fill_zeros", "merge_extents"]


class NativeUnsupported(Exception):
    """The image is valid but uses something a native reader does not read: the planner hands
    it to qemu-img with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Extent:
    start: int
    length: int
    zero: bool  # reads as zeros: becomes a hole (fresh file) or a zeroed range (old disk)

    @property
    def end(self) -> int:
        return self.start + self.length


class RandomAccessDisk(Protocol):
    @property
    def size(self) -> int: ...

    #: False for a delta (a warm stage): extents() then names only the runs the delta changes,
    #: with gaps where the disk keeps what it holds
    complete: bool

    @property
    def read_unit(self) -> int:
        """0 when any range of a data extent may be read; otherwise every data extent must be
        read whole in one call (an xz block decodes as one piece)."""
        ...

    def extents(self) -> Iterator[Extent]:
        """Data and zero runs covering [0, size) in order, without gaps (unless not
        `complete`). May read metadata lazily: callers consume it as they copy."""
        ...

    def readinto_at(self, offset: int, buf: bytearray | memoryview) -> int:
        """Fill buf with the guest bytes at `offset`; returns len(buf) (less only at the end).
        Safe to call from several threads at once."""
        ...


def merge_extents(runs: Iterable[Extent]) -> Iterator[Extent]:
    """Adjacent runs of the same kind joined into one."""
    cur: Extent | None = None
    for run in runs:
        if run.length <= 0:
            continue
        if cur is not None and cur.zero == run.zero and cur.end == run.start:
            cur = Extent(cur.start, cur.length + run.length, cur.zero)
            continue
        if cur is not None:
            yield cur
        cur = run
    if cur is not None:
        yield cur


def fill_at(readinto_at: Callable[[int, memoryview], int], offset: int, view: memoryview) -> int:
    """Fill `view` with the bytes at `offset` through a reader that may return less than asked;
    fewer bytes than len(view) only where the reader has no more."""
    got = 0
    while got < len(view):
        n = readinto_at(offset + got, view[got:])
        if n <= 0:
            break
        got += n
    return got


_ZEROS = bytes(1 << 20)


def fill_zeros(view: memoryview) -> None:
    """Zero `view` (a hole read by a disk reader) without allocating a buffer of its size."""
    pos = 0
    while pos < len(view):
        n = min(len(_ZEROS), len(view) - pos)
        view[pos : pos + n] = _ZEROS[:n]
        pos += n


def add_run(runs: list[list[int]], pos: int, host: int, n: int) -> None:
    """Add the read of `n` bytes at file offset `host` into the buffer at `pos` to `runs`
    ([buffer offset, file offset, length]), joined to the last one when both are contiguous:
    neighbouring clusters or grains are fetched with one read."""
    last = runs[-1] if runs else None
    if last and last[0] + last[2] == pos and last[1] + last[2] == host:
        last[2] += n
    else:
        runs.append([pos, host, n])


#: ranges closer than this in the file are fetched with one request (compressed clusters and
#: grains: qemu writes them one after another)
MERGE_GAP = 64 << 10
_span_local = threading.local()


class Spans:
    """File ranges fetched together (fetch_spans): the bytes at a file offset are found here."""

    def __init__(self, fetched: list[tuple[int, memoryview]]) -> None:
        self._fetched = fetched
        self._starts = [start for start, _ in fetched]

    def at(self, host: int) -> tuple[int, memoryview]:
        """(offset of `host` in the view, the view of the span holding it)."""
        start, view = self._fetched[bisect.bisect_right(self._starts, host) - 1]
        return host - start, view


def fetch_spans(ranges: Iterable[tuple[int, int]],
                read_exact: Callable[[int, memoryview], None]) -> Spans:
    """Read the file ranges [start, end), merged where they touch or lie within MERGE_GAP, into
    this thread's reused buffer (a fresh buffer per span costs page faults, the kernel mapping
    and zeroing new pages: a third of the CPU time in the measurements). The views are valid
    until this thread fetches again."""
    spans: list[list[int]] = []
    for start, end in sorted(ranges):
        if spans and spans[-1][0] <= start <= spans[-1][1] + MERGE_GAP:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    total = sum(end - start for start, end in spans)
    scratch = getattr(_span_local, "buf", None)
    if scratch is None or len(scratch) < total:
        scratch = _span_local.buf = bytearray(max(total, 8 << 20))
    fetched: list[tuple[int, memoryview]] = []
    pos = 0
    for start, end in spans:
        view = memoryview(scratch)[pos : pos + end - start]
        read_exact(start, view)
        fetched.append((start, view))
        pos += end - start
    return Spans(fetched)
