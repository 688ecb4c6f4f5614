"""A qcow2 read in file order, from a stream that cannot seek (inside gzip or zstd, from a server
without ranges): converted while it arrives instead of staged whole.

`qemu-img convert` writes the header, the refcount structures and the L1 table first, then each
L2 table before the clusters it places, so almost every data cluster is placed by a table seen
earlier: it is written to its guest offset as it passes. What arrives before the table that
places it (an image whose metadata lies after its data: resized, or written by other tools) is
held in memory up to a bound, then spilled to a scratch file; the amount spilled is reported as
the staged bytes. Nothing is read twice: every region of the stream is judged once, when it
passes.

The same checks as the random-access reader (disks/qcow2.py) apply to every table entry before
it is used; the clusters themselves go through the same decompression.
"""

from __future__ import annotations

import bisect
import heapq
import io
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FormatError, ScratchSpaceRequiredError, TargetError
from ..streams import read_full
from .qcow2 import (
    COMPRESSED,
    Qcow2Header,
    be64_table,
    check_l2,
    compressed_range,
    data_offset,
    decompress_cluster,
    l2_offset,
    layout,
    reads_zero,
)

__all__ = ["StreamStats", "StreamedQcow2"]

log = logging.getLogger(__name__)

WINDOW = 4 << 20  # read granularity; a multiple of every cluster size
HOLD_IN_MEMORY = 64 << 20  # clusters waiting for their table, before they spill to scratch

#: (guest offset, buffer, length, start in buffer) -> zero bytes
Writer = Callable[[int, bytes | bytearray, int, int], int]


@dataclass(order=True, slots=True)
class _Need:
    """A byte range of the file someone is waiting for, and what to do with it."""

    start: int
    end: int
    kind: str = field(compare=False)  # l2, plain, compressed
    arg: int = field(compare=False)  # L1 index (l2) or guest offset (plain, compressed)


@dataclass(slots=True)
class StreamStats:
    held_peak: int = 0
    spilled: int = 0
    data_bytes: int = 0


class _Held:
    """Clusters that passed before anyone asked for them: in memory up to a bound, then in a
    scratch file."""

    def __init__(self, cluster_size: int, scratch_dir: Path | None, *, limit: int,
                 scratch_required: bool, stats: StreamStats) -> None:
        self._cs = cluster_size
        self._mem: dict[int, bytes] = {}
        self._disk: dict[int, int] = {}  # cluster index -> offset in the spill file
        self._limit = limit
        self._scratch_dir = scratch_dir
        self._scratch_required = scratch_required
        self._fd = -1
        self._spill_end = 0
        self._stats = stats

    def put(self, index: int, data: bytes) -> None:
        if index in self._mem or index in self._disk:
            return
        if len(self._mem) * self._cs < self._limit:
            self._mem[index] = data
            self._stats.held_peak = max(self._stats.held_peak, len(self._mem) * self._cs)
            return
        if self._fd < 0:
            if self._scratch_required and self._scratch_dir is None:
                raise ScratchSpaceRequiredError(
                    "scratch space required and none found (the qcow2 image places data before "
                    "its tables beyond what is held in memory)")
            where = self._scratch_dir or Path(tempfile.gettempdir())
            fd, name = tempfile.mkstemp(prefix=".importer-spill-", dir=where)
            os.unlink(name)  # gone when closed, whatever happens
            self._fd = fd
            log.warning("qcow2 clusters arrive before the tables that place them: holding more "
                        "than %d MiB, the rest spills to %s", self._limit >> 20, where)
        os.pwrite(self._fd, data, self._spill_end)
        self._disk[index] = self._spill_end
        self._spill_end += len(data)
        self._stats.spilled += len(data)

    def get(self, index: int) -> bytes | None:
        if index in self._mem:
            return self._mem[index]
        off = self._disk.get(index)
        if off is None:
            return None
        return os.pread(self._fd, self._cs, off)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._mem.clear()


