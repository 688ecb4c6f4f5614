"""What every source offers the core: facts about the object, a resumable stream, and (when the
transport allows it) random access. A request body is just another stream."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..checksum import ChecksumSpec
from ..disks.base import Extent
from ..streams import PositionedReader

__all__ = ["ExtentSource", "RandomAccessFile", "SequentialReader", "Source", "SourceInfo",
           "Transactional", "read_via_readinto"]


@dataclass(frozen=True, slots=True)
class SourceInfo:
    size: int | None  # bytes as stored at the source; None if unknown
    random_access: bool  # any byte range can be read (HTTP Range, ranged GET, local file)
    name: str  # for logs only: never decide a format from a name
    #: the transport's own description of the object version (ETag), for logs and pinning
    version: str | None = None
    #: a checksum the object carries (an S3 SHA-256 field, GCS crc32c/md5), verified when the
    #: plan reads every byte in order
    checksum: ChecksumSpec | None = None
    #: that checksum must be verified, so the plan reads in order (an OVA's manifest digest)
    checksum_required: bool = False
    #: a local regular file, by a path another process (qemu-img) can open
    local_path: Path | None = None
    #: metadata the source carries for the caller (a container image's KUBEVIRT_IO_ labels)
    labels: dict[str, str] = field(default_factory=dict)
    #: why random access is impossible, for the log when the plan has to stage
    sequential_reason: str | None = None
    #: the most parallel readers the server serves (an imageio backend's max_readers)
    max_readers: int | None = None
    #: the bytes are a guest's disk itself (an oVirt raw transfer, a VMware disk over NBD): they
    #: are written as they are, never sniffed for a format; a guest may keep anything on its
    #: disk, a qcow2 file's bytes included, and must not be converted for it
    guest_data: bool = False
    #: the source's extent map names only what changed since the previous checkpoint (a warm
    #: stage): everything outside it stays as the target holds it
    changes_only: bool = False
    #: what the front-ends report beside the result (the VDDK version and host)
    details: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class Source(Protocol):
    def info(self) -> SourceInfo: ...

    def open_stream(self, offset: int = 0) -> io.RawIOBase:
        """Bytes from `offset` to the end; reconnects by itself after transient failures."""
        ...

    def read_at(self, offset: int, size: int) -> bytes:
        """Exactly `size` bytes at `offset` (fewer only at the end). Only when random_access.
        Must be safe to call from several threads at once."""
        ...

    def readinto_at(self, offset: int, buf: bytearray) -> int:
        """read_at into a caller's (reused) buffer; returns the number of bytes."""
        ...

    def verify(self) -> None:
        """Called after the plan read all it needs and before the target is committed: a
        source that checks integrity out of band (a registry blob's digest over bytes read at
        random) raises here. Others do nothing."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ExtentSource(Protocol):
    """A source that knows which of its bytes are data and which read as zeros (the imageio
    daemon's extents): a raw image from it is copied by that map, zero runs never fetched."""

    def extent_map(self) -> list[Extent] | None:
        """Data and zero runs covering the whole object, or None when the server has none."""
        ...


@runtime_checkable
class Transactional(Protocol):
    """A source that holds something on the server for the import (an oVirt image transfer
    locks the disk) and must be told how the import ended: `end(True)` after success (the
    target committed), `end(False)` after a failure or a signal; at most once, before close."""

    def end(self, ok: bool) -> None: ...


def read_via_readinto(source: Source, offset: int, size: int) -> bytes:
    """read_at for sources whose primitive is readinto_at: clipped to the object's end."""
    total = source.info().size
    if total is not None:
        size = max(0, min(size, total - offset))
    buf = bytearray(size)
    n = source.readinto_at(offset, buf)
    return bytes(buf) if n == size else bytes(buf[:n])


class RandomAccessFile(PositionedReader):
    """A seekable read-only file over Source.read_at, for libraries that want a file object
    (python-xz, the header inspectors). One instance per thread."""

    def __init__(self, source: Source, size: int) -> None:
        self._source = source
        self._size = size
        self._pos = 0

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        data = self._source.read_at(self._pos, n)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


class SequentialReader(io.RawIOBase):
    """Bytes in order from `offset` through a source's readinto_at (which retries by itself):
    the one sequential reader for sources whose transport has no stream of its own (GCS, VDDK).
    With `chunk`, each read asks for that many bytes into a buffer of its own (a GCS request
    costs a round trip, so reads are large whatever the caller asks); without, the caller's
    buffer is filled directly."""

    def __init__(self, readinto_at: Callable[[int, bytearray], int], offset: int,
                 chunk: int | None = None) -> None:
        self._readinto_at = readinto_at
        self._pos = offset
        self._buf = bytearray(chunk) if chunk else None
        self._have = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._buf is None:
            n = self._readinto_at(self._pos, b)  # type: ignore[arg-type]
            self._pos += n
            return n
        if not self._have:
            n = self._readinto_at(self._pos, self._buf)
            if n == 0:
                return 0
            self._pos += n
            self._have = memoryview(self._buf)[:n]
        n = min(len(b), len(self._have))
        b[:n] = self._have[:n]
        self._have = self._have[n:]
        return n
