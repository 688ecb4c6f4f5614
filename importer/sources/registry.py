"""Container disks: a VM disk at /disk/<name> inside an OCI or Docker image, pulled from a
registry (docker://) or read from an OCI archive (oci-archive:), and offered to the core as one
object, the disk file, like any other source (docs/pod-contract.md 4.4).

Finding the disk: layers are read from the top down, each as a verified stream, until the
topmost regular file under disk/ that no upper layer whited out (CDI takes the first one from
the bottom and ignores whiteouts: quirk Q13). The layer holding it (W) is read only up to that
file's header; layers below W are read whole, because they must not add a second file to disk/.

Reading the disk:
* W uncompressed and the store serves ranges: the file is read in place (random access, so
  qcow2 goes to qemu-img over NBD with no scratch); W's digest is checked by an
  InOrderVerifier that the engine finishes (verify()) before the target is committed;
* otherwise (a gzip or zstd layer): the file is streamed out of the decompressed layer, and the
  stream reaches EOF only after the rest of W was read, its digest matched and the final check
  of disk/ passed. Raw goes straight to the target; other formats are staged (the log says why).
Every blob the import relies on is verified: no byte of a mismatching blob is reported as
imported."""

from __future__ import annotations

import copy
import io
import logging
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import FormatError, SourceContentError, SourceNotFoundError
from ..quantity import format_bytes
from ..streams import PositionedReader
from .base import SourceInfo, read_via_readinto
from .extras import needs_extra
from .oci.archive_store import ArchiveStore, DirectoryStore, DockerArchiveStore
from .oci.credentials import Credentials, credentials_from_file
from .oci.digest import Digest, InOrderVerifier, VerifyingStream
from .oci.layers import DiskEntry, DiskView, LayerTar, forget_members, normalise, relevant
from .oci.manifest import (
    INDEX_TYPES,
    Descriptor,
    Image,
    bootc_error,
    check_architecture,
    host_architecture,
    index_entries,
    kubevirt_labels,
    media_type_of,
    parse_manifest,
    select_platform,
)
from .oci.reference import parse_reference
from .options import HttpOptions

if TYPE_CHECKING:
    from .oci.registry_store import RegistryStore

__all__ = ["RegistrySource"]

log = logging.getLogger(__name__)
REF_NAME = "org.opencontainers.image.ref.name"
Members = list[tuple[str, tarfile.TarInfo]]


@dataclass(slots=True)
class _Winner:
    index: int  # 0-based, bottom first
    desc: Descriptor
    disk: DiskEntry
    codec: str | None
    head: Members  # W's relevant entries before the disk file


