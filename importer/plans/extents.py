"""The extent copier, and the two plans built on it.

* ranges   a raw image from a range-capable source (disks/raw.py);
* extents  a disk with a data/zero map: native qcow2 (disks/qcow2.py) or the blocks of a
           multi-block .xz (disks/xz.py), from a ranged source or a staged file.

One loop for all of them: zero runs become holes on a fresh file (nothing is written) or zeroed
ranges on an old disk; data runs are split into pieces read by a bounded pool of workers into
pooled buffers (reused: a fresh buffer per piece halved throughput in the design measurements)
and written at their offsets. Memory is bounded by the pool; progress counts guest bytes of both
kinds; a cancel is seen before the next piece.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..disks.base import Extent, RandomAccessDisk
from ..errors import SourceContentError
from ..progress import Progress
from ..sinks.raw import SparseWriter
from ..sinks.target import Target
from . import Plan
from .context import RunState, SourceReads
from .writing import raw_target, settle_raw

__all__ = ["CHUNK", "copy_extents", "open_disk", "run"]

log = logging.getLogger(__name__)

#: one piece of a data run; a multiple of every qcow2 cluster size (512 B to 2 MiB)
CHUNK = 8 << 20


class _Buffers:
    """Reused read buffers (a fresh one per piece halved throughput), made as needed up to
    `bound`: a small image never pays for (zeroed) 64 MiB of them."""

    def __init__(self, size: int, bound: int) -> None:
        self._size, self._bound, self._made = size, bound, 0
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._lock = threading.Lock()

    def take(self) -> bytearray:
        with self._lock:
            if self._free.empty() and self._made < self._bound:
                self._made += 1
                return bytearray(self._size)
        return self._free.get()

    def give(self, buf: bytearray) -> None:
        self._free.put(buf)


def copy_extents(disk: RandomAccessDisk, writer: SparseWriter, *, workers: int,
                 progress: Progress, cancel: threading.Event,
                 on_error: Callable[[], None] = lambda: None, chunk: int = CHUNK) -> None:
    """Copy every extent of `disk` through `writer`. On an error or a signal, `on_error` runs
    first (closing the source aborts reads blocked in the workers at once) and the pool is not
    waited for: a SIGTERM must not wait out a download (seen: 30 s for 8 MiB ranges at
    256 KiB/s). A target that takes the disk in order (standard output, a pipe) gets it so:
    the workers only read, and this thread writes each piece and each zero run in order."""
    _Copy(disk, writer, workers, progress, cancel, chunk).run(on_error)


class _Copy:
    def __init__(self, disk: RandomAccessDisk, writer: SparseWriter, workers: int,
                 progress: Progress, cancel: threading.Event, chunk: int) -> None:
        self.disk, self.writer, self.progress, self.cancel = disk, writer, progress, cancel
        self.unit, self.chunk = disk.read_unit, chunk
        self.in_flight = workers + 1 if self.unit else 2 * workers
        self.buffers = _Buffers(min(self.unit or chunk, max(disk.size, 1)), self.in_flight)
        self.ordered = getattr(writer.target, "sequential", False)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="extent")
        self.pending: collections.deque[tuple[Future[Any], int, int]] = collections.deque()

    def run(self, on_error: Callable[[], None]) -> None:
        try:
            for extent in self.disk.extents():
                if self.cancel.is_set():
                    break
                if extent.zero:
                    while self.ordered and self.pending:
                        self._settle_one()
                    self.writer.write_zeros(extent.start, extent.length)
                    self.progress.update(extent.length)
                    continue
                for offset, length in _pieces(extent, self.unit, self.chunk):
                    self.pending.append((self._submit(offset, length), offset, length))
                    if len(self.pending) >= self.in_flight:
                        self._settle_one()
            while self.pending:
                self._settle_one()
        except BaseException:
            self.cancel.set()
            on_error()
            self.pool.shutdown(wait=False, cancel_futures=True)
            raise
        self.pool.shutdown(wait=True)
        self.writer.finish()

    def _submit(self, offset: int, length: int) -> Future[Any]:
        if self.ordered:
            return self.pool.submit(self._fetch, offset, length)
        return self.pool.submit(self._copy, offset, length)

    def _settle_one(self) -> None:
        fut, offset, length = self.pending.popleft()
        result = fut.result()
        if self.ordered:
            self._store(offset, length, result)

    def _copy(self, offset: int, length: int) -> None:
        self._store(offset, length, self._fetch(offset, length))

    def _fetch(self, offset: int, length: int) -> bytearray | None:
        if self.cancel.is_set():
            return None
        buf = self.buffers.take()
        try:
            n = self.disk.readinto_at(offset, memoryview(buf)[:length])
            if n != length:
                raise SourceContentError(f"the image ended at byte {offset + n}, before the "
                                         f"{self.disk.size} bytes it announced")
        except BaseException:
            self.buffers.give(buf)
            raise
        return buf

    def _store(self, offset: int, length: int, buf: bytearray | None) -> None:
        if buf is not None:
            try:
                self.writer.write(offset, buf, length)
                self.progress.update(length)
            finally:
                self.buffers.give(buf)


def _pieces(extent: Extent, unit: int, chunk: int) -> Iterator[tuple[int, int]]:
    if unit:  # read whole (an xz block)
        yield extent.start, extent.length
        return
    for offset in range(extent.start, extent.end, chunk):
        yield offset, min(chunk, extent.end - offset)


# ---------------------------------------------------------------------------- plans


def open_disk(st: RunState, plan: Plan, reads: SourceReads, size: int) -> RandomAccessDisk:
    """The random-access disk the plan names, over `reads` (the source or a staged file)."""
    det = st.detected
    if plan.disk == "raw":
        limit = det.info.virtual_size if det.info.format == "vhd" else None
        local = getattr(st.source, "fileno", None)
        fd = local() if callable(local) and limit is None else None
        from ..disks.raw import RawDisk
        from ..sources.base import ExtentSource

        extent_map = (st.source.extent_map() if isinstance(st.source, ExtentSource)
                      and limit is None else None)
        return RawDisk(reads.readinto_at, size if limit is None else limit, det.pins,
                       local_fd=fd, extent_map=extent_map,
                       complete=not (plan.name == "delta" and extent_map is not None))
    if plan.disk == "xz":
        from ..disks.xz import XzDisk

        assert st.xz_blocks is not None
        return XzDisk(reads.read_at, st.xz_blocks, det.pins)
    if plan.disk == "qcow2":
        return open_qcow2(st, reads, size, delta=plan.name == "delta")
    if plan.disk == "vmdk":
        from ..disks.vmdk import VmdkDisk
        from ..formats.vmdk_header import parse_vmdk_header as vmdk_header

        head = det.pins.reader(reads.read_at)(0, min(512, size))  # what the inspector judged
        return VmdkDisk(vmdk_header(head), reads.readinto_at, size, det.pins)
    raise AssertionError(f"no disk reader for {plan.disk}")


def open_qcow2(st: RunState, reads: SourceReads, size: int, *, delta: bool = False
               ) -> RandomAccessDisk:
    from ..disks.qcow2 import Qcow2Disk, parse_header

    det = st.detected
    readinto: Callable[[int, bytearray | memoryview], int] = reads.readinto_at
    if det.codecs:  # a qcow2 inside a multi-block xz: random access through its blocks
        from ..formats.xz_blocks import XzBlockReader

        assert st.xz_blocks is not None
        xzr = XzBlockReader(reads.read_at, st.xz_blocks,
                            workers=st.config.connections)
        st.stack.callback(xzr.close)
        size = xzr.size

        def readinto(offset: int, buf: bytearray | memoryview) -> int:
            data = xzr.read(offset, len(buf))
            memoryview(buf)[: len(data)] = data
            return len(data)

    def read_at(offset: int, length: int) -> bytes:
        buf = bytearray(max(0, min(length, size - offset)))
        return bytes(buf[: readinto(offset, buf)])

    head = det.pins.reader(read_at)(0, min(512, size))  # the bytes the inspector judged
    disk = Qcow2Disk(parse_header(head, backing=delta), readinto, size, det.pins,
                     workers=st.config.connections, delta=delta)
    st.stack.callback(disk.close)
    return disk


def run(st: RunState, plan: Plan, target: Target, *, disk: RandomAccessDisk | None = None
        ) -> None:
    """The ranges, extents and delta plans; the staged plan calls it with the staged file's
    disk. A delta's disk maps only what it changes: those runs are applied onto the target
    (opened in `apply` mode), and nothing else of it is touched."""
    cfg = st.config
    if disk is None:
        st.stream_closer.close()  # the sequential stream is not needed
        disk = st.disk  # opened by the planner to confirm a native plan
    if disk is None:
        size = st.source.info().size
        assert size is not None
        # progress counts guest bytes here, not source bytes
        disk = open_disk(st, plan, st.reads(progress=False), size)
    st.result.virtual_size = disk.size
    if plan.name != "staged":  # the staged plan has planned its two phases already
        st.progress.plan([("TransferDataFile", 100, True)])
        st.progress.enter("TransferDataFile")
    # progress counts the guest bytes copied, data and zeros alike, from here
    st.progress.total, st.progress.n = disk.size, 0
    if not disk.complete:  # a delta: the map is read first, so progress has a total
        changes = list(disk.extents())
        st.progress.total = sum(e.length for e in changes)
        log.info("the delta changes %d bytes in %d runs (%d of them zeroed)",
                 st.progress.total, len(changes), sum(e.length for e in changes if e.zero))
        disk = _Listed(disk, changes)
    workers = max(2, os.cpu_count() or 2) if plan.disk == "xz" else cfg.connections
    readers = st.source.info().max_readers
    if readers is not None and readers < workers:
        log.info("the server serves %d readers at a time: %d connections", readers, readers)
        workers = readers
    with raw_target(st, target, disk.size) as writer:
        copy_extents(disk, writer, workers=workers, progress=st.progress, cancel=st.cancel,
                     on_error=st.source.close)
        settle_raw(st, target, writer, disk.size, disk.size)


class _Listed:
    """A disk whose extents were read up front (a delta's changes, to know their total)."""

    complete = False

    def __init__(self, disk: RandomAccessDisk, runs: list[Extent]) -> None:
        self._disk = disk
        self._runs = runs
        self.size = disk.size
        self.read_unit = disk.read_unit
        self.readinto_at = disk.readinto_at

    def extents(self) -> Iterator[Extent]:
        return iter(self._runs)
