"""A local file or block device as a source: random access with pread."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

from ..errors import SourceContentError, SourceError, SourceNotFoundError
from .base import SourceInfo

__all__ = ["FileSource"]


class FileSource:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise SourceNotFoundError(f"source file {path} does not exist") from exc
        except OSError as exc:
            raise SourceError(f"cannot open source file {path}: {exc.strerror}") from exc
        self._size = os.lseek(self._fd, 0, os.SEEK_END)
        st = os.fstat(self._fd)
        self._identity = _identity(st)
        self._regular = stat.S_ISREG(st.st_mode) and not str(path).startswith("/proc/")

    def info(self) -> SourceInfo:
        return SourceInfo(size=self._size, random_access=True, name=self.path.name,
                          local_path=self.path.absolute() if self._regular else None)

    def check_unchanged(self) -> None:
        """For a reader that opened the file by its path (qemu-img): the file must be the one
        opened and inspected, unchanged since (inode, size, modification and change times)."""
        try:
            now = _identity(os.stat(self.path))
        except OSError as exc:
            raise SourceContentError(f"{self.path} went away while it was read: "
                                     f"{exc.strerror}") from exc
        if now != self._identity:
            raise SourceContentError(f"{self.path} changed while it was read; nothing was "
                                     "imported from it. Import it again once it is complete")

    def open_stream(self, offset: int = 0) -> io.RawIOBase:
        f = open(self.path, "rb", buffering=0)  # noqa: SIM115 - owned by the caller
        f.seek(offset)
        return f

    def fileno(self) -> int:
        """For readers that ask the file system where the data is (SEEK_DATA)."""
        return self._fd

    def read_at(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def readinto_at(self, offset: int, buf: bytearray) -> int:
        return os.preadv(self._fd, [buf], offset)

    def verify(self) -> None:
        pass  # nothing is checked out of band: checksums are verified in the stream

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
