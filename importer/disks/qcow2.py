"""A native qcow2 reader: the guest disk of a qcow2 (v2 or v3) image, read at random through
range reads of the file, without qemu-img.

Why by hand: no maintained PyPI library reads qcow2 (the one on PyPI, `qcow2`, is unmaintained
and reads whole files); qemu-img over our NBD export works but costs a child process, a Python
NBD server in the middle, and one 64 KiB request per cluster (the benchmark's qcow2 row). The
format is small for a reader: a header, the L1 table, L2 tables, data clusters, compressed
clusters; refcounts and snapshots only matter for writers (docs/interop/qcow2.txt in QEMU's
tree).

Only the active layer is read. Every table is read once and used from that copy (what was
inspected is what gets used), through the pinned bytes of the inspection. Every offset and size
from the file is checked before use: alignment as qemu checks it, against the end of the file,
and against bounds on the memory a hostile header can make us allocate. Features this reader
does not implement (extended L2 entries / subclusters) raise NativeUnsupported, and the planner
hands the image to qemu-img with that reason; unsafe features (backing file, external data
file, encryption) were refused by the header inspector before we get here and are refused
again here.
"""

from __future__ import annotations

import struct
import threading
import zlib
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from isal import isal_zlib

from ..errors import FormatError
from ..formats.pinned import PinnedBytes
from ..formats.qcow2_header import Qcow2Header, parse_qcow2_header, sector_size
from .base import Extent, NativeUnsupported, add_run, fetch_spans, fill_at, fill_zeros

__all__ = [
    "NativeUnsupported",
    "Qcow2Disk",
    "Qcow2Header",
    "be64_table",
    "check_l2",
    "compressed_range",
    "data_offset",
    "decompress_cluster",
    "l2_offset",
    "layout",
    "parse_header",
    "reads_zero",
    "sector_size",
]

ReadInto = Callable[[int, bytearray | memoryview], int]

OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00  # bits 9-55 of L1 and standard L2 entries
COMPRESSED = 1 << 62
ZERO_FLAG = 1
#: L2 tables held in memory at once are bounded (a fully allocated 2 TiB image with 64 KiB
#: clusters has 256 MiB of them); beyond this the image goes to qemu-img, which pages them
MAX_L2_BYTES = 256 << 20
L2_PREFETCH = 8


def parse_header(h: bytes, *, backing: bool = False) -> Qcow2Header:
    """The one qcow2 header parser (formats/qcow2_header.py), under the readers' name."""
    return parse_qcow2_header(h, backing=backing)


