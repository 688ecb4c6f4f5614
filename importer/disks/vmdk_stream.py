"""A VMDK read in file order, from a stream that cannot seek (stdin, inside gzip, a server
without ranges): converted while it arrives instead of staged whole.

Two layouts are written in the wild, and both stream:
* tables first: the grain directory and every grain table lie before the grains (monolithic
  sparse images, and stream-optimized ones written by qemu-img). The tables are read from the
  head of the stream, then every grain is written at the guest offset its table gives as it
  passes, exactly as qemu places it.
* directory at the end: VMware's stream-optimized files (OVA disks) say in the header that the
  directory is in the footer. Each grain comes behind a marker carrying its guest address; the
  grain tables follow the grains they place, then the directory and the footer. Grains are
  written by their markers as they pass, and when the footer has arrived every grain table is
  compared with what the markers placed: a file whose markers and tables disagree (qemu goes by
  the tables) fails instead of leaving a disk qemu would read differently.

What is kept is bounded whatever the file says: tables up to MAX_TABLES (what a fully
allocated 1 TiB disk needs), one grain at a time, and a record of where each grain came from
(4 bytes a grain, in tables of the file's own shape). Nothing is held for later and nothing is
read twice, so no scratch space is used.
"""

from __future__ import annotations

import io
import struct
from array import array
from collections.abc import Callable, Iterable, Iterator

from .. import advice
from ..errors import FormatError
from ..formats.tables import u32le
from ..formats.vmdk_header import (
    GD_AT_END,
    MARKER_EOS,
    MARKER_FOOTER,
    MARKER_GD,
    MARKER_GT,
    VmdkHeader,
    parse_vmdk_header,
)
from ..streams import read_full
from .vmdk import MAX_TABLES, check_footer, grain_extents, inflate_grain

__all__ = ["StreamedVmdk"]

#: guest bytes written with one call when grains lie one after another in the file and the disk
RUN = 4 << 20
def _way_out() -> str:
    return (f"convert it with qemu-img from a staged copy instead ({advice.converter()}), or "
            "decompress it and import the file")

#: (guest offset, buffer, length, start in buffer) -> zero bytes
Writer = Callable[[int, bytes | bytearray, int, int], int]


class _Cursor:
    """The stream, read forward only; `pos` is the file offset of the next byte."""

    def __init__(self, stream: io.RawIOBase) -> None:
        self._stream = stream
        self.pos = 0
        self._skip = bytearray(1 << 20)

    def read_into(self, view: memoryview, what: str) -> None:
        n = read_full(self._stream, view)
        self.pos += n
        if n < len(view):
            raise FormatError(f"the vmdk ends at byte {self.pos}, inside {what}: the image is "
                              "truncated; fetch it again")

    def read(self, n: int, what: str) -> bytearray:
        buf = bytearray(n)
        self.read_into(memoryview(buf), what)
        return buf

    def skip_to(self, offset: int, what: str) -> None:
        while self.pos < offset:
            n = min(len(self._skip), offset - self.pos)
            self.read_into(memoryview(self._skip)[:n], what)

    def at_end(self) -> bool:
        return read_full(self._stream, memoryview(self._skip)[:1]) == 0