class RegistrySource:
    def __init__(self, source: str, opts: HttpOptions, *, arch: str | None = None,
                 auth_file: Path | None = None,
                 helper_env: dict[str, str] | None = None) -> None:
        self._helper_env = helper_env or {}
        self.ref = parse_reference(source)
        self._arch = arch
        self.store: RegistryStore | ArchiveStore | DirectoryStore
        if self.ref.transport == "oci-archive":
            assert self.ref.archive is not None
            self.store = ArchiveStore(self.ref.archive)
        elif self.ref.transport == "oci":
            assert self.ref.archive is not None
            self.store = DirectoryStore(self.ref.archive)
        elif self.ref.transport == "docker-archive":
            assert self.ref.archive is not None
            self.store = DockerArchiveStore(self.ref.archive, self.ref.archive_ref)
        else:
            try:  # oras and requests: only a registry needs them, not a local archive
                from .oci.registry_store import RegistryStore
            except ImportError as exc:
                raise needs_extra("registry", exc) from exc
            self.store = RegistryStore(self.ref, opts, self._credentials(opts, auth_file))
        self.where = str(self.ref)
        try:
            self.image = self._resolve()
            self.labels = kubevirt_labels(self.image.env)
            self._locate()
        except BaseException:
            self.store.close()
            raise

    def _credentials(self, opts: HttpOptions, auth_file: Path | None) -> Credentials | None:
        # CDI: user and password count only when both are set
        if opts.username and opts.password:
            return Credentials(opts.username, opts.password, "the given user name and password")
        if auth_file is not None:
            return credentials_from_file(auth_file, self.ref, self._helper_env)
        return None

    # ------------------------------------------------------------------ manifests

    def _resolve(self) -> Image:
        data, mtype, digest = self.store.root_manifest()
        what = self.where
        mtype = media_type_of(data, mtype, what)
        arch = self._arch or host_architecture()
        for level in range(2):  # an index may point at one more (an OCI layout's index.json)
            if mtype not in INDEX_TYPES:
                break
            entries = index_entries(data, what)
            if self.ref.transport in ("oci-archive", "oci") and level == 0:
                entries = self._archive_entries(entries)
            desc = entries[0] if len(entries) == 1 and not entries[0].platform else \
                select_platform(entries, arch, what)
            log.info("%s: %s -> %s (%s)", what, "index", desc.digest.short(),
                     desc.platform_text if desc.platform else "single image")
            data = self.store.fetch_manifest(desc)
            mtype = media_type_of(data, desc.media_type, what)
            digest = desc.digest
        if mtype in INDEX_TYPES:
            raise FormatError(f"{what}: indexes nested more than two deep")
        image = parse_manifest(data, mtype, digest or Digest.of(data), what, self.store.fetch_blob)
        if (msg := bootc_error(image)) is not None:
            raise FormatError(msg)
        check_architecture(image, self._arch)
        log.info("%s: image %s, %s, %d layer(s)", what, image.manifest_digest.short(),
                 image.architecture or "architecture not stated", len(image.layers))
        return image

    def _archive_entries(self, entries: list[Descriptor]) -> list[Descriptor]:
        """The index.json entry the reference names; without a name, the archive's only image
        (as containers/image: several need a name)."""
        want = self.ref.archive_ref
        names = sorted({e.annotations.get(REF_NAME, "<unnamed>") for e in entries})
        if want is None:
            if len(entries) > 1:
                raise SourceNotFoundError(f"{self.where}: the archive holds {len(entries)} "
                                          f"images ({', '.join(names)}); name one as "
                                          "oci-archive:PATH:NAME")
            return entries
        chosen = [e for e in entries if e.annotations.get(REF_NAME) == want]
        if not chosen:
            raise SourceNotFoundError(f"{self.where}: no image named {want!r} in the archive "
                                      f"(it has: {', '.join(names)})")
        return chosen

    # ------------------------------------------------------------------ layers

    def _layer_where(self, index: int) -> str:
        desc = self.image.layers[index]
        return (f"{self.where} layer {index + 1}/{len(self.image.layers)} "
                f"({desc.digest.short()}, {format_bytes(desc.size)})")

    def _verified_blob(self, index: int) -> VerifyingStream:
        desc = self.image.layers[index]
        return VerifyingStream(self.store.open_blob(desc), desc.digest, desc.size,
                               f"{self._layer_where(index)}: the blob")

    def _read_layer(self, index: int, view: DiskView | None = None
                    ) -> tuple[Members, DiskEntry | None, str | None]:
        """One layer read as a verified stream: its entries that matter to disk/, and its codec.
        With `view` (the layers above), reading stops at the first disk file that view lets
        through, which is returned; otherwise the layer is read to its end and its digest
        checked."""
        blob = self._verified_blob(index)
        lt = LayerTar(blob, self._layer_where(index))
        members: Members = []
        try:
            for path, m in lt.members():
                disk = view.candidate(m, path, index + 1) if view is not None else None
                if disk is not None:
                    return members, disk, lt.codec
                if relevant(path):
                    members.append((path, m))
            lt.drain()
            blob.drain()
        finally:
            lt.close()
        log.info("%s: listed and verified", self._layer_where(index))
        return members, None, lt.codec

    def _locate(self) -> None:
        layers = self.image.layers
        view = DiskView()
        winner: _Winner | None = None
        for index in range(len(layers) - 1, -1, -1):
            members, disk, codec = self._read_layer(index, view)
            if disk is not None:
                winner = _Winner(index, layers[index], disk, codec, members)
                break
            view.apply(index + 1, members, self.where)
        if winner is None:
            view.the_disk(self.where, len(layers))  # raises, saying what was found
            raise AssertionError("unreachable")
        self._above = view  # disk/ as the layers above W leave it
        self._winner = winner
        log.info("%s: the disk is %s in %s", self.where, winner.disk.describe(),
                 self._layer_where(winner.index))
        # a sparse tar member is not one run of bytes: it is streamed (tarfile maps it)
        self._random = (winner.codec is None and not winner.disk.sparse
                        and self.store.supports_ranges(winner.desc))
        # W's entries after the disk file: known now when read in place, else at the stream's end
        tail = self._list_after_disk() if self._random else []
        hidden = self._random and self._view_through_w(tail).all_hidden
        self._lower = self._scan_lower(hidden)
        self._verifier: InOrderVerifier | None = None
        self._stream_verified = threading.Event()
        if self._random:
            self._check_final(tail)
            self._start_verifier()

    def _list_after_disk(self) -> Members:
        """W's entries after the disk file, read by range (headers only)."""
        w = self._winner
        after = w.disk.offset_data + -(-w.disk.size // 512) * 512
        f = _BlobFile(self.store, w.desc, after)
        members: Members = []
        try:
            with tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf:
                    path = normalise(m.name, self._layer_where(w.index))
                    if relevant(path):
                        members.append((path, m))
                    forget_members(tf)
        except tarfile.TarError as exc:
            if isinstance(exc, tarfile.ReadError) and "empty file" in str(exc):
                return members  # the disk file was the last entry and nothing follows
            raise FormatError(f"{self._layer_where(w.index)} is not a valid tar archive after "
                              f"the disk file ({exc})") from exc
        return members

    def _scan_lower(self, hidden: bool) -> list[tuple[int, Members]]:
        """Layers below W, read whole (verified) for what they put in disk/; not read at all
        when W or the layers above it hide everything below."""
        out = []
        for index in range(self._winner.index - 1, -1, -1):
            if hidden:
                log.info("%s: hidden by the layers above; not read", self._layer_where(index))
                continue
            members, _, _ = self._read_layer(index)
            out.append((index, members))
        return out

    def _view_through_w(self, tail: Members) -> DiskView:
        """disk/ as W and the layers above it leave it; `tail` is W after the disk file."""
        view = copy.deepcopy(self._above)
        w = self._winner
        view.apply(w.index + 1, [*w.head, (w.disk.path, _regular(w.disk)), *tail], self.where)
        return view

    def _check_final(self, tail: Members) -> None:
        """disk/ of the whole image must hold exactly the file being imported."""
        view = self._view_through_w(tail)
        for index, members in self._lower:
            view.apply(index + 1, members, self.where)
        disk = view.the_disk(self.where, len(self.image.layers))
        if disk.name != self._winner.disk.name or disk.layer != self._winner.disk.layer:
            raise SourceContentError(f"{self.where}: the disk file changed while it was read")

    def _start_verifier(self) -> None:
        w = self._winner
        self._verifier = InOrderVerifier(
            w.desc.digest, w.desc.size, f"{self._layer_where(w.index)}: the blob",
            lambda off, buf: self.store.readinto_blob(w.desc, off, buf))
        head = bytearray(w.disk.offset_data)
        n = self.store.readinto_blob(w.desc, 0, head)
        self._verifier.observe(0, memoryview(head)[:n])

    # ------------------------------------------------------------------ Source

    def info(self) -> SourceInfo:
        w = self._winner
        return SourceInfo(
            size=w.disk.size, random_access=self._random,
            name=f"{self.where} /{w.disk.path}", version=str(self.image.manifest_digest),
            labels=self.labels,
            sequential_reason=None if self._random else (
                f"the disk is inside a {w.codec}-compressed layer" if w.codec
                else "the disk is a sparse tar entry" if w.disk.sparse
                else "the registry does not serve byte ranges"))

    def open_stream(self, offset: int = 0) -> io.RawIOBase:
        if self._random:
            return _InPlaceStream(self, offset)
        return _LayerDiskStream(self, offset)

    def readinto_at(self, offset: int, buf: bytearray | memoryview) -> int:
        w = self._winner
        n = max(0, min(len(buf), w.disk.size - offset))
        if n == 0:
            return 0
        view = memoryview(buf)[:n]
        got = self.store.readinto_blob(w.desc, w.disk.offset_data + offset, view)
        assert self._verifier is not None
        self._verifier.observe(w.disk.offset_data + offset, view[:got])
        return got

    def read_at(self, offset: int, size: int) -> bytes:
        return read_via_readinto(self, offset, size)

    def verify(self) -> None:
        """Called by the engine before it commits the target: W's digest over every byte."""
        if self._verifier is not None:
            self._verifier.finish()
            log.info("%s: layer digest verified (%s re-read in order)", self.where,
                     format_bytes(self._verifier.refetched))
        elif not self._stream_verified.is_set():
            raise SourceContentError(f"{self.where}: the layer holding the disk was not read to "
                                     "its end, so its digest is unverified")

    def close(self) -> None:
        self.store.close()


def _regular(disk: DiskEntry) -> tarfile.TarInfo:
    m = tarfile.TarInfo(disk.path)
    m.type, m.size = tarfile.REGTYPE, disk.size
    return m


class _BlobFile(PositionedReader):
    """A seekable view of a blob for tarfile's header walk, read in 256 KiB windows so that
    a run of small entries costs one request, not one per header."""

    WINDOW = 256 << 10

    def __init__(self, store: RegistryStore | ArchiveStore | DirectoryStore, desc: Descriptor,
                 start: int) -> None:
        self._store = store
        self._desc = desc
        self._pos = start
        self._win_at = -1
        self._win = b""

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._desc.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._pos >= self._desc.size:
            return 0
        if not (self._win_at <= self._pos < self._win_at + len(self._win)):
            buf = bytearray(min(self.WINDOW, self._desc.size - self._pos))
            n = self._store.readinto_blob(self._desc, self._pos, buf)
            self._win_at, self._win = self._pos, bytes(buf[:n])
        start = self._pos - self._win_at
        n = min(len(b), len(self._win) - start)
        b[:n] = self._win[start:start + n]
        self._pos += n
        return n


class _InPlaceStream(io.RawIOBase):
    """The disk read in order from an uncompressed layer, observed by the verifier."""

    def __init__(self, src: RegistrySource, offset: int) -> None:
        w = src._winner
        self._src = src
        self._base = w.disk.offset_data
        self._pos = offset
        self._end = w.disk.size
        self._blob = src.store.open_blob(w.desc, self._base + offset)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(b), self._end - self._pos)
        if want <= 0:
            return 0
        view = memoryview(b)[:want]
        n = self._blob.readinto(view)
        if not n:
            raise SourceContentError(f"{self._src.where}: the layer ended inside the disk file")
        assert self._src._verifier is not None
        self._src._verifier.observe(self._base + self._pos, view[:n])
        self._pos += n
        return int(n)

    def close(self) -> None:
        self._blob.close()
        super().close()


