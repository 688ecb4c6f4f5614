"""The destination: a regular file or a raw block device, detected rather than configured.

A file target is written to `<name>.partial` beside the destination and renamed over it only
after success, so a failed import never leaves a half-written file under the name a user (or a
VM) will use. A block device is written in place; its size bounds the image.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import functools
import logging
import os
import stat
import struct
from pathlib import Path

from ..errors import TargetError, TargetTooSmallError
from ..quantity import format_bytes

__all__ = ["Target"]

log = logging.getLogger(__name__)
BLKGETSIZE64 = 0x80081272
BLKZEROOUT = 0x127F
BLKDISCARD = 0x1277
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


def _oserror(exc: OSError, path: Path, action: str) -> TargetError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TargetError(f"no space left on the device holding {path} while {action}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return TargetError(f"permission denied {action} {path}; check its owner and mode")
    return TargetError(f"{action} {path} failed: {exc.strerror or exc}")


class Target:
    def __init__(self, path: Path, capacity: int | None = None, *, in_place: bool = False
                 ) -> None:
        self.path = path
        try:
            st = os.stat(path)
            self.is_block = stat.S_ISBLK(st.st_mode)
        except FileNotFoundError:
            self.is_block = False
        partial = not (self.is_block or in_place)
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
        elif capacity is not None:
            self.capacity = capacity
        self._zero_method: str | None = None  # remembered outcome of the zeroing fallbacks

    def _open(self, flags: int) -> int:
        try:
            return os.open(self.write_path, flags | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _oserror(exc, self.write_path, "opening") from exc

    def check_fits(self, virtual_size: int | None) -> None:
        """Fail before any data is written when the image cannot fit."""
        if virtual_size is None or self.capacity is None or virtual_size <= self.capacity:
            return
        what = f"block device {self.path}" if self.is_block else "the requested image size"
        # CDI's controller recognises "is larger than the reported available" (cdi-contract 1.7)
        raise TargetTooSmallError(
            f"virtual image size {virtual_size} ({format_bytes(virtual_size)}) is larger than the "
            f"reported available storage {self.capacity} ({format_bytes(self.capacity)}) of "
            f"{what}; a target of at least {virtual_size} bytes is required",
            required=virtual_size, available=self.capacity)

    def open(self) -> int:
        if self.is_block:
            self.fd = self._open(os.O_WRONLY | os.O_EXCL)  # EXCL: not mounted or in use
        else:
            self.fd = self._open(os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        return self.fd

    # ------------------------------------------------------------------ zeroing

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
        """Allocate every block of a file target (reads back as zeros)."""
        try:
            os.posix_fallocate(self.fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise _oserror(exc, self.path, "preallocating") from exc
            log.info("fallocate unsupported on %s; writing zeros to preallocate", self.path)
            self.write_zeros(0, size)

    # ------------------------------------------------------------------ completion

    def set_size(self, size: int) -> None:
        if self.is_block:
            return
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            raise _oserror(exc, self.path, "resizing") from exc

    def current_size(self) -> int:
        return os.fstat(self.fd).st_size if not self.is_block else (self.capacity or 0)

    def commit(self) -> None:
        """fsync, then (file) rename the finished file over the destination."""
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise _oserror(exc, self.path, "fsync of") from exc
        os.close(self.fd)
        self.fd = -1
        if self.write_path != self.path:
            os.replace(self.write_path, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        log.info("Successfully completed fsync(%s) syscall, committed to disk", self.path)

    def abort(self, written: int | None = None) -> None:
        """Undo after a failure: a partial file is removed; on a block device the range written
        so far is zeroed when known (best effort), because it cannot be removed."""
        if self.fd >= 0:
            if self.is_block and written:
                try:
                    self.zero_range(0, written)
                except Exception as exc:  # best effort: the original error matters more
                    log.warning("could not zero the partly written device: %s", exc)
            os.close(self.fd)
            self.fd = -1
        if not self.is_block:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.write_path)


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
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
