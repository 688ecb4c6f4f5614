"""OVA appliances (issue 23): a tar whose first member is an OVF descriptor, then usually a
manifest (.mf), then the disks. The import reads one disk straight out of the tar, never
extracting anything:

* from a source with random access (a file, HTTP with ranges, S3, GCS), the tar's headers are
  read (512 bytes each, the members' data skipped), and the disk is served as a window of the
  source: the native VMDK reader then reads its grains at random;
* from a stream (standard input, a server without ranges), the tar is read in order: the
  descriptor and manifest are kept, members before the disk are skipped, and the disk's bytes
  are the stream the engine reads, once.

The descriptor is parsed (formats/ovf.py) and checked against the manifest before any disk
byte is read; the disk's own manifest digest becomes the source's checksum, verified whenever
the plan reads the disk in order (a stream always does), as for an S3 object's SHA-256.

Tar headers are parsed with tarfile.TarInfo.frombuf, one block at a time, because tarfile's own
readers either need a seekable file (and read every header through it) or consume a stream
member by member without letting us hand the rest of the stream on.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from ..checksum import ChecksumSpec
from ..errors import FormatError, SourceError
from ..formats.ovf import Manifest, OvfDescriptor, OvfDisk, parse_manifest, parse_ovf
from ..quantity import format_bytes
from ..streams import DETECTION_HEAD
from .base import Source, SourceInfo, read_via_readinto

__all__ = ["OvaDiskSource", "looks_like_ova", "open_ova_disk"]

log = logging.getLogger(__name__)
BLOCK = 512
#: what the probe reads of a source read at random: detection's first read (streams.py), so
#: the engine serves it from here instead of asking the source twice
HEAD_SIZE = DETECTION_HEAD
#: a descriptor or manifest larger than this is not one
MAX_SMALL_MEMBER = 4 << 20


def looks_like_ova(head: bytes) -> bool:
    """A ustar header whose member is an .ovf file: what the OVF specification puts first."""
    if len(head) < BLOCK or head[257:262] != b"ustar":
        return False
    try:
        info = tarfile.TarInfo.frombuf(head[:BLOCK], "utf-8", "surrogateescape")
    except tarfile.TarError:
        return False
    return info.name.lower().endswith(".ovf")


@dataclass(frozen=True, slots=True)
class _Member:
    name: str
    offset: int  # of the data, in the tar
    size: int


class _TarWalk:
    """The members of a tar, header after header, over `read(offset, n)` (exactly n bytes or
    fewer at the end); GNU long names and pax paths and sizes understood."""

    def __init__(self, read: Callable[[int, int], bytes], where: str) -> None:
        self._read = read
        self._where = where
        self.pos = 0

    def members(self) -> Iterator[_Member]:
        long_name: str | None = None
        pax: dict[str, str] = {}
        while True:
            head = self._read(self.pos, BLOCK)
            if len(head) < BLOCK or head == bytes(BLOCK):
                return
            try:
                info = tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
            except tarfile.TarError as exc:
                raise FormatError(f"{self._where}: damaged tar header at byte {self.pos} "
                                  f"({exc})") from None
            self.pos += BLOCK
            size = int(pax.get("size", info.size))
            data, padded = self.pos, -(-size // BLOCK) * BLOCK
            if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE):
                body = self._read(data, min(size, MAX_SMALL_MEMBER))
                self.pos += padded
                if info.type == tarfile.GNUTYPE_LONGNAME:
                    long_name = body.rstrip(b"\0").decode("utf-8", "surrogateescape")
                else:
                    pax = _pax_records(body)
                continue
            name = pax.get("path") or long_name or info.name
            long_name, pax = None, {}
            self.pos += padded
            if info.isfile():
                yield _Member(name.removeprefix("./"), data, size)


def _pax_records(body: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    while body:
        length, _, rest = body.partition(b" ")
        if not length.isdigit() or int(length) <= 0:
            break
        record, body = rest[: int(length) - len(length) - 1], body[int(length):]
        key, _, value = record.rstrip(b"\n").partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
    return records


@dataclass(frozen=True, slots=True)
class _Appliance:
    descriptor: OvfDescriptor
    manifest: Manifest | None
    name: str  # the .ovf member's name
    manifest_name: str | None


def _check_small(member: _Member, data: bytes, manifest: Manifest | None, where: str) -> None:
    if manifest is None or member.name not in manifest.digests:
        return
    algo, want = manifest.digests[member.name]
    got = hashlib.new(algo, data).hexdigest()
    if got != want:
        raise FormatError(f"{where}: {member.name} does not match the manifest ({algo} {got}, "
                          f"the manifest says {want}); the appliance was altered or damaged")


def _read_small(read: Callable[[int, int], bytes], member: _Member, where: str) -> bytes:
    if member.size > MAX_SMALL_MEMBER:
        raise FormatError(f"{where}: {member.name} is {member.size} bytes, too large for an "
                          "OVF descriptor or manifest")
    data = read(member.offset, member.size)
    if len(data) != member.size:
        raise FormatError(f"{where}: the OVA ends inside {member.name}")
    return data


def _pick(descriptor: OvfDescriptor, choice: str | None, where: str, pod: bool) -> OvfDisk:
    disks = descriptor.disks
    if not disks:
        raise FormatError(f"{where}: the OVF descriptor lists no disk with a file to import")
    listing = "; ".join(f"{i} {d.href} (disk {d.disk_id}, {format_bytes(d.capacity)})"
                        for i, d in enumerate(disks, 1))
    if choice is None:
        if len(disks) == 1:
            return disks[0]
        how = ("the pod imports single-disk appliances only: make an OVA of the disk wanted, "
               "or import its disk file" if pod else "pick one with --disk N (or its file name)")
        raise FormatError(f"{where} holds {len(disks)} disks: {listing}; {how}")
    for i, d in enumerate(disks, 1):
        if choice in (str(i), d.href, d.disk_id):
            return d
    raise FormatError(f"{where} has no disk {choice!r}; its disks: {listing}")


class OvaDiskSource:
    """One disk of an OVA, as a source of its own: a window onto the OVA's source."""

    def __init__(self, base: Source, appliance: _Appliance, disk: OvfDisk, member: _Member,
                 stream: io.RawIOBase | None) -> None:
        self._base = base
        self._member = member
        self._stream = stream  # the OVA's stream positioned at the disk (no random access)
        binfo = base.info()
        digest = (appliance.manifest.digests.get(member.name)
                  if appliance.manifest is not None else None)
        d = appliance.descriptor
        self.appliance = {
            "vm": d.name, "ovf_id": d.system_id, "cpus": d.cpus, "memory": d.memory,
            "descriptor": appliance.name, "disk": disk.href, "disk_id": disk.disk_id,
            "capacity": disk.capacity, "compression": disk.compression,
            "manifest": appliance.manifest_name,
            "disks": [{"index": i, "file": x.href, "disk_id": x.disk_id,
                       "capacity": x.capacity, "size": x.file_size,
                       "compression": x.compression}
                      for i, x in enumerate(d.disks, 1)],
        }
        self._info = replace(
            binfo, size=member.size, name=f"{binfo.name}:{member.name}",
            checksum=ChecksumSpec(*digest) if digest else None, checksum_required=True,
            details={**binfo.details, "ova": self.appliance})

    def info(self) -> SourceInfo:
        return self._info

    def open_stream(self, offset: int = 0) -> io.RawIOBase:
        if self._stream is not None:
            if offset:
                raise SourceError(f"{self._info.name} is read from a stream and cannot be "
                                  "read again from an offset")
            stream, self._stream = self._stream, None
            return _Window(stream, self._member.size)
        inner = self._base.open_stream(self._member.offset + offset)
        return _Window(inner, self._member.size - offset)

    def read_at(self, offset: int, size: int) -> bytes:
        return read_via_readinto(self, offset, size)

    def readinto_at(self, offset: int, buf: bytearray) -> int:
        end = self._member.size
        if offset >= end:
            return 0
        if offset + len(buf) > end:
            view = memoryview(buf)[: end - offset]
            part = bytearray(len(view))
            n = self._base.readinto_at(self._member.offset + offset, part)
            view[:n] = part[:n]
            return n
        return self._base.readinto_at(self._member.offset + offset, buf)

    def verify(self) -> None:
        self._base.verify()

    def close(self) -> None:
        """The OVA's source is closed by whoever opened it."""
        if self._stream is not None:
            self._stream.close()


