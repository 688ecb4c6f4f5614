"""VMDK files for the tests: what qemu-img writes, and what VMware's exporters write (a
stream-optimized file with its grain directory at the end), built here from a raw disk in the
layout of VMware's "Virtual Disk Format 5.0" specification, because no tool on this machine
writes that layout (qemu-img puts the tables first)."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

SECTOR = 512
GD_AT_END = 0xFFFF_FFFF_FFFF_FFFF


def header(capacity_sectors: int, gd: int, *, grain: int = 128, gtes: int = 512,
           overhead: int = 128, flags: int = 0x30001, desc_sectors: int = 1) -> bytes:
    h = struct.pack("<4sIIQQQQIQQQB4sH", b"KDMV", 3, flags, capacity_sectors, grain, 1,
                    desc_sectors, gtes, 0, gd, overhead, 0, b"\n \r\n", 1)
    return h.ljust(SECTOR, b"\0")


def descriptor(capacity_sectors: int, create_type: str = "streamOptimized") -> bytes:
    text = (f'# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
            f'createType="{create_type}"\n\n# Extent description\n'
            f'RW {capacity_sectors} SPARSE "disk.vmdk"\n\n# The Disk Data Base\n#DDB\n\n'
            'ddb.virtualHWVersion = "14"\nddb.adapterType = "lsilogic"\n')
    return text.encode().ljust(SECTOR, b"\0")


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % SECTOR)


def _marker(sectors: int, kind: int) -> bytes:
    return struct.pack("<QII", sectors, 0, kind).ljust(SECTOR, b"\0")


@dataclass
class Tamper:
    """Ways to spoil a VMware-layout file, each the hostile case a test names."""

    #: grain number -> the LBA (sectors) its marker claims instead of its own
    marker_lba: dict[int, int] = field(default_factory=dict)
    #: grain numbers whose table entry is 1 (a zeroed grain) with the zero-grain flag set
    zeroed: set[int] = field(default_factory=set)
    #: bytes after the end-of-stream marker
    trailer: bytes = b""
    #: marker size field of this grain number replaced
    marker_size: dict[int, int] = field(default_factory=dict)
    #: grain tables written one sector long (their first 128 entries), their marker saying so
    short_tables: bool = False


def vmware_stream_optimized(raw: bytes, *, grain_sectors: int = 128, gtes: int = 512,
                            tamper: Tamper | None = None) -> bytes:
    """The disk `raw` as VMware writes a stream-optimized VMDK: header (directory at the end),
    descriptor, then per grain table its grains (marker + deflated data) and the table behind
    its marker, then the directory, the footer and the end-of-stream marker."""
    t = tamper or Tamper()
    capacity = -(-len(raw) // SECTOR)
    grain = grain_sectors * SECTOR
    grains = -(-capacity // grain_sectors)
    gd_entries = -(-grains // gtes)
    flags = 0x30001 | (0x4 if t.zeroed else 0)
    overhead = 128
    out = bytearray(header(capacity, GD_AT_END, grain=grain_sectors, gtes=gtes,
                           overhead=overhead, flags=flags))
    out += descriptor(capacity)
    out += bytes(overhead * SECTOR - len(out))
    gd = [0] * gd_entries
    for index in range(gd_entries):
        table = [0] * gtes
        for j in range(gtes):
            g = index * gtes + j
            if g >= grains:
                break
            data = raw[g * grain : (g + 1) * grain]
            if g in t.zeroed:
                table[j] = 1
                continue
            if not data.strip(b"\0"):
                continue
            packed = zlib.compress(data.ljust(grain, b"\0") if len(data) < grain else data)
            table[j] = len(out) // SECTOR
            lba = t.marker_lba.get(g, g * grain_sectors)
            size = t.marker_size.get(g, len(packed))
            out += _pad(struct.pack("<QI", lba, size) + packed)
        if any(table):
            body = _pad(struct.pack(f"<{gtes}I", *table))
            if t.short_tables:
                body = body[:SECTOR]
            out += _marker(len(body) // SECTOR, 1)
            gd[index] = len(out) // SECTOR
            out += body
    gd_sectors = -(-gd_entries * 4 // SECTOR)
    out += _marker(gd_sectors, 2)
    gd_at = len(out) // SECTOR
    out += _pad(struct.pack(f"<{gd_entries}I", *gd))
    out += _marker(1, 3)
    out += header(capacity, gd_at, grain=grain_sectors, gtes=gtes, overhead=overhead,
                  flags=flags)
    out += _marker(0, 0)
    out += t.trailer
    return bytes(out)