class StreamedVmdk:
    """Feed the image in file order to `run`; data goes to `write` at guest offsets, zero and
    unallocated ranges to `write_zeros` (holes on a fresh file, zeroed on a device)."""

    def __init__(self, header: VmdkHeader, *, write: Writer,
                 write_zeros: Callable[[int, int], None]) -> None:
        self.h = header
        self._write = write
        self._write_zeros = write_zeros

    def run(self, stream: io.RawIOBase, cancelled: Callable[[], bool]) -> None:
        cur = _Cursor(stream)
        if self.h.gd_offset == GD_AT_END:
            if not (self.h.compressed and self.h.markers):
                raise FormatError("the vmdk says its grain directory is at the end but has no "
                                  "grain markers; the image is corrupt")
            _ByMarkers(self, cur, cancelled).run()
        else:
            self._tables_first(cur, cancelled)

    # ------------------------------------------------------------------ tables first

    def _tables_first(self, cur: _Cursor, cancelled: Callable[[], bool]) -> None:
        h = self.h
        gd_end = h.gd_offset + h.gd_entries * 4
        if gd_end > h.overhead:
            raise FormatError(f"the vmdk's grain directory (bytes {h.gd_offset}-{gd_end - 1}) "
                              f"lies among its grains (from byte {h.overhead}); it cannot be "
                              f"converted as it streams: {_way_out()}")
        if h.overhead > 2 * MAX_TABLES:
            raise FormatError(f"the vmdk's metadata takes {h.overhead} bytes before its first "
                              f"grain, more than this importer holds: {_way_out()}")
        head = cur.read(h.overhead, "the vmdk metadata")
        gd = u32le(memoryview(head)[h.gd_offset : gd_end])
        gts: dict[int, array[int]] = {}
        for index, sector in enumerate(gd):
            if not sector:
                continue
            start, end = sector * 512, sector * 512 + h.gtes * 4
            if end > h.overhead:
                raise FormatError(f"the vmdk's grain table {index} (bytes {start}-{end - 1}) lies "
                                  f"among its grains (from byte {h.overhead}); it cannot be "
                                  f"converted as it streams: {_way_out()}")
            gts[index] = u32le(memoryview(head)[start:end])
        for e in grain_extents(h, gts):
            if e.zero:
                self._write_zeros(e.start, e.length)
        grains = self._in_file_order(gts)
        if h.compressed:
            self._compressed_grains(cur, head, grains, cancelled)
        else:
            self._plain_grains(cur, head, grains, cancelled)

    def _in_file_order(self, gts: dict[int, array[int]]) -> Iterable[tuple[int, int]]:
        """(file sector, grain number) of every data grain by file offset: the grain tables'
        own order when it is that already (what qemu and VMware write), else sorted."""
        prev = 0
        for sector, _grain in _data_grains(self.h, gts):
            if sector < prev:
                break
            prev = sector
        else:
            return _data_grains(self.h, gts)
        pairs = list(_data_grains(self.h, gts))
        if len(pairs) > 1 << 20:
            raise FormatError(f"the vmdk's {len(pairs)} grains are not in the order of the disk "
                              f"in the file; it cannot be converted as it streams: {_way_out()}")
        pairs.sort()
        return pairs

    def _guest(self, grain: int, where: int) -> tuple[int, int]:
        """Guest offset and length of grain number `grain` (the last may be partial)."""
        guest = grain * self.h.grain
        if guest >= self.h.size:  # pragma: no cover - tables only cover the disk
            raise FormatError(f"the vmdk places a grain at byte {where} beyond the disk")
        return guest, min(self.h.grain, self.h.size - guest)

    def _in_head(self, head: bytearray, host: int, length: int) -> None:
        """A grain the tables place inside the metadata (qemu reads it from there)."""
        if host + length > len(head):
            raise FormatError(f"the vmdk's grain at byte {host} straddles the start of the "
                              f"grains; it cannot be converted as it streams: {_way_out()}")

    def _plain_grains(self, cur: _Cursor, head: bytearray, grains: Iterable[tuple[int, int]],
                      cancelled: Callable[[], bool]) -> None:
        """Uncompressed grains; neighbours in the file and on the disk are read and written as
        one run. A grain inside the metadata read first is written from that copy."""
        h = self.h
        buf = bytearray(RUN + h.grain)
        run_host = run_guest = run_len = 0
        last: tuple[int, int, int] | None = None  # host, place in buf, length of the previous

        def flush() -> None:
            nonlocal run_len
            if run_len:
                if cur.pos != run_host:
                    cur.skip_to(run_host, "the gap before a grain")
                cur.read_into(memoryview(buf)[:run_len], f"the grain at byte {run_host}")
                self._write(run_guest, buf, run_len, 0)
                run_len = 0

        for sector, grain in grains:
            host = sector * 512
            guest, length = self._guest(grain, host)
            if host < len(head):
                self._in_head(head, host, length)
                self._write(guest, head, length, host)
                continue
            if last is not None and host == last[0]:  # two table entries naming one grain
                flush()  # buf still holds the grain: nothing was read since
                self._write(guest, buf, min(length, last[2]), last[1])
                continue
            if host < max(cur.pos, run_host + run_len):
                raise FormatError(f"the vmdk's grain at byte {host} overlaps the data before "
                                  f"it; it cannot be converted as it streams: {_way_out()}")
            if run_len and (host != run_host + run_len or guest != run_guest + run_len
                            or run_len + length > RUN or length < h.grain):
                flush()
            if not run_len:
                if cancelled():
                    return
                run_host, run_guest = host, guest
            last = (host, run_len, length)
            run_len += length
            if length < h.grain:  # the disk's last grain: nothing follows it on the disk
                flush()
        flush()

    def _compressed_grains(self, cur: _Cursor, head: bytearray,
                           grains: Iterable[tuple[int, int]], cancelled: Callable[[], bool]
                           ) -> None:
        h = self.h
        marker = bytearray(12)
        data = bytearray(2 * h.grain)
        last: tuple[int, bytes] | None = None
        for sector, grain in grains:
            host = sector * 512
            guest, length = self._guest(grain, host)
            if last is not None and last[0] == host:
                out = last[1]
            elif host < len(head):
                self._in_head(head, host, 12)
                size = struct.unpack_from("<I", head, host + 8)[0]
                self._in_head(head, host, 12 + size)
                out = inflate_grain(memoryview(head)[host + 12 : host + 12 + size], length,
                                    h.grain, f"at byte {host}")
            else:
                if host < cur.pos:
                    raise FormatError(f"the vmdk's grain at byte {host} overlaps the data before "
                                      f"it; it cannot be converted as it streams: {_way_out()}")
                if cancelled():
                    return
                cur.skip_to(host, "the gap before a grain")
                cur.read_into(memoryview(marker), f"the grain marker at byte {host}")
                size = struct.unpack_from("<I", marker, 8)[0]
                if size == 0 or size > 2 * h.grain:
                    raise FormatError(f"vmdk compressed grain at byte {host} claims {size} bytes; "
                                      "the image is corrupt")
                view = memoryview(data)[:size]
                cur.read_into(view, f"the grain at byte {host}")
                out = inflate_grain(view, length, h.grain, f"at byte {host}")
                last = (host, out)
            self._write(guest, out, length, 0)