class StreamedQcow2:
    """Feed the decoded image in file order to `run`; data goes to `write` at guest offsets,
    zero and unallocated ranges to `write_zeros` (holes on a fresh file, zeroed on a device)."""

    def __init__(self, header: Qcow2Header, *, write: Writer,
                 write_zeros: Callable[[int, int], None], scratch_dir: Path | None,
                 scratch_required: bool, hold_limit: int | None = None) -> None:
        self._l2_entries, self._span, self._needed_l1 = layout(header)
        self.h = header
        self._write = write
        self._write_zeros = write_zeros
        cs = header.cluster_size
        self._cs = cs
        self.stats = StreamStats()
        limit = HOLD_IN_MEMORY if hold_limit is None else hold_limit
        self._held = _Held(cs, scratch_dir, limit=limit, scratch_required=scratch_required,
                           stats=self.stats)
        self._needs: list[_Need] = []  # a heap by start
        self._window_start = 0  # file offset of the window's first byte
        # the window is the first _wlen bytes of one reused buffer (fresh buffers cost page
        # faults): a few clusters carried over, then up to WINDOW new bytes
        self._buf = bytearray(WINDOW + 4 * cs)
        self._wlen = 0
        #: the largest range one need covers: the L1 table, or a compressed cluster's 2 clusters
        self._largest_need = max(self._needed_l1 * 8, 2 * cs)
        self._add(_Need(header.l1_offset, header.l1_offset + self._needed_l1 * 8, "l1", 0))

    # ------------------------------------------------------------------ needs

    def _add(self, need: _Need) -> None:
        """Register a range; served at once from held clusters when it has passed already."""
        if need.start < self._window_start:
            data = self._from_held(need.start, need.end)
            if data is None:
                raise FormatError(f"qcow2 {need.kind} data at byte {need.start} was expected "
                                  "earlier in the stream than it can be found; the image is "
                                  "corrupt")
            self._serve(need, data)
            return
        heapq.heappush(self._needs, need)

    def _from_held(self, start: int, end: int) -> bytes | None:
        out = bytearray()
        cs = self._cs
        for index in range(start // cs, -(-end // cs)):
            chunk = self._held.get(index)
            if chunk is None:
                # part of it may still be in the current window
                lo = index * cs
                if lo >= self._window_start and lo < self._window_start + self._wlen:
                    off = lo - self._window_start
                    chunk = bytes(self._buf[off : min(off + cs, self._wlen)])
                else:
                    return None
            out += chunk
        base = (start // cs) * cs
        return bytes(out[start - base : end - base])

    def _serve(self, need: _Need, data: bytes | bytearray | memoryview) -> None:
        if need.kind == "l1":
            self._on_l1(bytes(data))
        elif need.kind == "l2":
            self._on_l2(need.arg, bytes(data))
        elif need.kind == "plain":
            n = min(self._cs, self.h.size - need.arg)
            if isinstance(data, memoryview):  # a slice of the window: written without a copy
                self._write(need.arg, self._buf, n, need.start - self._window_start)
            else:
                self._write(need.arg, data, n, 0)
            self.stats.data_bytes += n
        else:
            cluster = decompress_cluster(self.h, memoryview(data), need.start)
            n = min(self._cs, self.h.size - need.arg)
            self._write(need.arg, cluster, n, 0)
            self.stats.data_bytes += n

    def _on_l1(self, data: bytes) -> None:
        for i, e in enumerate(be64_table(data)):
            off = l2_offset(self.h, i, e)
            guest = i * self._span
            if not off:
                self._write_zeros(guest, min(self._span, self.h.size - guest))
                continue
            self._add(_Need(off, off + self._cs, "l2", i))

    def _on_l2(self, index: int, data: bytes) -> None:
        cs = self._cs
        base = index * self._span
        clusters = -(-min(self._span, self.h.size - base) // cs)
        table = be64_table(data)
        check_l2(self.h, table, index)
        zero_start = -1
        for j in range(clusters):
            e = table[j]
            guest = base + j * cs
            if reads_zero(e):
                if zero_start < 0:
                    zero_start = guest
                continue
            if zero_start >= 0:
                self._write_zeros(zero_start, guest - zero_start)
                zero_start = -1
            if e & COMPRESSED:
                host, csize = compressed_range(self.h, e)
                self._add(_Need(host, host + csize, "compressed", guest))
            else:
                host = data_offset(self.h, e, guest)
                self._add(_Need(host, host + cs, "plain", guest))
        if zero_start >= 0:
            self._write_zeros(zero_start, min(base + clusters * cs, self.h.size) - zero_start)

    # ------------------------------------------------------------------ the stream

    def run(self, stream: io.RawIOBase, cancel: Callable[[], bool]) -> None:
        try:
            while True:
                if cancel():
                    raise TargetError("cancelled")
                n = read_full(stream, memoryview(self._buf)[self._wlen : self._wlen + WINDOW])
                if not n:
                    break
                self._wlen += n
                self._consume(final=False)
            self._consume(final=True)
        finally:
            self._held.close()
        if self._needs:
            first = self._needs[0]
            # a compressed cluster's descriptor rounds up to sectors: the last one may pass
            # the end of the file, which qemu reads as zeros
            end = self._window_start + self._wlen
            if first.kind == "compressed" and first.start < end:
                raise FormatError(f"qcow2 compressed cluster at byte {first.start} is corrupt")
            raise FormatError(f"qcow2 {first.kind} data at byte {first.start} lies past the end of "
                              f"the file ({end} bytes): the image is truncated")

    def _consume(self, *, final: bool) -> None:
        wstart = self._window_start
        wend = wstart + self._wlen
        view = memoryview(self._buf)
        covered: list[tuple[int, int]] = []
        # needs are served in file order; serving one may add more (an L2 table's entries)
        while self._needs and self._needs[0].start < wend:
            need = self._needs[0]
            end = need.end
            if end > wend:
                if not final:
                    break
                if need.kind != "compressed":
                    break  # reported as truncated after the loop
                end = wend  # the sector-rounded tail of the last compressed cluster
            heapq.heappop(self._needs)
            self._serve(need, view[need.start - wstart : end - wstart])
            covered.append((need.start, end))
        # what is left: carried over when a need straddles the window's end, else held when no
        # one has asked for it yet (its table may come later)
        keep_from = min(self._needs[0].start, wend) if self._needs and not final else wend
        keep_from = max(keep_from, wstart)
        cs = self._cs
        first = -(-wstart // cs) if wstart % cs else wstart // cs
        last = keep_from // cs
        covered.sort()
        for index in range(first, last):
            lo, hi = index * cs, (index + 1) * cs
            if lo < wstart or hi > wend:
                continue
            if index == 0 or _fully_covered(covered, lo, hi):
                continue
            self._held.put(index, bytes(view[lo - wstart : hi - wstart]))
        # keep whole clusters from the first unserved byte on, moved to the buffer's start
        keep = max((keep_from // cs) * cs, wstart)
        carry = wend - keep
        # one need larger than the carry room: an L1 table (up to 32 MiB with 512-byte
        # clusters) grows the buffer; anything larger than the largest table is corrupt
        if carry > len(self._buf) - WINDOW and carry > self._largest_need + 2 * cs:
            raise FormatError(f"qcow2 data at byte {keep} spans more than "
                                  f"{self._largest_need + 2 * cs} bytes; the image is corrupt")
        grow = max(0, carry - (len(self._buf) - WINDOW))
        del view
        if grow:
            self._buf.extend(bytes(grow))
        self._buf[:carry] = self._buf[keep - wstart : wend - wstart]
        self._window_start, self._wlen = keep, carry


def _fully_covered(ranges: list[tuple[int, int]], lo: int, hi: int) -> bool:
    pos = lo
    i = bisect.bisect_right(ranges, (lo, 1 << 63)) - 1
    i = max(i, 0)
    while i < len(ranges) and ranges[i][0] <= pos:
        pos = max(pos, ranges[i][1])
        if pos >= hi:
            return True
        i += 1
    return pos >= hi
