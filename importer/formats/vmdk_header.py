"""The header of a VMDK sparse extent, parsed once for everyone: the inspector
(formats/headers.py) and the native readers (disks/vmdk.py, disks/vmdk_stream.py), with qemu's
refusals (vmdk_open_vmdk4, vmdk_add_extent in block/vmdk.c) and qemu's words where CDI's tests
look for them ("L1 size too big"), and the inspector's tighter bounds on what a hostile header
can make a reader allocate.

Written by hand: a fixed little-endian structure (VMware's "Virtual Disk Format 5.0"); no
maintained PyPI library reads it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import FormatError

__all__ = ["DEFLATE", "FLAG_MARKERS", "FLAG_ZERO_GRAIN", "GD_AT_END", "MAGIC", "MARKER_EOS",
           "MARKER_FOOTER", "MARKER_GD", "MARKER_GT", "MAX_DIRECTORY_BYTES", "VmdkHeader",
           "parse_vmdk_header"]

MAGIC = b"KDMV"
GD_AT_END = 0xFFFF_FFFF_FFFF_FFFF
FLAG_ZERO_GRAIN = 1 << 2
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
DEFLATE = 1
#: marker types (a metadata marker is a sector: numSectors, size 0, type)
MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = 0, 1, 2, 3
#: the grain directory a reader must hold, bounded like qcow2's L1 table: CDI's
#: invalid-qcow-large-memory fixture (2^57 bytes in tiny grain tables) was reported to stall
#: qemu-img info
MAX_DIRECTORY_BYTES = 32 << 20


@dataclass(frozen=True, slots=True)
class VmdkHeader:
    version: int
    flags: int
    size: int  # guest bytes
    grain: int  # bytes
    gtes: int  # entries per grain table
    gd_offset: int  # bytes, or GD_AT_END
    overhead: int  # bytes: where the grains start
    compressed: bool
    markers: bool

    @property
    def zero_grain(self) -> bool:
        return bool(self.flags & FLAG_ZERO_GRAIN)

    @property
    def gt_span(self) -> int:
        """Guest bytes one grain table maps."""
        return self.gtes * self.grain

    @property
    def gd_entries(self) -> int:
        return -(-self.size // self.gt_span)


def parse_vmdk_header(h: bytes) -> VmdkHeader:
    """A sparse extent header, with qemu's refusals (vmdk_open_vmdk4, vmdk_add_extent) and
    qemu's words where CDI's tests look for them ("L1 size too big")."""
    if len(h) < 79 or not h.startswith(MAGIC):
        raise FormatError("not a vmdk sparse extent header")
    version, flags, capacity, grain, _doff, _dsize, gtes, _rgd, gd, overhead = \
        struct.unpack_from("<IIQQQQIQQQ", h, 4)
    algorithm = struct.unpack_from("<H", h, 77)[0]
    if not 1 <= version <= 3:
        raise FormatError(f"vmdk sparse version {version} is not supported")
    if gtes > 512:
        raise FormatError(f"vmdk L2 table size too big ({gtes} grain table entries; 512 at most)")
    if gtes * grain == 0:
        raise FormatError("vmdk L1 entry size is invalid (a grain or grain table of size 0)")
    if grain > 1 << 16:  # qemu takes up to 2^21 sectors; nobody writes more than 2^7
        raise FormatError(f"vmdk invalid granularity ({grain} sectors), image may be corrupt")
    directory = -(-capacity // (gtes * grain)) * 4
    if directory > MAX_DIRECTORY_BYTES or capacity > 1 << 53:
        raise FormatError(
            f"vmdk L1 size too big: a grain directory of {directory} bytes for a virtual size "
            f"of {capacity * 512} bytes; the header is corrupt or hostile")
    return VmdkHeader(version, flags, capacity * 512, grain * 512, gtes,
                      gd if gd == GD_AT_END else gd * 512, overhead * 512,
                      compressed=algorithm == DEFLATE, markers=bool(flags & FLAG_MARKERS))


