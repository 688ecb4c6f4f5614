"""The qcow2 header, parsed once for everyone: the inspector (formats/headers.py), the native
readers (disks/qcow2.py, disks/qcow2_stream.py) and the delta stage all read it here, with
qemu's own refusals (qcow2_do_open in block/qcow2.c) and qemu's words, so an image qemu-img
refuses is refused by every path, and no path trusts a field another path checked.

Written by hand: the format is a fixed big-endian structure (docs/interop/qcow2.txt in QEMU's
tree) and no maintained PyPI library reads it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import FormatError, UnsafeImageError

__all__ = ["KNOWN_INCOMPAT", "MAX_L1_BYTES", "Qcow2Header", "parse_qcow2_header", "sector_size"]

MAGIC = b"QFI\xfb"
INCOMPAT_DIRTY, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE = 1, 2, 4
INCOMPAT_COMPRESSION, INCOMPAT_EXTL2 = 8, 16
KNOWN_INCOMPAT = 0b11111  # dirty, corrupt, external data file, compression type, ext. L2
#: the L1 table a reader must hold: qemu's bound (QCOW_MAX_L1_SIZE); CDI's
#: invalid-qcow-large-memory fixture asks for more
MAX_L1_BYTES = 32 << 20
#: qemu's bounds (block/qcow2.h): refcount table bytes, snapshots, snapshot table bytes
QCOW_MAX_REFTABLE_SIZE = 8 << 20
QCOW_MAX_SNAPSHOTS = 65536
QCOW_MAX_SNAPSHOTS_SIZE = 64 << 20
SNAPSHOT_HEADER_MIN = 40  # a snapshot table entry's fixed part


@dataclass(frozen=True, slots=True)
class Qcow2Header:
    version: int
    cluster_bits: int
    size: int  # the virtual size qemu exposes: whole sectors
    l1_size: int
    l1_offset: int
    compression: str  # zlib or zstd
    extended_l2: bool
    backing_offset: int = 0
    backing_length: int = 0
    header_length: int = 72

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits


def sector_size(size: int) -> int:
    """The virtual size qemu exposes: whole sectors, rounded *down* (bs->total_sectors =
    size / 512), where a raw file's length is rounded up."""
    return size - size % 512


def parse_qcow2_header(h: bytes, *, backing: bool = False) -> Qcow2Header:
    """The header (its first 112 bytes or more), checked as qemu's qcow2_do_open checks it.
    `backing`: a backing file is accepted and reported (a delta stage, whose backing file is
    never opened; the inspector, which names it in its own refusal); otherwise refused."""
    if len(h) < 72 or not h.startswith(MAGIC):
        raise FormatError(f"truncated or invalid qcow2 header ({len(h)} bytes)")
    (version, backing_off, backing_len, cluster_bits, size, crypt, l1_size, l1_offset) = \
        struct.unpack_from(">IQIIQIIQ", h, 4)
    if version not in (2, 3):
        raise FormatError(f"qcow2 version {version} is not supported (2 and 3 are)")
    if not 9 <= cluster_bits <= 21:
        raise FormatError(f"qcow2 cluster_bits {cluster_bits} is invalid")
    if size > 1 << 62:
        raise FormatError(f"qcow2 virtual size {size} is implausible")
    if l1_size * 8 > MAX_L1_BYTES:
        raise FormatError(f"qcow2 L1 size too big ({l1_size} entries): the header is corrupt or "
                          "hostile")
    header_length = 72
    compression, ext_l2 = "zlib", False
    if version == 3:
        header_length, compression, ext_l2 = _v3_fields(h, cluster_bits)
    _check_open(h, cluster_bits)
    if backing_off and not backing:
        raise UnsafeImageError("qcow2 image has a backing file; it would be read from this "
                               "host; refusing")
    if crypt:
        raise UnsafeImageError("qcow2 image is encrypted; import a decrypted image")
    return Qcow2Header(version, cluster_bits, sector_size(size), l1_size, l1_offset,
                       compression, ext_l2, backing_off, backing_len, header_length)


def _v3_fields(h: bytes, cluster_bits: int) -> tuple[int, str, bool]:
    """header_length, compression type, extended L2 of a version 3 header."""
    if len(h) < 104:
        raise FormatError("truncated qcow2 v3 header")
    incompat, _compat, _autoclear, refcount_order, header_length = struct.unpack_from(
        ">QQQII", h, 72)
    if header_length < 104:
        raise FormatError(f"qcow2 header_length {header_length} is too small (104 at least)")
    if header_length > 1 << cluster_bits:
        raise FormatError(f"qcow2 header exceeds cluster size (header_length {header_length})")
    if refcount_order > 6:
        raise FormatError("qcow2 reference count entry width too large; may not exceed 64 bits "
                          f"(refcount_order {refcount_order})")
    if incompat & INCOMPAT_DATA_FILE:
        raise UnsafeImageError(
            "qcow2 image keeps its data in an external data file, which would be read from "
            "this host; convert it to a self-contained image first")
    if incompat & INCOMPAT_CORRUPT:
        raise FormatError("qcow2 image is marked corrupt; repair it with qemu-img check -r all")
    if incompat & ~KNOWN_INCOMPAT:
        raise UnsafeImageError(f"qcow2 image uses unknown incompatible features "
                               f"(0x{incompat:x}); refusing to let qemu-img guess")
    compression = "zlib"
    if incompat & INCOMPAT_COMPRESSION:
        if header_length < 105 or len(h) < 105:
            raise FormatError("qcow2 header announces a compression type but has no field for it")
        if h[104] not in (0, 1):
            raise FormatError(f"qcow2 compression type {h[104]} is unknown (0 zlib, 1 zstd)")
        compression = "zstd" if h[104] == 1 else "zlib"
    return header_length, compression, bool(incompat & INCOMPAT_EXTL2)


def _check_open(h: bytes, cluster_bits: int) -> None:
    """qcow2_do_open's refusals that do not depend on reading tables: each exits 0 in a
    reader that skips them, where qemu-img fails."""
    cs = 1 << cluster_bits
    refcount_offset, refcount_clusters, nb_snapshots, snapshots_offset = \
        struct.unpack_from(">QIIQ", h, 48)
    if refcount_offset % cs:
        raise FormatError(f"qcow2 invalid reference count table offset {refcount_offset} (not "
                          "cluster-aligned)")
    if refcount_clusters == 0:
        raise FormatError("qcow2 image does not contain a reference count table")
    if refcount_clusters > QCOW_MAX_REFTABLE_SIZE >> cluster_bits:
        raise FormatError(f"qcow2 reference count table too large ({refcount_clusters} "
                          "clusters)")
    if nb_snapshots > QCOW_MAX_SNAPSHOTS or nb_snapshots * SNAPSHOT_HEADER_MIN > \
            QCOW_MAX_SNAPSHOTS_SIZE:
        raise FormatError(f"qcow2 snapshot table too large ({nb_snapshots} snapshots; qemu "
                          f"allows {QCOW_MAX_SNAPSHOTS})")
    if nb_snapshots and (snapshots_offset % cs or
                         snapshots_offset + nb_snapshots * SNAPSHOT_HEADER_MIN > 1 << 63):
        raise FormatError(f"qcow2 snapshot table offset invalid ({snapshots_offset}: not "
                          "cluster-aligned)")
    # tables overlapping each other are read by qemu as they are (qemu-img convert accepts
    # them): only writers must care, and this reader does what qemu does
