"""Streaming, safe tar extraction into a directory.

Regular files, directories, symbolic links and hard links are created, member by member, under
a root we resolved ourselves, as GNU tar `--preserve-permissions --no-same-owner` creates them
for CDI: modes kept (setuid, setgid and sticky bits dropped), ownership never applied, a
symbolic link created as it is (relative or absolute) and never followed, a hard link only to a
file this archive extracted before. Absolute member names and `..` are refused, a member whose
path passes through a symbolic link refuses the archive (nothing is written through a link),
devices and FIFOs are skipped with a message. We do not rely on tarfile's extraction filters alone: they have
had bypasses (CVE-2025-4517 and friends). Files are opened with O_NOFOLLOW | O_EXCL inside
directories this code created, so nothing is ever written outside the directory.

Extraction goes into a hidden staging directory inside the destination and is moved into place
only once the whole archive (and the checksum) checked out, so a failed import leaves the
destination as it was (a destination directory this import created is removed again). What was
already in the destination is never opened: only the files this import wrote are fsynced (a
FIFO left there would block an open forever, a symlink would be followed). The destination
directory is flock'ed for the import, so two extractions into it cannot interleave. Zero runs in
members are left as holes, and a member that would not fit in the free space (or the size
limit) fails before it is written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import logging
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from ..errors import FormatError, TargetError, TargetTooSmallError, UnsafeImageError
from ..progress import Progress
from .durable import fsync_dir
from .target import _oserror

HOLE_BLOCK = 64 << 10  # zero runs of whole blocks this size become holes
_ZERO_BLOCK = bytes(HOLE_BLOCK)

__all__ = ["ArchiveResult", "extract_tar"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ArchiveResult:
    files: int = 0
    directories: int = 0
    links: int = 0  # symbolic and hard links
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


class _Tally(io.RawIOBase):
    """Counts what tarfile reads; closing it leaves the stream open (the checksum reads on)."""

    def __init__(self, raw: io.RawIOBase) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._raw.readinto(b) or 0
        self.count += n
        return n


class Extraction:
    def __init__(self, dest: Path, progress: Progress, limit: int | None = None, *,
                 replace: bool = True, preallocate: bool = False) -> None:
        self.dest = dest
        self.replace = replace  # False: an entry already in dest is never replaced
        #: files fully allocated (CDI's cloner drops tar's -S when preallocation is asked for)
        self.preallocate = preallocate
        self._dir_modes: list[tuple[tuple[str, ...], int]] = []  # applied once committed
        self._files: set[tuple[str, ...]] = set()  # regular files extracted: link targets
        self.progress = progress
        self.limit = limit  # bytes the archive may expand to (--image-size), besides free space
        self.created_dest = not dest.exists()
        self._written: list[tuple[str, ...]] = []  # files this import wrote, relative
        self._lock_fd = -1
        try:
            dest.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise TargetError(f"another import is extracting into {dest}; wait for it to "
                                  "finish or choose another directory") from None
            self.staging = Path(tempfile.mkdtemp(prefix=".importer-partial-", dir=dest))
        except OSError as exc:
            self._unlock()
            raise _oserror(exc, dest, "preparing") from exc
        except BaseException:
            self._unlock()
            raise
        self._expanded = 0

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def run(self, stream: io.RawIOBase) -> ArchiveResult:
        result = ArchiveResult()
        counted = _Tally(stream)  # to find the end-of-archive blocks
        try:
            tf = tarfile.open(fileobj=counted, mode="r|")  # noqa: SIM115 - closed with the stream
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
                    self._dir_modes.append((parts, member.mode & 0o777))
                    result.directories += 1
                elif member.isreg():
                    self._check_room(member)
                    self._mkdirs(parts[:-1])
                    src = tf.extractfile(member)
                    assert src is not None
                    result.bytes_written += self._write_file(where, src, member.mode)
                    self._written.append(parts)
                    self._files.add(parts)
                    result.files += 1
                elif member.issym() or member.islnk():
                    self._mkdirs(parts[:-1])
                    self._link(member, parts, where)
                    self._written.append(parts)
                    result.links += 1
                else:
                    log.warning("archive member %r is a device or FIFO; skipped (files, "
                                "directories and links are extracted)", member.name)
                    result.skipped += 1
        except tarfile.TarError as exc:
            raise FormatError(f"the tar archive is damaged: {exc}") from exc
        # tarfile takes the end of the data at a member boundary as the end of the archive; a
        # whole archive ends with zero blocks after its last member, a cut one does not
        if counted.count - tf.offset < tarfile.BLOCKSIZE:
            raise FormatError(f"the tar archive is truncated: it ends after {counted.count} "
                              "bytes, at a member boundary, without its end-of-archive blocks "
                              "(a transfer cut short?); send it again")
        return result

    def _check_room(self, member: tarfile.TarInfo) -> None:
        """Fail before writing a member that cannot fit, not once the disk is full."""
        self._expanded += member.size
        if self.limit is not None and self._expanded > self.limit:
            raise TargetTooSmallError(
                f"the archive expands to more than {self.limit} bytes (at member "
                f"{member.name!r}), which is larger than the reported available storage",
                required=self._expanded, available=self.limit)
        st = os.statvfs(self.staging)
        free = st.f_bavail * st.f_frsize
        if member.size > free:
            raise TargetTooSmallError(
                f"archive member {member.name!r} ({member.size} bytes) is larger than the "
                f"reported available storage of {self.dest} ({free} bytes free)",
                required=member.size, available=free)

    def _mkdirs(self, parts: tuple[str, ...]) -> None:
        cur = self.staging
        for part in parts:
            cur = cur / part
            try:
                clash = cur.is_symlink() or (cur.exists() and not cur.is_dir())
                if not clash:
                    cur.mkdir(mode=0o755, exist_ok=True)
            except OSError as exc:
                raise _member_error(exc, "/".join(parts)) from exc
            if clash and cur.is_symlink():
                raise UnsafeImageError(f"archive member path {'/'.join(parts)!r} passes through "
                                       f"the symbolic link {cur.name!r} of the same archive; "
                                       "refusing (nothing is written through a link)")
            if clash:
                raise UnsafeImageError(f"archive member path {'/'.join(parts)!r} clashes with a "
                                       "file of the same archive; refusing")

    def _link(self, member: tarfile.TarInfo, parts: tuple[str, ...], where: Path) -> None:
        """A symbolic link as it is (never followed: later members cannot pass through it, see
        _mkdirs); a hard link to a regular file extracted before, never to anything else."""
        name = "/".join(parts)
        try:
            if member.issym():
                os.symlink(member.linkname, where)
                return
            try:
                target = _safe_parts(member.linkname)
            except UnsafeImageError:
                target = ()
            if not target or target not in self._files:
                raise UnsafeImageError(f"archive member {name!r} is a hard link to "
                                       f"{member.linkname!r}, which is not a file extracted "
                                       "before it from this archive; refusing the archive")
            os.link(self.staging.joinpath(*target), where, follow_symlinks=False)
            self._files.add(parts)
        except FileExistsError:
            raise UnsafeImageError(f"archive member path {name!r} clashes with a file of the "
                                   "same archive; refusing") from None
        except OSError as exc:
            raise _member_error(exc, name) from exc

    def _write_file(self, path: Path, src: IO[bytes], mode: int) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, mode & 0o777)
        except OSError as exc:
            raise _member_error(exc, str(path.relative_to(self.staging))) from exc
        written = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(1 << 20):
                    if self.preallocate:
                        out.write(chunk)
                    else:
                        _write_sparse(out, chunk)
                    written += len(chunk)
                out.truncate(written)  # a trailing hole still counts for the length
                os.fchmod(out.fileno(), mode & 0o777)  # no setuid/setgid/sticky, no ownership
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            raise _oserror(exc, self.dest, f"writing archive member {path.name!r} into") from exc
        self.progress.wrote(written, 0)
        return written

    def commit(self) -> None:
        """Move everything from staging into the destination (same filesystem: renames); the
        files were fsynced when written, the directories holding them are fsynced now."""
        if not self.replace:
            clashes = _clashes(self.staging, self.dest)
            if clashes:
                more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
                raise TargetError(f"{self.dest} already holds {', '.join(clashes[:3])}{more}, "
                                  "which the archive would replace; give --force to replace "
                                  "them (nothing was changed)")
        try:
            _merge(self.staging, self.dest)
            with contextlib.suppress(OSError):
                remove_tree(self.staging)  # empty by now
            dirs = {self.dest.joinpath(*parts[:-1]) for parts in self._written} | {self.dest}
            for d in sorted(dirs):
                fsync_dir(d)
            self._apply_dir_modes()
        except OSError as exc:
            raise _oserror(exc, self.dest, "committing the extracted files into") from exc
        finally:
            self._unlock()
        log.info("Successfully completed fsync(%s) syscall, committed to disk", self.dest)

    def _apply_dir_modes(self) -> None:
        """The archive's directory modes, once everything is in place (a read-only directory
        could not take its members, nor give them up to the merge), deepest first; through
        O_NOFOLLOW descriptors, so a link never redirects a chmod."""
        for parts, mode in sorted(self._dir_modes, key=lambda pm: -len(pm[0])):
            fd = os.open(self.dest.joinpath(*parts),
                         os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, mode)
            finally:
                os.close(fd)

    def abort(self) -> None:
        try:
            remove_tree(self.staging)
            if self.created_dest:
                with contextlib.suppress(OSError):
                    self.dest.rmdir()  # only if empty: what this import created, nothing else
        finally:
            self._unlock()


def _write_sparse(out: IO[bytes], chunk: bytes) -> None:
    """Whole zero blocks are skipped (left as holes), the rest written."""
    view = memoryview(chunk)
    pos = 0
    while pos < len(chunk):
        end = min(pos + HOLE_BLOCK, len(chunk))
        if end - pos == HOLE_BLOCK and view[pos:end] == _ZERO_BLOCK:
            out.seek(HOLE_BLOCK, os.SEEK_CUR)
        else:
            out.write(view[pos:end])
        pos = end


def _member_error(exc: OSError, name: str) -> TargetError | FormatError:
    if exc.errno == errno.ENAMETOOLONG:
        return FormatError(f"archive member {name[:200]!r} has a name longer than the file "
                           "system allows; refusing the archive")
    return _oserror(exc, Path(name), "creating archive member")


def _merge(src: Path, dst: Path) -> None:
    """Move src's entries into dst, directory by directory. Iterative: an archive may nest
    directories deeper than Python's recursion limit."""
    pending = [(src, dst)]
    while pending:
        source, dest = pending.pop()
        for entry in os.scandir(source):
            target = dest / entry.name
            if entry.is_dir(follow_symlinks=False):
                if target.is_dir() and not target.is_symlink():
                    pending.append((Path(entry.path), target))
                    continue
                if target.exists() or target.is_symlink():
                    _remove(target)
            elif target.is_dir() and not target.is_symlink():
                remove_tree(target)
            os.replace(entry.path, target)


