"""The target side of a host-assisted clone (docs/pod-contract.md 4.9): the cloner's Snappy stream,
decoded as it arrives, is
* `blockdevice-clone`: the source disk's raw bytes, written sparse (unless preallocating) to the
  target file or device, no conversion, no resize;
* `filesystem-clone` into a filesystem: a tar of the source volume, extracted safely into /data
  with permissions kept and no ownership;
* `filesystem-clone` into a block device: the tar's first member named like `disk.img`,
  written to the device.
"""

from __future__ import annotations

import io
import tarfile
import threading
from typing import IO, Any

from ..config import ContentType, ImportConfig
from ..errors import FormatError
from ..formats.snappy_framed import SnappyFramedReader
from ..podconfig import available_space
from ..uploadconfig import UploadSettings
from .body import BodySource

__all__ = ["receive_clone"]


def receive_clone(body: io.RawIOBase, kind: str, settings: UploadSettings,
                  cancel: threading.Event) -> bool:
    """Apply the clone; whether preallocation was applied (CDI reports true for a filesystem
    clone into a filesystem whatever happened, quirk Q16; we report what we did: the files are
    written whole, without holes, when preallocation was asked for)."""
    from ..engine import run_import

    decoded = SnappyFramedReader(body)
    if kind == "filesystem-clone" and not settings.block:
        config = ImportConfig(source="clone", dest=settings.data_dir,
                              content_type=ContentType.ARCHIVE, source_kind="upload",
                              preallocation=settings.preallocation)
        return run_import(config, cancel=cancel,
                          source=BodySource(decoded, None, "clone")).preallocated
    stream: io.RawIOBase = _NotEmpty(decoded)
    if kind == "filesystem-clone":  # a filesystem's tar into a block device: its disk.img
        stream = _disk_image_member(decoded)
    # the same limit as an upload: the volume's size, or UPLOAD_IMAGE_SIZE on a filesystem
    available = available_space(settings.destination if settings.block else settings.data_dir,
                                settings.block, settings.image_size)
    config = ImportConfig(source="clone", dest=settings.destination, size_limit=available,
                          preallocation=settings.preallocation, source_kind="upload")
    result = run_import(config, cancel=cancel,
                        source=BodySource(stream, None, "clone", guest_data=True))
    return result.preallocated


class _NotEmpty(io.RawIOBase):
    """A disk clone with no bytes at all is a broken cloner, not an empty disk: it fails before
    the target is committed (it was "Clone Complete")."""

    def __init__(self, raw: io.RawIOBase) -> None:
        self._raw = raw
        self._seen = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._raw.readinto(b) or 0
        if n:
            self._seen = True
        elif not self._seen:
            raise FormatError("the clone stream carried no disk data (an empty source, or a "
                              "cloner that stopped before its first byte); clone again")
        return n


class _Member(io.RawIOBase):
    def __init__(self, f: IO[bytes], keep: Any) -> None:
        self._f = f
        self._keep = keep  # the tar stream must outlive the member's reader

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            data = self._f.read(len(b))
        except tarfile.TarError as exc:
            raise FormatError(f"the filesystem clone's tar is damaged: {exc}") from exc
        memoryview(b)[: len(data)] = data
        return len(data)


def _disk_image_member(stream: io.RawIOBase) -> io.RawIOBase:
    try:
        tf = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 - lives as long as the member
        for member in tf:
            if "disk.img" in member.name and member.isreg():
                f = tf.extractfile(member)
                assert f is not None
                return _Member(f, tf)
    except tarfile.TarError as exc:
        raise FormatError(f"the filesystem clone is not a whole tar archive: {exc}") from exc
    raise FormatError("the filesystem clone holds no disk.img to write to the block device")
