"""Blobs and manifests from an OCI image layout (oci-layout, index.json, blobs/<alg>/<hex>):
* `oci-archive:PATH`, a tar of one, as `skopeo copy ... oci-archive:` and `buildah push` write
  it: the tar is uncompressed, so each blob is a region of the file, read in place;
* `oci:DIR`, the layout as a directory (skopeo's `oci:` transport): each blob its own file,
  opened without following links;
* `docker-archive:PATH[:REF]`, what `docker save`, `podman save` and skopeo's docker-archive
  write: a tar with a `manifest.json` listing each image's config and layer files (legacy
  `<id>/layer.tar` names, or `blobs/sha256/<hex>` since Docker 25). It has no registry manifest,
  so one is made from that list; every layer is still verified: against the hex of its blob
  name, or else against its diff_id in the config (docker save writes layers uncompressed, so
  the file's digest is its diff_id)."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import stat
import tarfile
import threading
from pathlib import Path

from ...errors import FormatError, SourceContentError, SourceError, SourceNotFoundError
from .digest import Digest, check_bytes
from .manifest import DOCKER_MANIFEST, MAX_CONFIG, MAX_MANIFEST, Descriptor

__all__ = ["ArchiveStore", "DirectoryStore", "DockerArchiveStore"]


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


def _open_regular(path: Path, *, follow: bool = False) -> int:
    """Open a blob or archive that must be a regular file. O_NONBLOCK: a FIFO planted as a blob
    would otherwise block the open (and every read) forever; it is refused instead."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file (a FIFO, device, socket or directory)")
    os.set_blocking(fd, True)
    return fd


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
                    fd = _open_regular(self._root / name)
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
    transport = "oci-archive"
    holds = "an OCI image layout"
    root = "index.json"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.where = f"{self.transport} {path}"
        try:
            self._fd = _open_regular(path, follow=True)
        except FileNotFoundError as exc:
            raise SourceNotFoundError(f"{self.where}: no such file") from exc
        except OSError as exc:
            raise SourceError(f"{self.where}: {exc.strerror}") from exc
        self._members: dict[str, tuple[int, int]] = {}
        try:
            with open(self._fd, "rb", closefd=False) as f, tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf:
                    if m.isfile():
                        self._members[_member_name(m.name)] = (m.offset_data, m.size)
        except tarfile.TarError as exc:
            os.close(self._fd)
            raise FormatError(f"{self.where} is not an uncompressed tar of {self.holds} "
                              f"({exc})") from exc
        if self.root not in self._members:
            os.close(self._fd)
            raise FormatError(f"{self.where} holds no {self.root}: not {self.holds}")

    def _locate(self, name: str) -> tuple[int, int, int]:
        offset, size = self._members[name]
        return self._fd, offset, size

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            os.close(self._fd)


def _member_name(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def _tags(entry: dict[str, object]) -> list[str]:
    given = entry.get("RepoTags")
    return [t for t in given if isinstance(t, str)] if isinstance(given, list) else []


_BLOB_NAME = re.compile(r"^blobs/(sha256|sha512)/([0-9a-f]+)$")


class DockerArchiveStore(ArchiveStore):
    """`docker save`'s tar: manifest.json names each image's config and layers; the store
    offers the chosen image as a registry manifest whose digests map back to member names."""

    transport = "docker-archive"
    holds = "a docker save archive"
    root = "manifest.json"

    def __init__(self, path: Path, ref: str | None) -> None:
        super().__init__(path)
        try:
            self._by_digest: dict[str, str] = {}
            self._manifest = self._make_manifest(ref)
        except BaseException:
            self.close()
            raise

    def _json(self, name: str, limit: int) -> tuple[bytes, object]:
        data = self._read_member(name, limit)
        try:
            return data, json.loads(data)
        except ValueError as exc:
            raise SourceContentError(f"{self.where}: {name} is not valid JSON ({exc})") from exc

    def _choose(self, entries: list[dict[str, object]], ref: str | None) -> dict[str, object]:
        """By tag (`REF` as `docker save` records it, docker.io/library/ implied), or `@N` by
        position, as containers/image reads docker-archive references."""
        tags = [t for e in entries for t in _tags(e)]
        if ref is None:
            if len(entries) > 1:
                raise SourceNotFoundError(f"{self.where}: the archive holds {len(entries)} images "
                                          f"({', '.join(tags) or 'untagged'}); name one as "
                                          "docker-archive:PATH:REPO:TAG or docker-archive:PATH:@N")
            return entries[0]
        if ref.startswith("@") and ref[1:].isdigit():
            if int(ref[1:]) >= len(entries):
                raise SourceNotFoundError(f"{self.where}: no image {ref}: the archive holds "
                                          f"{len(entries)}")
            return entries[int(ref[1:])]
        wanted = {ref, f"docker.io/{ref}", f"docker.io/library/{ref}"}
        for entry in entries:
            if any({t, f"docker.io/{t}", f"docker.io/library/{t}"} & wanted
                   for t in _tags(entry)):
                return entry
        raise SourceNotFoundError(f"{self.where}: no image tagged {ref!r} in the archive (it "
                                  f"has: {', '.join(tags) or 'untagged images only'})")

    def _make_manifest(self, ref: str | None) -> bytes:
        _, listing = self._json("manifest.json", MAX_MANIFEST)
        if not isinstance(listing, list) or not listing or not all(
                isinstance(e, dict) for e in listing):
            raise SourceContentError(f"{self.where}: manifest.json lists no images")
        entry = self._choose(listing, ref)
        config_name, layer_names = entry.get("Config"), entry.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layer_names, list) or not all(
                isinstance(n, str) for n in layer_names) or not layer_names:
            raise SourceContentError(f"{self.where}: manifest.json's entry names no config or "
                                     "no layers")
        config_name = _member_name(config_name)
        if config_name not in self._members:
            raise SourceContentError(f"{self.where}: the config {config_name} is missing")
        config_bytes, config = self._json(config_name, MAX_CONFIG)
        config_digest = Digest.of(config_bytes)
        self._by_digest[str(config_digest)] = config_name
        rootfs = config.get("rootfs") if isinstance(config, dict) else None
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_names):
            raise SourceContentError(f"{self.where}: the config names "
                                     f"{len(diff_ids) if isinstance(diff_ids, list) else 'no'} "
                                     f"layer digests for {len(layer_names)} layers")
        layers = []
        for number, (name, diff_id) in enumerate(zip(layer_names, diff_ids, strict=True), 1):
            name = _member_name(name)
            if name not in self._members:
                raise SourceContentError(f"{self.where}: layer {number} ({name}) is missing")
            m = _BLOB_NAME.match(name)
            digest = Digest.parse(f"{m.group(1)}:{m.group(2)}" if m else diff_id,
                                  f"{self.where} layer {number}")
            self._by_digest[str(digest)] = name
            layers.append({"mediaType": "application/vnd.docker.image.rootfs.diff.tar",
                           "digest": str(digest), "size": self._members[name][1]})
        return json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                           "config": {"mediaType": "application/vnd.docker.container.image.v1"
                                                   "+json", "digest": str(config_digest),
                                      "size": len(config_bytes)},
                           "layers": layers}).encode()

    def root_manifest(self) -> tuple[bytes, str, Digest | None]:
        return self._manifest, DOCKER_MANIFEST, None

    def _blob(self, digest: Digest) -> tuple[int, int, int]:
        name = self._by_digest.get(str(digest))
        if name is None:
            raise SourceNotFoundError(f"{self.where}: blob {digest} is missing from the archive")
        return self._locate(name)


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