class _Window(io.RawIOBase):
    """The first `size` bytes of a stream; the stream ending earlier is a truncated OVA."""

    def __init__(self, inner: io.RawIOBase, size: int) -> None:
        self._inner = inner
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        view = memoryview(b)[: self._left]
        n = self._inner.readinto(view) or 0
        if n == 0:
            raise FormatError(f"the OVA ends {self._left} bytes before the end of its disk")
        self._left -= n
        return n

    def close(self) -> None:
        self._inner.close()
        super().close()


class _Forward:
    """read(offset, n) over a stream read once, in order: offsets only grow; skipped bytes are
    read and dropped."""

    def __init__(self, stream: io.RawIOBase) -> None:
        self.stream = stream
        self._head = b""  # read from the stream, not yet handed out
        self.pos = 0

    def peek(self, n: int) -> bytes:
        """The next `n` bytes (fewer at the end), left to be read again."""
        self._head = self._raw(n)
        self.pos -= len(self._head)
        return self._head

    def _raw(self, n: int) -> bytes:
        out = bytearray()
        if self._head:
            out += self._head[:n]
            self._head = self._head[n:]
        buf = bytearray(min(max(n - len(out), 0), 1 << 20))
        while len(out) < n:
            view = memoryview(buf)[: min(len(buf), n - len(out))]
            got = self.stream.readinto(view) or 0
            if got == 0:
                break
            out += view[:got]
        self.pos += len(out)
        return bytes(out)

    def read(self, offset: int, n: int) -> bytes:
        if offset < self.pos:
            raise SourceError("the OVA's members are out of order for a stream")
        while self.pos < offset:
            if not self._raw(min(offset - self.pos, 1 << 20)):
                return b""
        return self._raw(n)

    def rest(self) -> io.RawIOBase:
        """The stream from the current position (what is held back comes first)."""
        return _Chain(self._head, self.stream) if self._head else self.stream


