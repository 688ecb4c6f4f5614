"""What the layers say about /disk: tar entries read in order, whiteouts applied top-down, and
the one disk file found (docs/pod-contract.md 4.4.1 and 4.4.3, with quirk Q13 fixed: the topmost
version wins and whiteouts count).

Layer semantics (OCI image spec, "Representing Changes"): an entry `dir/.wh.NAME` deletes NAME
from the layers below, `dir/.wh..wh..opq` hides everything below in dir, and a non-directory at
`disk` replaces the directory. Only direct children of disk/ matter: the image must hold exactly
one, a regular file."""

from __future__ import annotations

import contextlib
import io
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from ...errors import FormatError, UnsafeImageError
from ...formats.codecs import open_decoder, sniff_codec
from ...formats.peek import PeekableStream
from ...quantity import format_bytes
from ...streams import PositionedReader, drain

__all__ = ["DiskEntry", "DiskView", "LayerTar", "disk_child", "forget_members", "normalise",
           "relevant"]

DISK = "disk"
OPAQUE = ".wh..wh..opq"
WHITEOUT = ".wh."


def _kind(m: tarfile.TarInfo) -> str:
    if m.isreg():
        return "regular file"
    if m.isdir():
        return "directory"
    if m.issym():
        return f"symlink to {m.linkname!r}"
    if m.islnk():
        return f"hard link to {m.linkname!r}"
    return "special file"


def normalise(name: str, where: str) -> str:
    """The entry's path inside the image, or UnsafeImageError for names that climb out of it
    (CDI: "content filepath is tainted")."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeImageError(f"{where}: the entry {name!r} climbs out of the image with '..'; "
                               "refusing the image")
    return posixpath.join(*parts) if parts else ""


def relevant(path: str) -> bool:
    """Entries that can change what disk/ holds."""
    return path in (DISK, WHITEOUT + DISK) or path.startswith(DISK + "/")


def disk_child(path: str) -> tuple[str, bool] | None:
    """(name of the direct child of disk/, whether the entry is that child itself) for
    entries at or under disk/<child>; None for anything else."""
    if not path.startswith(DISK + "/"):
        return None
    child, _, rest = path[len(DISK) + 1:].partition("/")
    return child, not rest


@dataclass(slots=True)
class DiskEntry:
    """One direct child of disk/ as the merged image shows it."""

    name: str
    kind: str
    layer: int  # 1-based, bottom first, as users count layers
    size: int = 0
    #: where the file's bytes start in the layer's uncompressed tar stream
    offset_data: int = 0
    member_offset: int = 0
    #: a GNU/PAX sparse member: its bytes are not one contiguous run in the tar
    sparse: bool = False

    @property
    def path(self) -> str:
        return f"{DISK}/{self.name}"

    def describe(self) -> str:
        extra = f", {format_bytes(self.size)}" if self.kind == "regular file" else ""
        return f"{self.path} ({self.kind}{extra}, layer {self.layer})"


@dataclass(slots=True)
class DiskView:
    """The disk/ directory of the merged image, built from the top layer down."""

    found: dict[str, DiskEntry] = field(default_factory=dict)
    hidden: set[str] = field(default_factory=set)
    all_hidden: bool = False
    replaced_by: str | None = None  # `disk` itself is not a directory in an upper layer

    def visible(self, name: str) -> bool:
        return not self.all_hidden and name not in self.hidden and name not in self.found

    def candidate(self, m: tarfile.TarInfo, path: str, layer: int) -> DiskEntry | None:
        """The entry when it is a regular file directly under disk/ that this view (the layers
        above) lets through: the topmost disk file."""
        child = disk_child(path)
        if (child is None or not child[1] or not m.isreg() or child[0].startswith(WHITEOUT)
                or not self.visible(child[0])):
            return None
        return DiskEntry(child[0], "regular file", layer, m.size, m.offset_data, m.offset,
                         sparse=m.sparse is not None)

    def apply(self, layer: int, members: list[tuple[str, tarfile.TarInfo]], where: str) -> None:
        """Add one layer's entries below the layers already applied."""
        hide: set[str] = set()
        hide_all = False
        in_layer: set[str] = set()
        for path, m in members:
            if path == DISK:
                if not m.isdir():
                    if not self.all_hidden and self.replaced_by is None:
                        self.replaced_by = f"{_kind(m)} in layer {layer}"
                    hide_all = True
                continue
            if path == WHITEOUT + DISK:
                hide_all = True
                continue
            child = disk_child(path)
            if child is None:
                continue
            name, direct = child
            if direct and name == OPAQUE:
                hide_all = True
                continue
            if direct and name.startswith(WHITEOUT):
                hide.add(name[len(WHITEOUT):])
                continue
            if not direct:  # something under disk/<name>/: name is a directory here
                if self.visible(name):
                    self.found[name] = DiskEntry(name, "directory", layer)
                    in_layer.add(name)
                continue
            if name in in_layer and self.found[name].kind == "regular file" and m.isreg():
                raise FormatError(f"{where}: {DISK}/{name} appears twice in layer {layer}; "
                                  "rebuild the image")
            if self.visible(name):
                self.found[name] = DiskEntry(name, _kind(m), layer, m.size if m.isreg() else 0,
                                             m.offset_data, m.offset)
                in_layer.add(name)
        self.hidden |= hide
        self.all_hidden = self.all_hidden or hide_all

    def the_disk(self, where: str, layers: int) -> DiskEntry:
        """Exactly one regular file, or an error listing what the image holds."""
        entries = sorted(self.found.values(), key=lambda e: e.name)
        if self.replaced_by and not entries:
            raise FormatError(f"{where}: /{DISK} is a {self.replaced_by}, not a directory; "
                              "container disks keep the image at /disk/<name>")
        if not entries:
            raise FormatError(f"{where}: failed to find a VM disk image file in the container "
                              f"image: nothing under /{DISK}/ in its {layers} layer(s); container "
                              "disks keep the image at /disk/<name>")
        if len(entries) > 1 or entries[0].kind != "regular file":
            listing = "; ".join(e.describe() for e in entries)
            raise FormatError(f"{where}: /{DISK}/ must hold exactly one regular file, but it "
                              f"holds: {listing}. Remove the others in the image (or whiteout "
                              "them in an upper layer)")
        return entries[0]