def layout(h: Qcow2Header) -> tuple[int, int, int]:
    """(entries per L2 table, guest bytes one L2 table maps, L1 entries the virtual size needs)
    after the checks both native readers make before reading a table."""
    if h.extended_l2:
        raise NativeUnsupported("the image uses extended L2 entries (subclusters), which the "
                                "native reader does not read")
    cs = h.cluster_size
    entries = cs // 8
    span = cs * entries
    needed = -(-h.size // span)
    if h.l1_size < needed:
        raise FormatError(f"qcow2 L1 table too small: {h.l1_size} entries for a virtual size of "
                          f"{h.size} bytes, which needs {needed}")
    if h.l1_offset % cs:
        raise FormatError(f"qcow2 L1 table offset {h.l1_offset} is not cluster-aligned; the "
                          "image is corrupt")
    return entries, span, needed


class Qcow2Disk:
    """The guest disk of the image's active layer. As a `delta` (a warm stage: the image's
    backing file is the disk already imported), extents() names only what the delta changes:
    its allocated clusters (data) and its zero clusters (zero); unallocated clusters belong to
    the backing file and are left out, so the map has gaps (`complete` is False)."""

    read_unit = 0

    def __init__(self, header: Qcow2Header, readinto_at: ReadInto, file_size: int,
                 pins: PinnedBytes, *, workers: int = 4, delta: bool = False) -> None:
        self.complete = not delta
        self._l2_entries, self._span, needed = layout(header)
        self.h = header
        self._readinto_at = readinto_at
        self._file_size = file_size
        self._pins = pins
        cs = header.cluster_size
        self._l1 = self._read_table(header.l1_offset, needed * 8, "L1 table")
        distinct = {e & OFFSET_MASK for e in self._l1} - {0}
        if len(distinct) * cs > MAX_L2_BYTES:
            raise NativeUnsupported(f"the image has {len(distinct)} L2 tables ({len(distinct) * cs} "
                                    "bytes), more than the native reader holds in memory")
        for i, e in enumerate(self._l1):
            off = l2_offset(header, i, e)
            if off and off + cs > file_size:
                raise FormatError(f"qcow2 L2 table at byte {off} (L1 entry {i}) lies past the end "
                                  f"of the file ({file_size} bytes): the image is truncated")
        self._tables: dict[int, Future[array[int]]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="qcow2-l2")

    @property
    def size(self) -> int:
        return self.h.size

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ tables

    def _read_exact(self, offset: int, buf: bytearray | memoryview, what: str) -> None:
        view = memoryview(buf)
        if fill_at(self._readinto_at, offset, view) < len(view):
            raise FormatError(f"qcow2 {what} at byte {offset} runs past the end of the file "
                              f"({self._file_size} bytes): the image is truncated")
        self._pins.overlay(offset, view)  # the inspected bytes win over a second answer

    def _read_table(self, offset: int, length: int, what: str) -> array[int]:
        if offset + length > self._file_size:
            raise FormatError(f"qcow2 {what} at byte {offset} ({length} bytes) runs past the end "
                              f"of the file ({self._file_size} bytes): the image is truncated")
        buf = bytearray(length)
        self._read_exact(offset, buf, what)
        return be64_table(bytes(buf))

    def _table(self, index: int) -> array[int]:
        return self._prefetch(index).result()

    def _read_l2(self, offset: int, index: int) -> array[int]:
        table = self._read_table(offset, self.h.cluster_size, f"L2 table {index}")
        check_l2(self.h, table, index)
        return table

    def _entry(self, cluster: int) -> int:
        index, j = divmod(cluster, self._l2_entries)
        if not self._l1[index] & OFFSET_MASK:
            return 0
        return self._table(index)[j]

    # ------------------------------------------------------------------ map

    def extents(self) -> Iterator[Extent]:
        size, span, cb = self.h.size, self._span, self.h.cluster_bits
        gap = _ZERO if self.complete else _GAP  # what an unallocated cluster is
        allocated = [i for i, e in enumerate(self._l1) if e & OFFSET_MASK]
        for i in allocated[:L2_PREFETCH]:
            self._prefetch(i)
        ahead = iter(allocated[L2_PREFETCH:])
        run_start, run_kind = 0, gap
        for index in range(len(self._l1)):
            base = index * span
            end = min(base + span, size)
            if not self._l1[index] & OFFSET_MASK:
                kinds: list[tuple[int, int]] = [(base, gap)]
            else:
                nxt = next(ahead, None)
                if nxt is not None:
                    self._prefetch(nxt)
                table = self._table(index)
                clusters = -(-(end - base) >> cb)
                kinds = []
                prev = None
                for j in range(clusters):
                    kind = _kind(table[j], gap)
                    if kind != prev:
                        kinds.append((base + (j << cb), kind))
                        prev = kind
                # the table stays: the workers read it again while they copy this range
            for start, kind in kinds:
                if kind != run_kind:
                    if start > run_start and run_kind != _GAP:
                        yield Extent(run_start, start - run_start, run_kind == _ZERO)
                    run_start, run_kind = start, kind
        if size > run_start and run_kind != _GAP:
            yield Extent(run_start, size - run_start, run_kind == _ZERO)

    def _prefetch(self, index: int) -> Future[array[int]]:
        """The L2 table's read, started once; every caller shares it."""
        with self._lock:
            fut = self._tables.get(index)
            if fut is None:
                off = self._l1[index] & OFFSET_MASK
                fut = self._pool.submit(self._read_l2, off, index)
                self._tables[index] = fut
        return fut

    # ------------------------------------------------------------------ data

    def readinto_at(self, offset: int, buf: bytearray | memoryview) -> int:
        want = max(0, min(len(buf), self.h.size - offset))
        out = memoryview(buf)[:want]
        cb, cs = self.h.cluster_bits, self.h.cluster_size
        plain: list[list[int]] = []  # [buf offset, host offset, length], merged when contiguous
        zeros: list[tuple[int, int]] = []
        packed: list[tuple[int, int, int, int]] = []  # buf offset, in-cluster, length, entry
        pos = 0
        while pos < want:
            g = offset + pos
            cluster = g >> cb
            inner = g & (cs - 1)
            n = min(cs - inner, want - pos)
            e = self._entry(cluster)
            if e & COMPRESSED:
                packed.append((pos, inner, n, e))
            elif reads_zero(e):
                zeros.append((pos, n))
            else:
                host = data_offset(self.h, e, g) + inner
                if host + n > self._file_size:
                    raise FormatError(f"qcow2 data for guest byte {g} lies past the end of the "
                                      f"file ({self._file_size} bytes): the image is truncated")
                add_run(plain, pos, host, n)
            pos += n
        for bpos, host, n in plain:
            self._read_exact(host, out[bpos : bpos + n], "data cluster")
        for bpos, n in zeros:
            fill_zeros(out[bpos : bpos + n])
        if packed:
            self._read_compressed(packed, out)
        return want

    def _read_compressed(self, packed: list[tuple[int, int, int, int]], out: memoryview) -> None:
        where: list[tuple[int, int, int, int, int]] = []  # bpos, inner, n, host, csize
        for bpos, inner, n, e in packed:
            host, csize = compressed_range(self.h, e)
            if host >= self._file_size:
                raise FormatError(f"qcow2 compressed cluster at byte {host} lies past the end of "
                                  f"the file ({self._file_size} bytes): the image is truncated")
            # the descriptor rounds up to sectors: the last cluster's may pass the end
            where.append((bpos, inner, n, host, min(csize, self._file_size - host)))
        spans = fetch_spans(((host, host + csize) for _b, _i, _n, host, csize in where),
                            lambda start, view: self._read_exact(start, view,
                                                                 "compressed cluster"))
        for bpos, inner, n, host, csize in where:
            at, data = spans.at(host)
            cluster = self._decompress(data[at : at + csize], host)
            out[bpos : bpos + n] = cluster[inner : inner + n]

    def _decompress(self, data: memoryview, host: int) -> bytes:
        return decompress_cluster(self.h, data, host)


_zstd_local = threading.local()  # a ZstdDecompressor must not be shared by two threads
# python-isal's stub declares its error class as an instance (`error: Exception`)
_ISAL_ERROR: type[Exception] = isal_zlib.IsalError  # type: ignore[assignment]


def decompress_cluster(h: Qcow2Header, data: memoryview, host: int) -> bytes:
    """One compressed cluster, which must decompress to exactly one cluster (qemu refuses
    anything else as well)."""
    cs = h.cluster_size
    try:
        if h.compression == "zlib":
            # ISA-L's inflate (python-isal, already used for gzip) is ~15 % faster than zlib's
            out = isal_zlib.decompressobj(-12).decompress(data, cs)
        else:
            out = _zstd_cluster(data, cs)
    except (zlib.error, _ISAL_ERROR, ValueError) as exc:
        raise FormatError(f"qcow2 compressed cluster at byte {host} is corrupt: {exc}") from exc
    except Exception as exc:  # zstandard.ZstdError: not importable without loading zstandard
        raise FormatError(f"qcow2 compressed cluster at byte {host} is corrupt: {exc}") from exc
    if len(out) != cs:
        raise FormatError(f"qcow2 compressed cluster at byte {host} decompressed to {len(out)} "
                          f"bytes instead of {cs}; the image is corrupt")
    return out


def _zstd_cluster(data: memoryview, cs: int) -> bytes:
    import io

    import zstandard  # only images with zstd clusters pay for the import (once)

    dctx = getattr(_zstd_local, "dctx", None)
    if dctx is None:
        dctx = _zstd_local.dctx = zstandard.ZstdDecompressor(max_window_size=1 << 27)
    # qemu fails a cluster whose frame is not fully flushed once the cluster is full: a frame
    # that expands beyond one cluster. Its header says how much it expands to when it records
    # the content size, as qemu's writer does; a frame that does not record it is read as qemu
    # reads it, up to one cluster (python-zstandard offers no bounded one-frame decoder that
    # would tell where a frame ends, and the range also holds the next cluster's frame)
    try:
        declared = zstandard.get_frame_parameters(bytes(data[:18])).content_size
    except zstandard.ZstdError as exc:
        raise ValueError(f"not a zstd frame ({exc})") from None
    if declared != zstandard.CONTENTSIZE_UNKNOWN and declared > cs:
        raise ValueError(f"a zstd frame expands to {declared} bytes, beyond one cluster")
    # stream_reader stops at cs bytes: a frame claiming gigabytes is never expanded
    return _read_upto(dctx.stream_reader(io.BytesIO(data), read_across_frames=True), cs)


def _read_upto(reader: Any, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        piece = reader.read(n - len(out))
        if not piece:
            break
        out += piece
    return bytes(out)


_DATA, _ZERO, _GAP = 0, 1, 2


def _kind(entry: int, unallocated: int) -> int:
    """What a standard L2 entry holds for the extent map: data, zeros (the zero flag), or, with
    no offset, `unallocated` (zeros, or a gap in a delta: the backing file's)."""
    if entry & COMPRESSED:
        return _DATA
    if entry & ZERO_FLAG:
        return _ZERO
    return _DATA if entry & OFFSET_MASK else unallocated


def reads_zero(entry: int) -> bool:
    """A standard L2 entry with the zero flag, or one with no offset (unallocated, and there is
    no backing file): the guest reads zeros. Bit 0 of a compressed entry is part of its offset."""
    if entry & COMPRESSED:
        return False
    return bool(entry & ZERO_FLAG) or not entry & OFFSET_MASK


def check_l2(h: Qcow2Header, table: array[int], index: int) -> None:
    """A v2 image has no zero flag: qemu fails reading such an entry ("Zero cluster entry found
    in pre-v3 image"), and so does this reader, rather than guess."""
    if h.version >= 3:
        return
    for j, e in enumerate(table):
        if e & ZERO_FLAG and not e & COMPRESSED:
            raise FormatError(f"qcow2 zero cluster entry found in a version 2 image (L2 table "
                              f"{index}, entry {j}); the image is corrupt")


def be64_table(data: bytes) -> array[int]:
    """A qcow2 table (big-endian 64-bit entries) as integers."""
    table = array("Q", data[: len(data) - len(data) % 8])
    if table.itemsize != 8:
        raise RuntimeError("array('Q') is not 64-bit here")
    if struct.pack("=H", 1) == b"\x01\x00":
        table.byteswap()
    return table


def l2_offset(h: Qcow2Header, index: int, entry: int) -> int:
    """Where L1 entry `index` puts its L2 table (0: none), checked for alignment as qemu does."""
    off = entry & OFFSET_MASK
    if off % h.cluster_size:
        raise FormatError(f"qcow2 L2 table offset {off} (L1 entry {index}) is not "
                          "cluster-aligned; the image is corrupt")
    return off


def data_offset(h: Qcow2Header, entry: int, guest: int) -> int:
    """Where a standard L2 entry puts the cluster of guest byte `guest`, checked for alignment."""
    host = entry & OFFSET_MASK
    if host % h.cluster_size:
        raise FormatError(f"qcow2 data cluster offset {host} (guest byte {guest}) is not "
                          "cluster-aligned; the image is corrupt")
    return host


def compressed_range(h: Qcow2Header, entry: int) -> tuple[int, int]:
    """(file offset, size) of a compressed cluster; the size is rounded up to sectors, so the
    last cluster's range may pass the end of the file (qemu reads zeros there)."""
    shift = 62 - (h.cluster_bits - 8)
    host = entry & ((1 << shift) - 1)
    sectors = ((entry >> shift) & ((1 << (h.cluster_bits - 8)) - 1)) + 1
    return host, sectors * 512 - (host & 511)