def _clashes(src: Path, dst: Path) -> list[str]:
    """What the merge of src into dst would replace (a directory meeting a directory merges):
    paths relative to dst."""
    found: list[str] = []
    pending = [(src, dst, "")]
    while pending:
        source, dest, rel = pending.pop()
        for entry in os.scandir(source):
            target = dest / entry.name
            if not (target.exists() or target.is_symlink()):
                continue
            both_dirs = (entry.is_dir(follow_symlinks=False) and target.is_dir()
                         and not target.is_symlink())
            if both_dirs:
                pending.append((Path(entry.path), target, f"{rel}{entry.name}/"))
            else:
                found.append(f"{rel}{entry.name}")
    return sorted(found)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        remove_tree(p)
    else:
        p.unlink()


def remove_tree(path: Path) -> None:
    """rm -rf without recursion (shutil.rmtree recursed into a 3000-deep archive and died with
    a RecursionError, keeping the volume's lock), without PATH_MAX (names are relative to one
    open directory) and without following links. One directory fd is open at a time: up
    through "..", down by name."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return
    names: list[str] = []  # the way down from `path`
    try:
        while True:
            child = None
            with os.scandir(fd) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        child = entry.name
                        break
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.name, dir_fd=fd)
            if child is not None:
                down = os.open(child, flags, dir_fd=fd)
                os.close(fd)
                fd = down
                names.append(child)
                continue
            if not names:
                break
            up = os.open("..", flags, dir_fd=fd)
            os.close(fd)
            fd = up
            os.rmdir(names.pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def extract_tar(stream: io.RawIOBase, dest: Path, progress: Progress, limit: int | None = None,
                *, replace: bool = True, preallocate: bool = False
                ) -> tuple[Extraction, ArchiveResult]:
    ex = Extraction(dest, progress, limit, replace=replace, preallocate=preallocate)
    try:
        return ex, ex.run(stream)
    except BaseException:
        ex.abort()
        raise
