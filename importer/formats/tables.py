"""Allocation tables checked against the file's length: a truncated image is refused.

qemu reads past the end of a vmdk or vdi file as zeros, so an image cut short (a download that
stopped half way) converts "successfully" with data silently missing. qcow2 and vhdx are caught
by their own readers; for monolithicSparse vmdk and vdi every table entry is checked here
before the converter runs: each grain or block it points at must lie inside the file.

The tables are read through the inspector's pinned reader, so qemu-img later reads the very
tables that were checked (formats/pinned.py). Entries are scanned with array/memoryview (no
per-entry Python objects for the unallocated ones): a 1 TiB disk has 16 M grain entries.

Written by hand: no maintained library walks these tables (qemu's own code is C, in-process).
"""

from __future__ import annotations

import array
import struct
import sys
from collections.abc import Callable

from ..errors import FormatError
from .vmdk_header import GD_AT_END, VmdkHeader

__all__ = ["MAX_TABLE_BYTES", "READ_RUN", "check_vdi_blocks", "check_vmdk_grains", "table_runs",
           "u32le"]

ReadAt = Callable[[int, int], bytes]
#: table bytes a check may pin: a fully allocated 1 TiB vmdk of 64 KiB grains has 64 MiB
MAX_TABLE_BYTES = 64 << 20
#: tables are read in runs of adjacent tables, at most this much per read
READ_RUN = 4 << 20
_TRUNCATED = ("the image is truncated: {what} points at bytes {start}-{end}, past the end of "
              "the file ({size} bytes); the file was probably cut short (an interrupted "
              "download or copy): fetch it again")


def u32le(data: bytes | bytearray | memoryview) -> array.array[int]:
    """A table of little-endian 32-bit entries (vmdk, vdi) as integers."""
    entries = array.array("I")
    entries.frombytes(data[: len(data) // 4 * 4])
    if sys.byteorder != "little":  # pragma: no cover - x86_64 and arm64 are little-endian
        entries.byteswap()
    return entries


def _need_budget(total: int, what: str) -> None:
    if total > MAX_TABLE_BYTES:
        raise FormatError(f"the {what} take {total} bytes, more than the {MAX_TABLE_BYTES >> 20} "
                          "MiB this importer reads to check an image for truncation; convert "
                          "it to qcow2 first (qemu-img convert -O qcow2)")


def _read(read_at: ReadAt, offset: int, length: int, size: int, what: str) -> bytes:
    if offset + length > size:
        raise FormatError(_TRUNCATED.format(what=what, start=offset, end=offset + length - 1,
                                            size=size))
    data = read_at(offset, length)
    if len(data) != length:
        raise FormatError(f"{what}: read {len(data)} of {length} bytes at {offset}; the image "
                          "is truncated")
    return data


def table_runs(offsets: list[int], length: int) -> list[tuple[int, int]]:
    """Adjacent tables of `length` bytes at `offsets` merged into reads: (start, count)."""
    runs: list[tuple[int, int]] = []
    for off in sorted(set(offsets)):
        if runs:
            start, count = runs[-1]
            if start + count * length == off and (count + 1) * length <= READ_RUN:
                runs[-1] = (start, count + 1)
                continue
        runs.append((off, 1))
    return runs


def check_vmdk_grains(read_at: ReadAt, size: int, h: VmdkHeader) -> None:
    """monolithicSparse: the grain directory, every grain table it names, every grain."""
    if h.compressed or h.gd_offset == GD_AT_END:
        return  # compressed grains (streamOptimized): the native readers check each grain
    gtes, gd_sector = h.gtes, h.gd_offset // 512
    grain_bytes, per_table = h.grain, h.gt_span
    disk = h.size
    n_tables = -(-disk // per_table)
    _need_budget(n_tables * 4, "vmdk grain directory")
    directory = u32le(_read(read_at, gd_sector * 512, n_tables * 4, size,
                             "the vmdk grain directory"))
    tables = [(i, sector * 512) for i, sector in enumerate(directory) if sector]
    _need_budget(len(tables) * gtes * 4, "vmdk grain tables")
    where: dict[int, list[int]] = {}
    for i, off in tables:
        where.setdefault(off, []).append(i)
    for start, count in table_runs(list(where), gtes * 4):
        data = _read(read_at, start, count * gtes * 4, size, f"vmdk grain table {start // 512}")
        for k in range(count):
            entries = u32le(data[k * gtes * 4: (k + 1) * gtes * 4])
            top = max(entries)  # 0: unallocated, 1: a zeroed grain (no data)
            if top <= 1 or top * 512 + grain_bytes <= size:
                continue  # the furthest grain of the table is inside: all are
            for index in where[start + k * gtes * 4]:
                _check_table(entries, index, per_table, grain_bytes, disk, size)


def _check_table(entries: array.array[int], index: int, per_table: int, grain_bytes: int,
                 disk: int, size: int) -> None:
    """The grains of table `index` whose data runs past the end (a last, partial grain of the
    disk may end early)."""
    for j, sector in enumerate(entries):
        if sector <= 1:
            continue
        guest = index * per_table + j * grain_bytes
        need = min(grain_bytes, disk - guest)
        if need > 0 and sector * 512 + need > size:
            raise FormatError(_TRUNCATED.format(
                what=f"the grain at guest byte {guest}", start=sector * 512,
                end=sector * 512 + need - 1, size=size))


VDI_UNALLOCATED = 0xFFFFFFFF
VDI_DISCARDED = 0xFFFFFFFE


def check_vdi_blocks(read_at: ReadAt, size: int, header: bytes, disk_size: int) -> None:
    """Every allocated block of the block map inside the file."""
    bmap, data_start, block, extra, blocks = struct.unpack_from("<II", header, 0x154) + \
        struct.unpack_from("<III", header, 0x178)
    if block == 0 or block % 512 or extra % 512:
        raise FormatError(f"vdi block size {block} (+{extra}) is invalid; the header is corrupt")
    _need_budget(blocks * 4, "vdi block map")
    entries = u32le(_read(read_at, bmap, blocks * 4, size, "the vdi block map"))
    allocated = [(i, e) for i, e in enumerate(entries) if e < VDI_DISCARDED]
    if not allocated:
        return
    # the block furthest into the file decides; any one past the end is reported
    i, e = max(allocated, key=lambda p: p[1])
    start = data_start + e * (block + extra) + extra
    need = min(block, disk_size - i * block)
    if need > 0 and start + need > size:
        raise FormatError(_TRUNCATED.format(what=f"the block at guest byte {i * block}",
                                            start=start, end=start + need - 1, size=size))