def forget_members(tf: tarfile.TarFile) -> None:
    """tarfile keeps every member it met, with no public way to stop it; a base layer can have
    100k entries and only the disk's matter."""
    members: list[tarfile.TarInfo] = tf.__dict__["members"]
    if len(members) > 1024:
        members.clear()


class _ForwardFile(PositionedReader):
    """A decoded layer stream as the seekable file tarfile's "r:" mode wants, seeking forward
    only (by reading). tarfile's stream mode ("r|") instead copies every byte through its own
    buffer two or three times (join, slice, remainder): 4 GiB of disk took 3x longer than the
    same data over HTTP. Here tarfile parses the headers (ustar, GNU, PAX) and the disk's bytes
    are read straight into the caller's buffer."""

    def __init__(self, raw: io.RawIOBase) -> None:
        self._raw = raw
        self._pos = 0
        self._skip = bytearray(1 << 20)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset + (self._pos if whence == io.SEEK_CUR else 0)
        if whence == io.SEEK_END or target < self._pos:
            raise io.UnsupportedOperation("a layer stream is read forward only")
        while self._pos < target:
            n = self._raw.readinto(memoryview(self._skip)[:min(len(self._skip), target - self._pos)])
            if not n:
                break  # tarfile notices the end itself
            self._pos += n
        return self._pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._raw.readinto(b) or 0
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        """Exactly `size` bytes unless the stream ends: tarfile reads headers and sparse runs
        this way and takes a short answer for the end (a decoder may return less)."""
        if size < 0:
            return self.readall()
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = self.readinto(view[got:])
            if not n:
                break
            got += n
        return bytes(buf[:got])


class _MemberReader(io.RawIOBase):
    """One regular member's bytes, read from the layer stream at its current position."""

    def __init__(self, f: _ForwardFile, m: tarfile.TarInfo) -> None:
        f.seek(m.offset_data)
        self._f = f
        self._left = m.size

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        n = self._f.readinto(memoryview(b)[:min(len(b), self._left)])
        self._left -= n
        return n


class LayerTar:
    """The entries of one layer read in order: the blob's bytes (already digest-checked by the
    stream given), decompressed by magic (gzip, zstd, or none, whatever the media type says,
    as CDI sniffs too), headers parsed by tarfile over a forward-only file."""

    def __init__(self, blob: io.RawIOBase, where: str) -> None:
        self.where = where
        self._blob = blob
        peek = PeekableStream(blob)
        codec = sniff_codec(peek.peek_bytes(8))
        self.codec = codec.name if codec else None
        self._data: io.RawIOBase = open_decoder(codec, peek) if codec else peek
        self._file = _ForwardFile(self._data)
        try:
            with self.blame():
                self._tar = tarfile.open(  # noqa: SIM115 - closed by close()
                    fileobj=self._file, mode="r:")
        except tarfile.TarError as exc:
            with self.blame():
                raise FormatError(f"{where} is not a tar archive ({exc})") from exc

    @contextlib.contextmanager
    def blame(self) -> Iterator[None]:
        """A codec or tar error inside a blob whose digest does not match is the blob's fault:
        read the blob to its end so that the digest error, the real cause, is raised instead."""
        try:
            yield
        except FormatError:
            drain = getattr(self._blob, "drain", None)
            if drain is not None:
                drain()
            raise

    def members(self) -> Iterator[tuple[str, tarfile.TarInfo]]:
        while True:
            try:
                with self.blame():
                    m = self._tar.next()
            except tarfile.TarError as exc:
                with self.blame():
                    raise FormatError(f"{self.where} is not a valid tar archive ({exc})") from exc
            if m is None:
                return
            forget_members(self._tar)
            yield normalise(m.name, self.where), m

    def open_member(self, m: tarfile.TarInfo) -> io.RawIOBase:
        if m.sparse is not None:  # tarfile maps the packed runs onto the file's offsets
            f = self._tar.extractfile(m)
            assert f is not None
            return f  # type: ignore[return-value]
        return _MemberReader(self._file, m)

    def drain(self) -> None:
        """Read to the very end, so the blob's digest is checked on every byte (tar stops at
        its end-of-archive blocks; padding and compressed trailers follow)."""
        with self.blame():
            drain(self._data)

    def close(self) -> None:
        self._tar.close()
        self._data.close()
