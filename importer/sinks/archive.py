"""Streaming, safe tar extraction into a directory.

Only regular files and directories are created, member by member, under a root we resolved
ourselves; absolute names, `..`, links, devices and FIFOs are refused or skipped with a message,
and ownership is never applied. We do not rely on tarfile's extraction filters alone: they have
had bypasses (CVE-2025-4517 and friends). Files are opened with O_NOFOLLOW | O_EXCL inside
directories this code created, so nothing is ever written outside the directory.

Extraction goes into a hidden staging directory inside the destination and is moved into place
only once the whole archive (and the checksum) checked out, so a failed import leaves the
destination as it was.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from ..errors import FormatError, UnsafeImageError
from ..progress import Progress
from .target import _oserror

__all__ = ["ArchiveResult", "extract_tar"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ArchiveResult:
    files: int = 0
    directories: int = 0
    skipped: int = 0
    bytes_written: int = 0


def _safe_parts(name: str) -> tuple[str, ...]:
    p = PurePosixPath(name)
    if p.is_absolute():
        raise UnsafeImageError(f"archive member {name!r} has an absolute path; refusing the archive")
    parts = tuple(x for x in p.parts if x not in ("", "."))
    if ".." in parts:
        raise UnsafeImageError(f"archive member {name!r} climbs out of the directory with '..'; "
                               "refusing the archive")
    return parts


class Extraction:
    def __init__(self, dest: Path, progress: Progress) -> None:
        self.dest = dest
        self.progress = progress
        dest.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=".importer-partial-", dir=dest))

    def run(self, stream: io.RawIOBase) -> ArchiveResult:
        result = ArchiveResult()
        try:
            tf = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 - closed with the stream
        except tarfile.TarError as exc:
            raise FormatError(f"the data is not a tar archive: {exc}") from exc
        try:
            for member in tf:
                parts = _safe_parts(member.name)
                if not parts:
                    continue
                where = self.staging.joinpath(*parts)
                if member.isdir():
                    self._mkdirs(parts)
                    result.directories += 1
                elif member.isreg():
                    self._mkdirs(parts[:-1])
                    src = tf.extractfile(member)
                    assert src is not None
                    result.bytes_written += self._write_file(where, src, member.mode)
                    result.files += 1
                else:
                    kind = ("symbolic link" if member.issym() else "hard link" if member.islnk()
                            else "device or FIFO")
                    log.warning("archive member %r is a %s; skipped (only regular files and "
                                "directories are extracted)", member.name, kind)
                    result.skipped += 1
        except tarfile.TarError as exc:
            raise FormatError(f"the tar archive is damaged: {exc}") from exc
        return result

    def _mkdirs(self, parts: tuple[str, ...]) -> None:
        cur = self.staging
        for part in parts:
            cur = cur / part
            if cur.is_symlink() or (cur.exists() and not cur.is_dir()):
                raise UnsafeImageError(f"archive member path {'/'.join(parts)!r} clashes with a "
                                       "file of the same archive; refusing")
            cur.mkdir(mode=0o755, exist_ok=True)

    def _write_file(self, path: Path, src: IO[bytes], mode: int) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, mode & 0o777)
        except OSError as exc:
            raise _oserror(exc, path, "creating") from exc
        written = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
                written += len(chunk)
            os.fchmod(out.fileno(), mode & 0o777)  # no setuid/setgid/sticky, no ownership
        self.progress.wrote(written, 0)
        return written

    def commit(self) -> None:
        """Move everything from staging into the destination (same filesystem: renames)."""
        _merge(self.staging, self.dest)
        shutil.rmtree(self.staging, ignore_errors=True)
        for root, _dirs, files in os.walk(self.dest):
            for name in files:
                fd = os.open(os.path.join(root, name), os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        log.info("Successfully completed fsync(%s) syscall, committed to disk", self.dest)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _merge(src: Path, dst: Path) -> None:
    for entry in os.scandir(src):
        target = dst / entry.name
        if entry.is_dir(follow_symlinks=False):
            if target.is_dir() and not target.is_symlink():
                _merge(Path(entry.path), target)
                continue
            if target.exists() or target.is_symlink():
                _remove(target)
        elif target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(entry.path, target)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def extract_tar(stream: io.RawIOBase, dest: Path, progress: Progress) -> tuple[Extraction, ArchiveResult]:
    ex = Extraction(dest, progress)
    try:
        return ex, ex.run(stream)
    except BaseException:
        ex.abort()
        raise
