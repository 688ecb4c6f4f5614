"""Blobs and manifests from an oci-archive: a tar of an OCI image layout (oci-layout,
index.json, blobs/<alg>/<hex>), as `skopeo copy ... oci-archive:` and `buildah push` write it.
The tar is uncompressed, so each blob is a region of the file, read in place."""

from __future__ import annotations

import io
import os
import tarfile
import threading
from pathlib import Path

from ...errors import FormatError, SourceContentError, SourceError, SourceNotFoundError
from .digest import Digest, check_bytes
from .manifest import MAX_MANIFEST, Descriptor

__all__ = ["ArchiveStore"]


class ArchiveStore:
    random_access = True

    def __init__(self, path: Path) -> None:
        self.where = f"oci-archive {path}"
        self._closed = threading.Event()
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

    def _read_member(self, name: str, limit: int) -> bytes:
        offset, size = self._members[name]
        if size > limit:
            raise SourceContentError(f"{self.where}: {name} is larger than {limit} bytes")
        return os.pread(self._fd, size, offset)

    def _blob(self, digest: Digest) -> tuple[int, int]:
        name = f"blobs/{digest.algorithm}/{digest.hex}"  # safe: Digest.parse checked the form
        try:
            return self._members[name]
        except KeyError:
            raise SourceNotFoundError(f"{self.where}: blob {digest} is missing from the "
                                      "archive") from None

    def root_manifest(self) -> tuple[bytes, str, Digest | None]:
        return self._read_member("index.json", MAX_MANIFEST), "", None

    def fetch_manifest(self, desc: Descriptor) -> bytes:
        return self.fetch_blob(desc)

    def fetch_blob(self, desc: Descriptor) -> bytes:
        offset, size = self._blob(desc.digest)
        data = os.pread(self._fd, min(size, desc.size + 1), offset)
        check_bytes(data, desc.digest, desc.size, f"{self.where}: blob {desc.digest.short()}")
        return data

    def supports_ranges(self, desc: Descriptor) -> bool:
        return True

    def open_blob(self, desc: Descriptor, offset: int = 0) -> io.RawIOBase:
        return _Region(self, desc, offset)

    def readinto_blob(self, desc: Descriptor, offset: int, buf: bytearray | memoryview) -> int:
        start, size = self._blob(desc.digest)
        n = max(0, min(len(buf), min(size, desc.size) - offset))
        if self._closed.is_set():
            raise SourceError(f"{self.where}: the import was stopped")
        return os.preadv(self._fd, [memoryview(buf)[:n]], start + offset) if n else 0

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            os.close(self._fd)


class _Region(io.RawIOBase):
    def __init__(self, store: ArchiveStore, desc: Descriptor, offset: int) -> None:
        self._store = store
        self._desc = desc
        self._pos = offset

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._store.readinto_blob(self._desc, self._pos, b)
        self._pos += n
        return n