def _data_grains(h: VmdkHeader, gts: dict[int, array[int]]) -> Iterator[tuple[int, int]]:
    """(file sector, grain number) of the data grains, in disk order."""
    grains = -(-h.size // h.grain)
    for index in sorted(gts):
        gt = gts[index]
        base = index * h.gtes
        for j in range(min(h.gtes, grains - base)):
            sector = gt[j]
            if sector and not (sector == 1 and h.zero_grain):
                yield sector, base + j


class _ByMarkers:
    """VMware's layout: grains placed by their markers, checked against the tables at the end."""

    def __init__(self, owner: StreamedVmdk, cur: _Cursor, cancelled: Callable[[], bool]) -> None:
        self.o = owner
        self.h = owner.h
        self.cur = cur
        self.cancelled = cancelled
        #: where each grain came from (file sector), per grain table span: the tables to be
        self.placed: dict[int, array[int]] = {}
        self.tables: dict[int, array[int]] = {}  # grain tables by file sector
        self.directories: dict[int, array[int]] = {}  # grain directories by file sector
        self.kept = 0  # bytes of the two above and of `placed`

    def _keep(self, n: int) -> None:
        self.kept += n
        if self.kept > 2 * MAX_TABLES:
            raise FormatError(f"the vmdk's tables take more than {2 * MAX_TABLES >> 20} MiB; "
                              f"it cannot be converted as it streams: {_way_out()}")

    def run(self) -> None:
        h, cur = self.h, self.cur
        cur.skip_to(max(h.overhead, 512), "the vmdk metadata")
        sector = bytearray(512)
        data = bytearray(2 * h.grain + 512)
        footer: VmdkHeader | None = None
        footer_at = -1
        while True:
            at = cur.pos
            if at % 512:
                raise FormatError(f"the vmdk's marker at byte {at} is not sector-aligned; the "
                                  "image is corrupt")
            cur.read_into(memoryview(sector), f"the marker at byte {at}")
            value, size = struct.unpack_from("<QI", sector, 0)
            if size:
                if self.cancelled():
                    return
                self._grain(at, value, size, sector, data)
                continue
            kind = struct.unpack_from("<I", sector, 12)[0]
            if kind == MARKER_EOS:
                break
            if kind not in (MARKER_GT, MARKER_GD, MARKER_FOOTER) or value > MAX_TABLES // 512:
                raise FormatError(f"the vmdk's marker at byte {at} (type {kind}, {value} sectors)"
                                  " is not one a stream-optimized image holds; the image is corrupt")
            self._keep(value * 512)
            body = cur.read(value * 512, f"the metadata at byte {at + 512}")
            where = at // 512 + 1
            need = {MARKER_GT: h.gtes * 4, MARKER_GD: h.gd_entries * 4}.get(kind, 0)
            if len(body) < need:
                # qemu would read the rest of the table from whatever follows it in the file
                what = "grain table" if kind == MARKER_GT else "grain directory"
                raise FormatError(f"the vmdk's {what} at byte {at + 512} holds {len(body)} bytes "
                                  f"where its table takes {need}; the image is corrupt")
            if kind == MARKER_GT:
                self.tables[where] = u32le(body[:need])
            elif kind == MARKER_GD:
                self.directories[where] = u32le(body[:need])
            else:
                if value != 1 or footer is not None:
                    raise FormatError(f"the vmdk's footer at byte {at + 512} is not one sector, "
                                      "or is not the only one; the image is corrupt")
                footer = parse_vmdk_header(bytes(body))
                footer_at = at
        if footer is None or footer_at + 1024 != cur.pos - 512:
            raise FormatError("the vmdk stream ends without the footer just before its "
                              "end-of-stream marker; the image is truncated or corrupt")
        if not cur.at_end():
            raise FormatError(f"the vmdk goes on after its end-of-stream marker at byte "
                              f"{cur.pos - 512}; qemu would not find its footer: the image is "
                              "corrupt")
        check_footer(h, footer)
        self._check_tables(footer)
        self._zeros()

    def _grain(self, at: int, lba: int, size: int, sector: bytearray, data: bytearray) -> None:
        h, cur = self.h, self.cur
        guest = lba * 512
        if size > 2 * h.grain or guest % h.grain or guest >= h.size:
            raise FormatError(f"the vmdk's grain marker at byte {at} names guest byte {guest} "
                              f"and {size} bytes, which no grain of this disk can be; the image "
                              "is corrupt")
        total = -(-(12 + size) // 512) * 512
        data[:512] = sector
        cur.read_into(memoryview(data)[512:total], f"the grain at byte {at}")
        grain = guest // h.grain
        index, j = divmod(grain, h.gtes)
        placed = self.placed.get(index)
        if placed is None:
            self._keep(h.gtes * 4)
            placed = self.placed[index] = array("I", bytes(h.gtes * 4))
        if placed[j]:
            raise FormatError(f"the vmdk holds two grains for guest byte {guest} (at bytes "
                              f"{placed[j] * 512} and {at}); the image is corrupt")
        placed[j] = at // 512
        length = min(h.grain, h.size - guest)
        out = inflate_grain(memoryview(data)[12 : 12 + size], length, h.grain, f"at byte {at}")
        self.o._write(guest, out, length, 0)

    def _check_tables(self, footer: VmdkHeader) -> None:
        """The directory the footer names, and every table in it, against the markers."""
        h = self.h
        gd = self.directories.get(footer.gd_offset // 512)
        if gd is None:
            raise FormatError(f"the vmdk's footer names a grain directory at byte "
                              f"{footer.gd_offset} that the stream does not hold; the image is "
                              "corrupt")
        empty = array("I", bytes(h.gtes * 4))
        for index in range(h.gd_entries):
            placed = self.placed.get(index, empty)
            sector = gd[index]
            if not sector:
                table = empty
            else:
                found = self.tables.get(sector)
                if found is None:
                    raise FormatError(f"the vmdk's grain directory names a grain table at byte "
                                      f"{sector * 512} that the stream does not hold; the image "
                                      "is corrupt")
                table = found
            if h.zero_grain and 1 in table:
                table = array("I", (0 if s == 1 else s for s in table))
            if table != placed:
                j = next(k for k in range(h.gtes) if table[k] != placed[k])
                raise FormatError(
                    f"the vmdk's grain table {index} and its grain markers disagree about guest "
                    f"byte {(index * h.gtes + j) * h.grain} (the table: file sector {table[j]}, "
                    f"the markers: {placed[j]}); qemu would read another disk: the image is "
                    "corrupt")

    def _zeros(self) -> None:
        """Every grain no marker placed reads as zeros (written on a device, holes on a file)."""
        for e in grain_extents(self.h, self.placed):
            if e.zero:
                self.o._write_zeros(e.start, e.length)
