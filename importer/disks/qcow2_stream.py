"""A qcow2 read in file order, from a stream that cannot seek (inside gzip or zstd, from a server
without ranges): converted while it arrives instead of staged whole.

`qemu-img convert` writes the header, the refcount structures and the L1 table first, then each
L2 table before the clusters it places, so almost every data cluster is placed by a table seen
earlier: it is written to its guest offset as it passes. What arrives before the table that
places it (an image whose metadata lies after its data: resized, or written by other tools) is
held in memory up to a bound, then spilled to a scratch file; the amount spilled is reported as
the staged bytes. Nothing is read twice: every region of the stream is judged once, when it
passes.

The input may be hostile (a few KB of gzip can describe a disk of petabytes), so what the
reader keeps is bounded whatever the tables say:
* what is waiting to be read is kept per table, compactly: one L1 table's L2 offsets, and per
  L2 table its entries sorted by file offset (12 bytes a data cluster), shared by every L1
  entry that names the same L2 table (aliases cost 8 bytes each, not a table each); past
  MAX_PENDING entries the image is refused with the way out (stage it);
* all-zero clusters are never held (a run list remembers them); nothing is held once every
  table is known; and what is held, in memory and spilled, never exceeds the virtual size plus
  the L2 tables, the most the tables could ever place;
* the spill goes to the scratch directory the plan names (--scratch-dir, the pod's /scratch,
  else beside the destination), never to $TMPDIR behind the user's back.

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
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import advice
from ..errors import FormatError, ScratchSpaceRequiredError, TargetError
from ..streams import read_full
from .qcow2 import (
    COMPRESSED,
    OFFSET_MASK,
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

__all__ = ["MAX_PENDING", "StreamStats", "StreamedQcow2"]

log = logging.getLogger(__name__)

WINDOW = 4 << 20  # read granularity; a multiple of every cluster size
HOLD_IN_MEMORY = 64 << 20  # clusters waiting for their table, before they spill to scratch
#: data clusters named by tables already read and not passed yet (12 bytes each): an image
#: whose tables all come first (preallocation=metadata) needs one per allocated cluster
MAX_PENDING = 12 << 20
def _way_out() -> str:
    return (f"convert it with qemu-img from a staged copy instead ({advice.converter()}), or "
            "decompress it and import the file")

#: (guest offset, buffer, length, start in buffer) -> zero bytes
Writer = Callable[[int, bytes | bytearray, int, int], int]


@dataclass(slots=True)
class StreamStats:
    held_peak: int = 0
    spilled: int = 0
    data_bytes: int = 0


class _Held:
    """Clusters that passed before anyone asked for them: in memory up to a bound, then in a
    scratch file; all-zero ones only as a run list."""

    def __init__(self, cluster_size: int, scratch_dir: Path | None, *, limit: int,
                 budget: int, stats: StreamStats) -> None:
        self._cs = cluster_size
        self._zero = bytes(cluster_size)
        self._zero_runs: list[int] = []  # [start, end, start, end, ...] of cluster indices
        self._mem: dict[int, bytes] = {}
        self._disk: dict[int, int] = {}  # cluster index -> offset in the spill file
        self._limit = limit
        self._budget = budget
        self._scratch_dir = scratch_dir
        self._fd = -1
        self._spill_end = 0
        self._stats = stats

    def put(self, index: int, data: bytes | memoryview) -> None:
        if index in self._mem or index in self._disk or self._is_zero(index):
            return
        if data == self._zero:
            runs = self._zero_runs
            if runs and runs[-1] == index:
                runs[-1] = index + 1
            elif not runs or runs[-1] < index:
                runs += [index, index + 1]
            else:  # out of order (never in file order): keep the list sorted
                k = bisect.bisect_right(runs, index)
                runs[k:k] = [index, index + 1] if k % 2 == 0 else []
            return
        held = (len(self._mem) + len(self._disk)) * self._cs
        if held + self._cs > self._budget:
            raise FormatError(f"the qcow2 image holds more data before its tables than its "
                              f"tables could ever place (over {self._budget} bytes): it is "
                              f"corrupt or hostile; {_way_out()}")
        if len(self._mem) * self._cs < self._limit:
            self._mem[index] = bytes(data)
            self._stats.held_peak = max(self._stats.held_peak, len(self._mem) * self._cs)
            return
        if self._fd < 0:
            self._open_spill()
        os.pwrite(self._fd, data, self._spill_end)
        self._disk[index] = self._spill_end
        self._spill_end += len(data)
        self._stats.spilled += len(data)

    def _open_spill(self) -> None:
        if self._scratch_dir is None:
            raise ScratchSpaceRequiredError(
                "scratch space required and none found (the qcow2 image places data before "
                "its tables beyond what is held in memory)")
        fd, name = tempfile.mkstemp(prefix=".importer-spill-", dir=self._scratch_dir)
        os.unlink(name)  # gone when closed, whatever happens
        self._fd = fd
        log.warning("qcow2 clusters arrive before the tables that place them: holding more "
                    "than %d MiB, the rest spills to %s", self._limit >> 20, self._scratch_dir)

    def _is_zero(self, index: int) -> bool:
        return bisect.bisect_right(self._zero_runs, index) % 2 == 1

    def get(self, index: int) -> bytes | None:
        if index in self._mem:
            return self._mem[index]
        off = self._disk.get(index)
        if off is not None:
            return os.pread(self._fd, self._cs, off)
        return self._zero if self._is_zero(index) else None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._mem.clear()


class _L1:
    """The L1 table: one range."""

    __slots__ = ("end", "start")
    kind = "L1 table"

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end

    def more(self) -> bool:
        return self.start >= 0

    def range(self) -> tuple[int, int]:
        return self.start, self.end

    def advance(self) -> None:
        self.start = -1


class _Tables:
    """The L2 tables the L1 table names, by file offset; L1 entries naming one table (aliases)
    are adjacent and served together."""

    __slots__ = ("cs", "indices", "offsets", "pos")
    kind = "L2 table"

    def __init__(self, pairs: list[tuple[int, int]], cs: int) -> None:
        pairs.sort()
        self.offsets = array("Q", (p[0] for p in pairs))
        self.indices = array("Q", (p[1] for p in pairs))
        self.pos = 0
        self.cs = cs

    def more(self) -> bool:
        return self.pos < len(self.offsets)

    def range(self) -> tuple[int, int]:
        off = self.offsets[self.pos]
        return off, off + self.cs

    def advance(self) -> array[int]:
        """The L1 indices of the current table; moves to the next table."""
        off, first = self.offsets[self.pos], self.pos
        while self.pos < len(self.offsets) and self.offsets[self.pos] == off:
            self.pos += 1
        return self.indices[first : self.pos]


class _Clusters:
    """The data clusters of one L2 table, sorted by file offset, for every L1 entry that names
    the table (`bases`: their L1 indices)."""

    __slots__ = ("bases", "entries", "h", "js", "pos")

    def __init__(self, h: Qcow2Header, entries: array[int], js: array[int], bases: array[int]
                 ) -> None:
        self.h, self.entries, self.js, self.bases, self.pos = h, entries, js, bases, 0

    @property
    def kind(self) -> str:
        return "compressed cluster" if self.entries[self.pos] & COMPRESSED else "data cluster"

    def more(self) -> bool:
        return self.pos < len(self.entries)

    def range(self) -> tuple[int, int]:
        e = self.entries[self.pos]
        if e & COMPRESSED:
            host, csize = compressed_range(self.h, e)
            return host, host + csize
        host = e & OFFSET_MASK
        return host, host + self.h.cluster_size

    def cost(self) -> int:
        return len(self.entries) + len(self.bases)


Batch = _L1 | _Tables | _Clusters


class StreamedQcow2:
    """Feed the decoded image in file order to `run`; data goes to `write` at guest offsets,
    zero and unallocated ranges to `write_zeros` (holes on a fresh file, zeroed on a device).
    `scratch_dir`: where held clusters spill beyond `hold_limit` (None: nowhere, an error)."""

    def __init__(self, header: Qcow2Header, *, write: Writer,
                 write_zeros: Callable[[int, int], None], scratch_dir: Path | None,
                 hold_limit: int | None = None) -> None:
        self._l2_entries, self._span, self._needed_l1 = layout(header)
        self.h = header
        self._write = write
        self._write_zeros = write_zeros
        cs = header.cluster_size
        self._cs = cs
        self.stats = StreamStats()
        limit = HOLD_IN_MEMORY if hold_limit is None else hold_limit
        # the most the tables could ever place: every guest cluster and every L2 table
        budget = -(-header.size // cs) * cs + self._needed_l1 * cs
        self._held = _Held(cs, scratch_dir, limit=limit, budget=budget,
                           stats=self.stats)
        self._heap: list[tuple[int, int, Batch]] = []  # (start, sequence, batch)
        self._seq = 0
        self._pending = 0  # entries of live _Clusters batches
        self._tables_known = False  # L1 read and every L2 table it names read
        self._window_start = 0  # file offset of the window's first byte
        # the window is the first _wlen bytes of one reused buffer (fresh buffers cost page
        # faults): a few clusters carried over, then up to WINDOW new bytes
        self._buf = bytearray(WINDOW + 4 * cs)
        self._wlen = 0
        #: the largest range one need covers: the L1 table, or a compressed cluster's 2 clusters
        self._largest_need = max(self._needed_l1 * 8, 2 * cs)
        self._add(_L1(header.l1_offset, header.l1_offset + self._needed_l1 * 8))

    # ------------------------------------------------------------------ needs

    def _add(self, batch: Batch) -> None:
        """Queue a batch; what has passed already is served at once from held clusters."""
        while batch.more():
            start, end = batch.range()
            if start >= self._window_start:
                self._seq += 1
                heapq.heappush(self._heap, (start, self._seq, batch))
                return
            data = self._from_held(start, end)
            if data is None:
                raise FormatError(f"qcow2 {batch.kind} at byte {start} was expected earlier in "
                                  "the stream than it can be found; the image is corrupt")
            self._serve(batch, data)

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

    def _serve(self, batch: Batch, data: bytes | bytearray | memoryview) -> None:
        """Use the data of the batch's current range, and move the batch on."""
        if isinstance(batch, _L1):
            batch.advance()
            self._on_l1(bytes(data))
        elif isinstance(batch, _Tables):
            bases = batch.advance()
            self._on_l2(bases, bytes(data))
            if not batch.more():
                self._tables_known = True
        else:
            self._on_cluster(batch, data)

    def _on_l1(self, data: bytes) -> None:
        pairs: list[tuple[int, int]] = []
        for i, e in enumerate(be64_table(data)):
            off = l2_offset(self.h, i, e)
            if off:
                pairs.append((off, i))
                continue
            guest = i * self._span
            self._write_zeros(guest, min(self._span, self.h.size - guest))
        if pairs:
            self._add(_Tables(pairs, self._cs))
        else:
            self._tables_known = True

    def _on_l2(self, bases: array[int], data: bytes) -> None:
        """One L2 table, for every L1 entry naming it: zero runs written now, data clusters
        queued once (sorted by file offset) for all of them."""
        cs, size, span = self._cs, self.h.size, self._span
        table = be64_table(data)
        check_l2(self.h, table, int(bases[0]))
        used = max(-(-min(span, size - b * span) // cs) for b in bases)
        entries, js = array("Q"), array("I")
        for j in range(used):
            e = table[j]
            if reads_zero(e):
                continue
            if not e & COMPRESSED:
                data_offset(self.h, e, int(bases[0]) * span + j * cs)  # aligned, as in qemu
            entries.append(e)
            js.append(j)
        for base_index in bases:  # the zero runs of each guest range the table maps
            base = base_index * span
            clusters = -(-min(span, size - base) // cs)
            zero_start = -1
            for j in range(clusters):
                if reads_zero(table[j]):
                    if zero_start < 0:
                        zero_start = base + j * cs
                elif zero_start >= 0:
                    self._write_zeros(zero_start, base + j * cs - zero_start)
                    zero_start = -1
            if zero_start >= 0:
                self._write_zeros(zero_start, min(base + clusters * cs, size) - zero_start)
        if not entries:
            return
        hosts = [_host(self.h, e) for e in entries]
        if any(hosts[k] > hosts[k + 1] for k in range(len(hosts) - 1)):  # qemu-img's are sorted
            order = sorted(range(len(entries)), key=hosts.__getitem__)
            entries = array("Q", (entries[k] for k in order))
            js = array("I", (js[k] for k in order))
        batch = _Clusters(self.h, entries, js, array("Q", bases))
        self._pending += batch.cost()
        if self._pending > MAX_PENDING:
            raise FormatError(f"the qcow2 image's tables name more than {MAX_PENDING} clusters "
                              f"still to come in the stream; {_way_out()}")
        self._add(batch)

    def _on_cluster(self, batch: _Clusters, data: bytes | bytearray | memoryview) -> None:
        e, j = batch.entries[batch.pos], batch.js[batch.pos]
        batch.pos += 1
        if not batch.more():
            self._pending -= batch.cost()
        cs, size = self._cs, self.h.size
        if e & COMPRESSED:
            host = _host(self.h, e)
            buf: bytes | bytearray = decompress_cluster(self.h, memoryview(data), host)
            start = 0
        elif isinstance(data, memoryview):  # a slice of the window: written without a copy
            buf, start = self._buf, (e & OFFSET_MASK) - self._window_start
        else:
            buf, start = data, 0
        for base_index in batch.bases:
            guest = base_index * self._span + j * cs
            n = min(cs, size - guest)
            if n > 0:  # an alias may map a shorter last range than the table's first user
                self._write(guest, buf, n, start)
                self.stats.data_bytes += n

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
        if self._heap:
            start, _seq, batch = self._heap[0]
            # a compressed cluster's descriptor rounds up to sectors: the last one may pass
            # the end of the file, which qemu reads as zeros
            end = self._window_start + self._wlen
            kind = batch.kind
            if kind == "compressed cluster" and start < end:
                raise FormatError(f"qcow2 compressed cluster at byte {start} is corrupt")
            raise FormatError(f"qcow2 {kind} at byte {start} lies past the end of the file "
                              f"({end} bytes): the image is truncated")

    def _consume(self, *, final: bool) -> None:
        wstart = self._window_start
        wend = wstart + self._wlen
        view = memoryview(self._buf)
        covered: list[tuple[int, int]] = []
        # needs are served in file order; serving one may add more (an L2 table's entries)
        while self._heap and self._heap[0][0] < wend:
            start, _seq, batch = self._heap[0]
            end = batch.range()[1]
            if end > wend:
                if not final:
                    break
                if batch.kind != "compressed cluster":
                    break  # reported as truncated after the loop
                end = wend  # the sector-rounded tail of the last compressed cluster
            heapq.heappop(self._heap)
            self._serve(batch, view[start - wstart : end - wstart])
            covered.append((start, end))
            # the batch's next ranges, while they come before any other batch's, without the
            # heap (a table's clusters usually follow each other)
            while batch.more():
                start, end = batch.range()
                if end > wend or start < wstart or (self._heap and start > self._heap[0][0]):
                    break
                self._serve(batch, view[start - wstart : end - wstart])
                covered.append((start, end))
            if batch.more():
                self._add(batch)
        # what is left: carried over when a need straddles the window's end, else held when no
        # one has asked for it yet (its table may come later); once every table is known,
        # nothing passing unasked will ever be asked for
        keep_from = min(self._heap[0][0], wend) if self._heap and not final else wend
        keep_from = max(keep_from, wstart)
        cs = self._cs
        if not self._tables_known:
            first = -(-wstart // cs) if wstart % cs else wstart // cs
            covered.sort()
            for index in range(first, keep_from // cs):
                lo, hi = index * cs, (index + 1) * cs
                if lo < wstart or hi > wend:
                    continue
                if index == 0 or _fully_covered(covered, lo, hi):
                    continue
                self._held.put(index, view[lo - wstart : hi - wstart])
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


def _host(h: Qcow2Header, e: int) -> int:
    return compressed_range(h, e)[0] if e & COMPRESSED else e & OFFSET_MASK


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
