"""The convert plan: qemu-img reads the image through our NBD export of the (pinned) source and
writes raw to the target. Also the second half of the staged plan when the converter is
qemu-img (it then reads the staged file)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import ImporterError
from ..formats.headers import ImageInfo
from ..formats.xz_blocks import XzBlockReader
from ..sinks.nbd_export import NbdExport
from ..sinks.qemu import QemuInput, choose_cache_mode, qemu_convert, qemu_data_bytes, qemu_info
from ..sinks.raw import SparseWriter
from ..sinks.target import Target
from ..sources.cache import ReadAheadCache
from . import Plan
from .context import RunState

__all__ = ["qemu_to_target", "run"]

log = logging.getLogger(__name__)

InputFactory = Callable[[], contextlib.AbstractContextManager[QemuInput]]
#: -O's output is a private work file, fsync'ed before it is renamed onto DEST
#: (output_format.py): qemu-img's flushes along the way buy nothing there, and cost vmdk's
#: writer 3x its time (1.8 s against 0.6 s for 0.3 GiB of data)
OUTPUT_CACHE = "unsafe"


def run(st: RunState, plan: Plan, target: Target) -> None:
    det = st.detected
    info = st.source.info()
    size = info.size
    assert size is not None
    if plan.details.get("local_file") and info.local_path is not None:  # the planner's call
        _from_local_file(st, target, info.local_path)
        return
    reads = st.reads()
    read: Any
    if det.codecs:  # inside a multi-block xz (the planner allows no other layer)
        assert st.xz_blocks is not None
        xzr = XzBlockReader(reads.read_at, st.xz_blocks)
        st.stack.callback(xzr.close)
        read, size = xzr.read, xzr.size
    else:
        cache = ReadAheadCache(reads.readinto_at, size, workers=st.config.connections)
        st.stack.callback(cache.close)
        read = cache.read
    st.progress.plan([("Convert", 100, False)])
    st.stream_closer.close()  # not needed: qemu-img reads at random
    pins = det.pins

    def pinned_read(offset: int, length: int) -> Any:
        return pins.apply(offset, read(offset, length))  # the inspected bytes, never a re-read

    export = NbdExport(pinned_read, size)
    st.stack.callback(export.close)

    @contextlib.contextmanager
    def qemu_input() -> Iterator[QemuInput]:
        conn = export.connect()  # one connection per qemu-img process
        try:
            yield QemuInput.nbd_fd(det.info.qemu_driver, conn.fileno())
        finally:
            conn.close()

    try:
        qemu_to_target(st, target, det.info, qemu_input)
    except ImporterError:
        # qemu-img only says "Input/output error": the source's own error says why
        if isinstance(export.error, ImporterError):
            raise export.error from None
        raise


def _from_local_file(st: RunState, target: Target, path: Path) -> None:
    """-O from a local file: qemu-img opens it by its path, the driver pinned to the inspected
    format and no backing file allowed (QemuInput); the file must still be the one inspected
    when qemu-img is done, or nothing is committed."""
    det = st.detected
    st.progress.plan([("Convert", 100, False)])
    st.stream_closer.close()

    @contextlib.contextmanager
    def qemu_input() -> Iterator[QemuInput]:
        driver = det.info.qemu_driver if det.info.needs_conversion else "raw"  # raw, iso
        yield QemuInput.local_file(driver, str(path))

    qemu_to_target(st, target, det.info, qemu_input)
    check = getattr(st.source, "check_unchanged", None)
    if check is not None:
        check()


def qemu_to_target(st: RunState, target: Target, info: ImageInfo, qemu_input: InputFactory
                   ) -> None:
    cfg = st.config
    st.progress.enter("Convert")
    with qemu_input() as qin:
        qinfo = qemu_info(qin)
    vsize = int(qinfo["virtual-size"])  # type: ignore[call-overload]
    st.result.virtual_size = vsize
    target.check_fits(vsize)
    out = cfg.output
    if out is not None and not target.is_block and (cfg.image_size or 0) <= vsize:
        # -O: qemu-img is converting anyway, so it writes the asked format at once (a disk
        # that must grow takes the raw copy: qemu-img cannot resize every format)
        log.info("qemu-img writes %s at once (no raw copy)", out.format)
        with qemu_input() as qin:
            qemu_convert(qin, str(out.path), cache=cfg.cache_mode or OUTPUT_CACHE,
                         target_is_zero=False, progress=st.progress, cancel=st.cancel,
                         output=out.qemu_options)
        data = qemu_data_bytes(out.path, out.format)
        st.result.output_format = out.format
        st.result.bytes_written, st.result.zero_bytes_skipped = data, vsize - data
        return
    if target.sequential:
        _through_scratch(st, target, qemu_input, vsize)
        return
    with target.writing(lambda: vsize if target.is_block else None):
        if not target.is_block:
            target.set_size(vsize)
            if cfg.preallocation:
                target.preallocate(vsize)
        cache_mode = cfg.cache_mode or choose_cache_mode(target.fd_path)
        with qemu_input() as qin:
            qemu_convert(qin, target.fd_path, cache=cache_mode,
                         target_is_zero=not target.is_block, progress=st.progress,
                         cancel=st.cancel, dest_fd=target.fd)
        st.finish_size(target, vsize)
        st.finish_target(target)
        holes = _holes(target.fd, vsize) if not target.is_block else None
    # what qemu-img wrote: on a file, its size less the holes it left; a device is written
    # (or zeroed) whole
    st.result.bytes_written = vsize - (holes or 0)
    st.result.zero_bytes_skipped = holes or 0


def _through_scratch(st: RunState, target: Target, qemu_input: InputFactory, vsize: int
                     ) -> None:
    """A target that takes the disk in order (standard output): qemu-img writes a sparse raw
    file in scratch space, which is then copied in order, its holes as zeros."""
    import tempfile

    from .context import scratch_location
    from .writing import raw_target

    fd, name = tempfile.mkstemp(prefix="importer-raw-", dir=scratch_location(st.config, target))
    os.close(fd)
    scratch = Path(name)
    log.info("qemu-img converts to scratch space (%s), then the disk goes out in order",
             scratch.parent)
    try:
        with qemu_input() as qin:
            qemu_convert(qin, str(scratch), cache="unsafe", target_is_zero=False,
                         progress=st.progress, cancel=st.cancel, output=("-O", "raw"))
        st.result.staged_bytes = scratch.stat().st_blocks * 512
        with raw_target(st, target, vsize) as writer, open(scratch, "rb") as f:
            _copy_in_order(f.fileno(), vsize, writer)
            st.finish_size(target, vsize)
    finally:
        scratch.unlink(missing_ok=True)


def _copy_in_order(fd: int, size: int, writer: SparseWriter) -> None:
    from ..disks.raw import file_extents

    for extent in file_extents(fd, size):
        if extent.zero:
            writer.write_zeros(extent.start, extent.length)
            continue
        for at in range(extent.start, extent.end, 8 << 20):
            data = os.pread(fd, min(8 << 20, extent.end - at), at)
            writer.write(at, data, len(data))
    writer.finish()


def _holes(fd: int, size: int) -> int:
    """Bytes of [0, size) the file system holds as holes (SEEK_HOLE/SEEK_DATA)."""

    from ..disks.raw import file_extents

    try:
        return sum(e.length for e in file_extents(fd, size) if e.zero)
    except OSError:
        return 0