class _Chain(io.RawIOBase):
    def __init__(self, head: bytes, inner: io.RawIOBase) -> None:
        self._head = memoryview(head)
        self._inner = inner

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._inner.readinto(b) or 0

    def close(self) -> None:
        self._inner.close()
        super().close()


def open_ova_disk(base: Source, choice: str | None, *, forced: bool, pod: bool,
                  first_if_many: bool = False) -> tuple[Source, bytes]:
    """`base` itself when it is not an OVA (and `forced` is false), else the chosen disk of
    the appliance as a source; and, for a source read at random that is not an OVA, the head
    that was read to tell (`head_size` bytes: the first read detection makes, so it is not
    made twice). `first_if_many`: inspect looks at the first of several disks."""
    info = base.info()
    where = info.name or "the source"
    read: Callable[[int, int], bytes]
    if info.random_access and info.size:
        forward = None
        head = base.read_at(0, min(HEAD_SIZE, info.size))

        def read(offset: int, n: int) -> bytes:  # the descriptor usually lies in the head
            if offset + n <= len(head):
                return head[offset:offset + n]
            return base.read_at(offset, n)
    else:
        forward = _Forward(base.open_stream(0))
        head = forward.peek(BLOCK)  # handed back to whoever reads next
        read = forward.read
    if not looks_like_ova(head):
        if forced:
            raise FormatError(f"{where} is not an OVA: its first member is not an .ovf "
                              "descriptor (--format ova)")
        if forward is None:
            return base, head
        return _Replayed(base, forward.rest()), b""
    walk = _TarWalk(read, where)
    descriptor: tuple[_Member, bytes] | None = None
    manifest: Manifest | None = None
    manifest_name: str | None = None
    ovf: OvfDescriptor | None = None
    disk: OvfDisk | None = None
    for member in walk.members():
        lower = member.name.lower()
        if lower.endswith(".ovf") and descriptor is None:
            descriptor = (member, _read_small(read, member, where))
            _check_small(member, descriptor[1], manifest, where)
            ovf = parse_ovf(descriptor[1])
            disk = _pick(ovf, choice if choice or not first_if_many else "1", where, pod)
        elif lower.endswith(".mf") and manifest is None:
            manifest = parse_manifest(_read_small(read, member, where), member.name)
            manifest_name = member.name
            if descriptor is not None:
                _check_small(descriptor[0], descriptor[1], manifest, where)
        elif ovf is not None and disk is not None and member.name == disk.href:
            appliance = _Appliance(ovf, manifest, descriptor[0].name if descriptor else "",
                                   manifest_name)
            if manifest is None:
                log.warning("%s has no manifest (.mf) before its disk: the disk's bytes are "
                            "not checked against one", where)
            elif member.name not in manifest.digests:
                log.warning("the manifest of %s lists no digest for %s", where, member.name)
            if disk.file_size is not None and disk.file_size != member.size:
                raise FormatError(f"{where}: {member.name} is {member.size} bytes, but the "
                                  f"OVF descriptor says {disk.file_size}")
            log.info("OVA %s: VM %r, disk %s (%s, %s in the OVA%s)", where, ovf.name,
                     disk.href, format_bytes(disk.capacity), format_bytes(member.size),
                     ", gzip-compressed" if disk.compression == "gzip" else "")
            stream_rest = None
            if forward is not None:
                forward.read(member.offset, 0)  # positioned at the disk's first byte
                stream_rest = forward.rest()
            return OvaDiskSource(base, appliance, disk, member, stream_rest), b""
    if ovf is None:
        raise FormatError(f"{where}: the OVA holds no OVF descriptor")
    assert disk is not None
    raise FormatError(f"{where}: the OVA holds no file {disk.href!r}, which the OVF "
                      "descriptor names for its disk")


class _Replayed:
    """A stream source after its first bytes were looked at: the same stream again, whole."""

    def __init__(self, base: Source, stream: io.RawIOBase) -> None:
        self._base = base
        self._stream: io.RawIOBase | None = stream

    def info(self) -> SourceInfo:
        return self._base.info()

    def open_stream(self, offset: int = 0) -> io.RawIOBase:
        if offset or self._stream is None:
            return self._base.open_stream(offset)  # its own error: a stream is read once
        stream, self._stream = self._stream, None
        return stream

    def read_at(self, offset: int, size: int) -> bytes:
        return self._base.read_at(offset, size)

    def readinto_at(self, offset: int, buf: bytearray) -> int:
        return self._base.readinto_at(offset, buf)

    def verify(self) -> None:
        self._base.verify()

    def close(self) -> None:
        pass  # the source is closed by whoever opened it
