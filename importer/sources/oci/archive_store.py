"""Blobs and manifests from an OCI image layout (oci-layout, index.json, blobs/<alg>/<hex>):
* `oci-archive:PATH`, a tar of one, as `skopeo copy ... oci-archive:` and `buildah push` write
  it: the tar is uncompressed, so each blob is a region of the file, read in place;
* `oci:DIR`, the layout as a directory (skopeo's `oci:` transport): each blob its own file,
  opened without following links."""

from __future__ import annotations

import io
import os
import tarfile
import threading
from pathlib import Path

from ...errors import FormatError, SourceContentError, SourceError, SourceNotFoundError
from .digest import Digest, check_bytes
from .manifest import MAX_MANIFEST, Descriptor

__all__ = ["ArchiveStore", "DirectoryStore"]


class _LayoutStore:
    """What both forms share: every file is a region (fd, offset, size) read with pread."""

    random_access = True
    where = ""

    def __init__(self) -> None:
        self._closed = threading.Event()

    def _locate(self, name: str) -> tuple[int, int, int]:
        raise NotImplementedError

    def _read_member(self, name: str, limit: int) -> bytes:
        fd, offset, size = self._locate(name)
        if size > limit:
            raise SourceContentError(f"{self.where}: {name} is larger than {limit} bytes")
        return os.pread(fd, size, offset)

    def _blob(self, digest: Digest) -> tuple[int, int, int]:
        name = f"blobs/{digest.algorithm}/{digest.hex}"  # safe: Digest.parse checked the form
        try:
            return self._locate(name)
        except KeyError:
            raise SourceNotFoundError(f"{self.where}: blob {digest} is missing from the "
                                      "layout") from None

    def root_manifest(self) -> tuple[bytes, str, Digest | None]:
        return self._read_member("index.json", MAX_MANIFEST), "", None

    def fetch_manifest(self, desc: Descriptor) -> bytes:
        return self.fetch_blob(desc)

    def fetch_blob(self, desc: Descriptor) -> bytes:
        fd, offset, size = self._blob(desc.digest)
        data = os.pread(fd, min(size, desc.size + 1), offset)
        check_bytes(data, desc.digest, desc.size, f"{self.where}: blob {desc.digest.short()}")
        return data

    def supports_ranges(self, desc: Descriptor) -> bool:
        return True

    def open_blob(self, desc: Descriptor, offset: int = 0) -> io.RawIOBase:
        return _Region(self, desc, offset)

    def readinto_blob(self, desc: Descriptor, offset: int, buf: bytearray | memoryview) -> int:
        fd, start, size = self._blob(desc.digest)
        n = max(0, min(len(buf), min(size, desc.size) - offset))
        if self._closed.is_set():
            raise SourceError(f"{self.where}: the import was stopped")
        return os.preadv(fd, [memoryview(buf)[:n]], start + offset) if n else 0


class DirectoryStore(_LayoutStore):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.where = f"oci layout {path}"
        self._root = path
        self._fds: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        if not (path / "index.json").is_file():
            raise SourceNotFoundError(f"{self.where}: no index.json: not an OCI image layout "
                                      "directory")

    def _locate(self, name: str) -> tuple[int, int, int]:
        with self._lock:
            if name not in self._fds:
                try:
                    fd = os.open(self._root / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise KeyError(name) from None
                except OSError as exc:
                    raise SourceError(f"{self.where}: {name}: {exc.strerror}") from exc
                self._fds[name] = (fd, os.fstat(fd).st_size)
            fd, size = self._fds[name]
        return fd, 0, size

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            with self._lock:
                for fd, _ in self._fds.values():
                    os.close(fd)
                self._fds.clear()


class ArchiveStore(_LayoutStore):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.where = f"oci-archive {path}"
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise SourceNotFoundError(f"{self.where}: no such file") from exc
        except OSError as exc:
            raise SourceError(f"{self.where}: {exc.strerror}") from exc
        self._members: dict[str, tuple[int, int]] = {}
        try:
            with open(self._fd, "rb", closefd=False) as f, tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf:
                    if m.isfile():
                        self._members[m.name.lstrip("./")] = (m.offset_data, m.size)
        except tarfile.TarError as exc:
            os.close(self._fd)
            raise FormatError(f"{self.where} is not an uncompressed tar of an OCI layout "
                              f"({exc})") from exc
        if "index.json" not in self._members:
            os.close(self._fd)
            raise FormatError(f"{self.where} holds no index.json: not an OCI image layout")

    def _locate(self, name: str) -> tuple[int, int, int]:
        offset, size = self._members[name]
        return self._fd, offset, size

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            os.close(self._fd)


class _Region(io.RawIOBase):
    def __init__(self, store: _LayoutStore, desc: Descriptor, offset: int) -> None:
        self._store = store
        self._desc = desc
        self._pos = offset

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._store.readinto_blob(self._desc, self._pos, b)
        self._pos += n
        return n