class _LayerDiskStream(io.RawIOBase):
    """The disk streamed out of a (compressed) layer. EOF comes only after the rest of the
    layer was read, the blob's digest matched and disk/ was checked as a whole."""

    def __init__(self, src: RegistrySource, offset: int) -> None:
        self._src = src
        w = src._winner
        self._w = w
        self._blob = src._verified_blob(w.index)
        self._lt = LayerTar(self._blob, src._layer_where(w.index))
        for path, m in self._lt.members():
            if path == w.disk.path and m.offset_data == w.disk.offset_data:
                self._file = self._lt.open_member(m)
                break
        else:
            raise SourceContentError(f"{src.where}: the disk file is gone on a second read of "
                                     "its layer; the registry serves changing data")
        self._left = w.disk.size
        skip = bytearray(1 << 20)
        while offset > 0:
            n = self._file.readinto(memoryview(skip)[:min(offset, len(skip))])
            if not n:
                break
            offset -= n
            self._left -= n
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._left > 0:
            with self._lt.blame():
                n = self._file.readinto(memoryview(b)[:min(len(b), self._left)])
            if not n:
                raise SourceContentError(f"{self._src.where}: the layer ended inside the disk "
                                         "file (the blob is truncated)")
            self._left -= n
            return n
        if not self._done:
            tail = [(p, m) for p, m in self._lt.members() if relevant(p)]
            self._lt.drain()
            self._blob.drain()  # raises BlobDigestError on a mismatch
            self._src._check_final(tail)
            self._src._stream_verified.set()
            self._done = True
            log.info("%s: layer digest verified", self._src.where)
        return 0

    def close(self) -> None:
        self._lt.close()
        super().close()
