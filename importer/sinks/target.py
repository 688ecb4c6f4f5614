"""The destination: a regular file or a raw block device, detected rather than configured.

A target has a mode:
* `create` (an import): a file is written to `<name>.partial` beside the destination and renamed
  over it only after success, so a failed import never leaves a half-written file under the name
  a user (or a VM) will use; a block device is written in place and its size bounds the image;
* `scratch`: a file we created ourselves (mkstemp), truncated, never committed by rename;
* `apply` (a warm stage): an existing disk opened without truncation, written in place; commit
  is an fsync, and a failure leaves it as it is (a later stage or a full copy repairs it).
`Target.writing()` opens it, commits on success and aborts on an exception, in one place.

The destination's directory may be shared with someone hostile (a PVC written by an earlier
import, a world-writable directory), so:
* the partial file is created with O_CREAT|O_EXCL|O_NOFOLLOW: a planted `NAME.partial` symlink is
  never followed, and a planted regular file is never written through;
* the partial is flock'ed for the whole import, which is the destination's lock: a second import
  to the same destination fails at once, and a partial nobody holds a lock on is the leftover of a
  killed import, removed before a new one is created;
* the final rename(2) never follows a symlink at NAME, and it only ever replaces a regular
  file (or nothing): what is at NAME is classified first (`dest_kind`);
* a block device, or a symlink to one (/dev/mapper/*, /dev/VG/LV, /dev/disk/by-id/*, a link in
  any directory, as dd and qemu-img follow it), is written in place, opened O_EXCL, which Linux
  turns into "not mounted and not opened O_EXCL by anyone else", so two imports to one device
  exclude each other as well; the CLI's --force check for a partition table or file system
  stands between a planted link and the device;
* a character device or a FIFO (/dev/null, a pipe with a reader) is written in order, as
  standard output is (`StreamTarget`); it is never replaced by a file (that once replaced a
  machine's /dev/null);
* a symlink to a regular file, a dangling symlink or a socket is refused: replacing the link
  would leave the file it names untouched, following it would let a planted link choose what we
  overwrite.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import logging
import os
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from ..errors import TargetError, TargetTooSmallError
from ..quantity import format_bytes
from .durable import commit_file

__all__ = ["StreamTarget", "Target", "dest_kind"]

log = logging.getLogger(__name__)
BLKGETSIZE64 = 0x80081272
BLKZEROOUT = 0x127F
BLKDISCARD = 0x1277
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


def _oserror(exc: OSError, path: Path, action: str) -> TargetError:
    if exc.errno == errno.EBUSY:
        return TargetError(f"{path} is in use (mounted, or another import is writing it); "
                           "unmount it or wait for the other import")
    if exc.errno == errno.ELOOP:
        return TargetError(f"{path} is a symbolic link, which is never followed for writing; "
                           "remove it (someone may have planted it) and try again")
    if exc.errno == errno.EFBIG:
        return TargetError(f"the file system holding {path} cannot hold a file that large "
                           f"({action}); choose a smaller image size or another file system")
    # CDI's controller reads "no space left on device" and "disk quota exceeded" in a
    # termination message as "DataVolume too small to contain image": keep the phrases whole
    if exc.errno == errno.ENOSPC:
        return TargetError(f"no space left on device (the one holding {path}) while {action}")
    if exc.errno == errno.EDQUOT:
        return TargetError(f"disk quota exceeded on the device holding {path} while {action}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return TargetError(f"permission denied {action} {path}; check its owner and mode")
    return TargetError(f"{action} {path} failed: {exc.strerror or exc}")


class Sink(Protocol):
    """What the plans write a raw disk to (issue 22): a file or block device (Target), or a
    stream taken in order (StreamTarget: standard output, a character device, a FIFO)."""

    path: Path
    fd: int
    is_block: bool
    mode: str
    capacity: int | None
    #: True: data must come in order (no holes, nothing rewritten)
    sequential: bool

    def check_fits(self, virtual_size: int | None) -> None: ...
    def writing(self, written: Callable[[], int | None] = ...) -> contextlib.AbstractContextManager[Any]: ...
    def write_at(self, offset: int, data: memoryview) -> None: ...
    def zero_range(self, offset: int, length: int) -> None: ...
    def preallocate(self, size: int) -> None: ...
    def set_size(self, size: int) -> None: ...
    def current_size(self) -> int: ...


class Target:
    MODES = ("create", "scratch", "apply")

    def __init__(self, path: Path, capacity: int | None = None, *, mode: str = "create"
                 ) -> None:
        if mode not in self.MODES:
            raise ValueError(f"unknown target mode {mode!r}")
        self.path = path
        self.mode = mode
        kind = dest_kind(path) if mode != "scratch" else "file"
        if kind == "stream":
            raise TargetError(f"{path} is a character device or FIFO: it takes the disk in "
                              "order, and this import cannot write it so; write to a file")
        if kind == "dir":
            raise TargetError(f"{path} is a directory; name a file inside it as DEST (or give "
                              "--content-type archive to extract an archive into it)")
        self.is_block = kind == "block"
        partial = not self.is_block and mode == "create"
        self.write_path = path.with_name(path.name + ".partial") if partial else path
        self.fd = -1
        self.capacity: int | None = None
        if self.is_block:
            fd = self._open(os.O_RDONLY)
            try:
                buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
                self.capacity = struct.unpack("Q", buf)[0]
            finally:
                os.close(fd)
        elif capacity is not None and mode != "apply":
            # a delta grows an existing file at most by what it adds: the free space measured
            # beside the file (the pod's "available") does not bound it
            self.capacity = capacity
        self._zero_method: str | None = None  # remembered outcome of the zeroing fallbacks

    def _open(self, flags: int) -> int:
        try:
            return os.open(self.write_path, flags | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _oserror(exc, self.write_path, "opening") from exc

    @property
    def fd_path(self) -> str:
        """A path a child process (qemu-img) opens to reach exactly the file we opened and
        locked, whatever is renamed or planted at its name meanwhile."""
        return f"/proc/self/fd/{self.fd}"

    def check_fits(self, virtual_size: int | None) -> None:
        """Fail before any data is written when the image cannot fit."""
        if virtual_size is None or self.capacity is None or virtual_size <= self.capacity:
            return
        what = f"block device {self.path}" if self.is_block else "the requested image size"
        # CDI's controller recognises "is larger than the reported available" (docs/pod-contract.md 1.7)
        raise TargetTooSmallError(
            f"virtual image size {virtual_size} ({format_bytes(virtual_size)}) is larger than the "
            f"reported available storage {self.capacity} ({format_bytes(self.capacity)}) of "
            f"{what}; a target of at least {virtual_size} bytes is required",
            required=virtual_size, available=self.capacity)

    def open(self) -> int:
        if self.is_block:
            self.fd = self._open(os.O_WRONLY | os.O_EXCL)  # EXCL: not mounted or in use
        elif self.mode == "scratch":  # a file we created ourselves (mkstemp)
            self.fd = self._open(os.O_RDWR | os.O_NOFOLLOW | os.O_TRUNC)
        elif self.mode == "apply":  # an existing disk: its content is the base of the stage
            if not os.path.lexists(self.path):
                # CDI's words (the VDDK source), then ours
                raise TargetError(f"Disk image does not exist, cannot apply deltas for warm "
                                  f"migration: {self.path} is missing; a delta stage applies "
                                  "changes onto the disk a previous stage wrote, so run the "
                                  "first stage (no previous checkpoint) again")
            self.fd = self._open(os.O_RDWR | os.O_NOFOLLOW)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(self.fd)
                self.fd = -1
                raise TargetError(f"another import is writing {self.path}; wait for it to "
                                  "finish") from None
        else:
            self.fd = self._create_partial()
            try:
                self._check_size_possible(self.capacity or 0)
            except BaseException:
                self.abort()
                raise
        return self.fd

    def _create_partial(self) -> int:
        for _ in range(3):
            try:
                fd = self._open(os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW)
            except TargetError:
                if not os.path.lexists(self.write_path):
                    raise
                self._remove_stale_partial()
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # someone opened our brand-new file between create and lock
                os.close(fd)
                raise TargetError(f"another import is writing {self.path}; wait for it to "
                                  "finish or choose another destination") from None
            return fd
        raise TargetError(f"could not create {self.write_path}: it keeps reappearing; is "
                          "another import writing the same destination?")

    def _remove_stale_partial(self) -> None:
        """`NAME.partial` exists: another import's (locked), a killed import's (unlocked), or
        something planted (not a regular file): only the killed import's is removed."""
        try:
            fd = os.open(self.write_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _oserror(exc, self.write_path, "opening") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise TargetError(f"{self.write_path} exists and is not a regular file; remove "
                                  "it (someone may have planted it) and try again")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise TargetError(f"another import is writing {self.path} ({self.write_path} is "
                                  "locked); wait for it to finish or choose another destination"
                                  ) from None
            log.warning("removing %s, left behind by an interrupted import", self.write_path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.write_path)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def writing(self, written: Callable[[], int | None] = lambda: None) -> Iterator[Target]:
        """Open; commit when the block ends, abort when it raises. `written` tells abort how
        far a block device was written (that range is zeroed)."""
        self.open()
        try:
            yield self
        except BaseException:
            self.abort(written())
            raise
        self.commit()

    # ------------------------------------------------------------------ zeroing

    sequential = False

    def write_at(self, offset: int, data: memoryview) -> None:
        """Write `data` at `offset` (anywhere: a file or a device takes data in any order)."""
        try:
            while data:
                n = os.pwrite(self.fd, data, offset)
                data = data[n:]
                offset += n
        except OSError as exc:
            raise _oserror(exc, self.path, "writing") from exc

    def zero_range(self, offset: int, length: int) -> None:
        """Make [offset, offset+length) read as zeros on a device whose old content is unknown.
        Tries the cheap ways first and remembers what worked (ovirt-imageio's idiom)."""
        if length <= 0:
            return
        methods = [self._zero_method] if self._zero_method else [
            "punch", "zeroout", "write"]
        for method in methods:
            try:
                if method == "punch":
                    _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
                elif method == "zeroout":
                    fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", offset, length))
                else:
                    self.write_zeros(offset, length)
            except OSError as exc:
                if method == "write":
                    raise _oserror(exc, self.path, "zeroing") from exc
                log.debug("zeroing with %s not supported on %s (%s)", method, self.path, exc)
                continue
            if self._zero_method != method:
                log.info("zero ranges on %s are written with %s", self.path, method)
            self._zero_method = method
            return

    def write_zeros(self, offset: int, length: int) -> None:
        chunk = bytes(min(length, 4 << 20))
        end = offset + length
        while offset < end:
            n = os.pwrite(self.fd, memoryview(chunk)[: min(len(chunk), end - offset)], offset)
            offset += n

    def preallocate(self, size: int) -> None:
        """Allocate every block of a file target up to `size`, keeping what it holds: called
        before the data and again after it (for the holes the sparse writer left and the area a
        resize added)."""
        try:
            os.posix_fallocate(self.fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise _oserror(exc, self.path, "preallocating") from exc
            log.info("fallocate unsupported on %s; writing zeros into its holes", self.path)
            self._fill_holes(size)

    def _fill_holes(self, size: int) -> None:
        """Zeros written into the holes only: writing them from byte 0 would wipe the image
        when this runs after the data (it did, on file systems without fallocate)."""
        pos = 0
        while pos < size:
            try:
                hole = os.lseek(self.fd, pos, os.SEEK_HOLE)
            except OSError:  # no SEEK_HOLE support: the file then has no holes we can find
                return
            if hole >= size:
                return
            try:
                data = os.lseek(self.fd, hole, os.SEEK_DATA)
            except OSError:  # ENXIO: a hole up to the end of the file
                data = max(size, hole)
            end = min(data, size)
            self.write_zeros(hole, end - hole)
            pos = end

    # ------------------------------------------------------------------ completion

    def set_size(self, size: int) -> None:
        if self.is_block:
            return
        if self.mode == "apply":  # the disk a stage applies onto never shrinks
            size = max(size, self.current_size())
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            raise _oserror(exc, self.path, "resizing") from exc

    def _check_size_possible(self, size: int) -> None:
        """Fail at start, not after the download, when the file system cannot hold a file of
        `size` bytes (ext4 stops at 16 TiB): a sparse resize costs nothing and is undone."""
        if size <= 0:
            return
        try:
            os.ftruncate(self.fd, size)
            os.ftruncate(self.fd, 0)
        except OSError as exc:
            raise _oserror(exc, self.path, f"sizing to {size} bytes") from exc

    def current_size(self) -> int:
        return os.fstat(self.fd).st_size if not self.is_block else (self.capacity or 0)

    def commit(self) -> None:
        """fsync, then (file) rename the finished file over the destination. A scratch file
        is only closed: it is removed when the import ends, durability buys nothing."""
        if self.mode == "scratch":
            os.close(self.fd)
            self.fd = -1
            return
        try:
            # renamed while still locked (a device or a file written in place is only synced)
            commit_file(self.write_path, self.path, self.fd)
        except OSError as exc:
            raise _oserror(exc, self.path, "committing") from exc
        finally:
            os.close(self.fd)
            self.fd = -1
        log.info("Successfully completed fsync(%s) syscall, committed to disk", self.path)

    def abort(self, written: int | None = None) -> None:
        """Undo after a failure: a partial file is removed; on a block device the range written
        so far is zeroed when known (best effort), because it cannot be removed."""
        if self.fd >= 0 and self.mode == "apply":
            log.warning("the stage failed part way: %s holds part of its changes; run the stage "
                        "again (or a full import)", self.path)
            os.close(self.fd)
            self.fd = -1
            return
        if self.fd >= 0:
            if self.is_block and written:
                try:
                    self.zero_range(0, written)
                except Exception as exc:  # best effort: the original error matters more
                    log.warning("could not zero the partly written device: %s", exc)
            if not self.is_block:  # removed while still locked: never another import's
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.write_path)
            os.close(self.fd)
            self.fd = -1


def dest_kind(path: Path) -> str:
    """What DEST is: "absent", "file" (regular), "block" (a block device, or a symlink to one),
    "stream" (a character device or FIFO, or a symlink to one) or "dir". Anything else is
    refused here, before a byte is fetched (see the module's docstring)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        raise _oserror(exc, path, "examining") from exc
    link = stat.S_ISLNK(st.st_mode)
    if link:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise TargetError(f"{path} is a symbolic link to {os.readlink(path)!r}, which "
                              f"cannot be reached ({exc.strerror or exc}); a link is never "
                              "replaced: remove it, or name the device or file itself") from exc
    mode = st.st_mode
    if stat.S_ISBLK(mode):
        return "block"
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return "stream"
    if stat.S_ISDIR(mode):
        return "dir"
    if link:
        what = "a regular file" if stat.S_ISREG(mode) else "neither a file nor a device"
        raise TargetError(f"{path} is a symbolic link to {os.path.realpath(path)} ({what}); a "
                          "link to a file is neither replaced nor written through: name the "
                          "file itself as DEST, or remove the link")
    if stat.S_ISREG(mode):
        return "file"
    raise TargetError(f"{path} is a socket or another special file, which an import cannot "
                      "write; name a file or a device as DEST")


@functools.cache
def _libc() -> ctypes.CDLL:
    # dlopen(NULL): the symbols already loaded, libc's among them. ctypes.util.find_library
    # runs `ldconfig -p` in a child (20 ms of every pod import, in a py-spy profile)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return libc


SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """sync_file_range(fd, 0, 0, WRITE): queue every dirty page of the file for writing and
    return (os has no binding for it). Errors are left to the final fsync, which reports them."""
    _libc().sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with modes: os.posix_fallocate offers only mode 0 (allocate)."""
    if _libc().fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class StreamTarget:
    """Raw bytes written strictly in order: DEST `-` (standard output), a character device or a
    FIFO. A pipe has no holes, so zero runs are written as zeros; nothing can be rewritten, so
    only plans that write in order (the stream plan) can use it. Committing is a flush; there
    is nothing to remove on failure."""

    sequential = True
    is_block = False
    mode = "stream"
    capacity: int | None = None

    def __init__(self, fd: int = 1, path: Path | None = None) -> None:
        self.path = path or Path("<standard output>")
        self.fd = fd
        self.position = 0
        self._zeros = bytes(1 << 20)

    @classmethod
    def open_path(cls, path: Path) -> StreamTarget:
        """Open a character device or FIFO for writing (a FIFO waits for its reader, as dd
        does); what was opened is checked again, so a file swapped in meanwhile is refused."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as exc:
            raise _oserror(exc, path, "opening") from exc
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
            os.close(fd)
            raise TargetError(f"{path} changed while it was opened (it is no longer a "
                              "character device or FIFO); try again")
        return cls(fd, path)

    def check_fits(self, virtual_size: int | None) -> None:
        pass

    @contextlib.contextmanager
    def writing(self, written: Callable[[], int | None] = lambda: None) -> Iterator[StreamTarget]:
        try:
            yield self
        finally:
            self.close()

    def write_at(self, offset: int, data: memoryview) -> None:
        self.zeros_to(offset)
        if offset != self.position:
            raise TargetError(f"standard output takes the data in order, and byte {offset} "
                              f"came after byte {self.position}; write to a file instead")
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
                self.position += n
        except BrokenPipeError as exc:
            raise TargetError(f"{self.path} was closed by its reader (a broken pipe)") from exc
        except OSError as exc:
            raise _oserror(exc, self.path, "writing") from exc

    def zeros_to(self, end: int) -> None:
        while self.position < end:
            n = min(len(self._zeros), end - self.position)
            self.write_at(self.position, memoryview(self._zeros)[:n])

    def zero_range(self, offset: int, length: int) -> None:
        self.zeros_to(offset + length)

    def preallocate(self, size: int) -> None:
        pass

    def set_size(self, size: int) -> None:
        if size > self.position:
            self.zeros_to(size)  # the disk's full length, zeros to the end
        elif size < self.position:
            log.warning("standard output already holds %d bytes; the disk is %d bytes and a "
                        "pipe cannot be cut", self.position, size)

    def current_size(self) -> int:
        return self.position

    def close(self) -> None:
        if self.fd > 2:
            os.close(self.fd)
            self.fd = -1

