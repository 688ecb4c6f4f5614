"""The one core both front-ends call: plan an import and carry it out.

Plans, cheapest first (the chosen one is logged and reported as `path`):
* ranges     raw/iso from a range-capable source: several connections fetch chunks at once,
             each written at its offset, zeros skipped;
* stream     raw/iso (and gz/xz/zstd/bz2-compressed raw) straight to the target, zeros skipped;
* xz-blocks  multi-block .xz raw from a range-capable source: blocks decoded on all cores;
* nbd        qcow2/vmdk/vdi/vhd/vhdx from a range-capable source (or inside a multi-block .xz):
             qemu-img reads it through our NBD export, nothing is staged;
* staged     the same formats when the source cannot be read at random (no Range support, gzip
             or zstd around them) or a checksum must be verified before the target is touched:
             decompressed to a sparse scratch file, inspected again, then converted;
* archive    tar (optionally compressed) extracted safely into a directory.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import ContentType, ImportConfig
from .errors import (
    ChecksumMismatchError,
    FormatError,
    ImporterError,
    ScratchSpaceRequiredError,
    SourceContentError,
)
from .formats.detect import Detected, detect
from .formats.headers import ImageInfo, inspect_image, vhd_fixed_footer_size
from .formats.pinned import PinnedBytes
from .formats.xz_blocks import (
    MAX_BLOCK,
    XzBlock,
    XzBlockReader,
    ZeroBlockMemo,
    decode_pieces,
    read_block,
    read_xz_index,
)
from .progress import Progress
from .quantity import format_bytes
from .sinks.archive import extract_tar
from .sinks.nbd_export import NbdExport
from .sinks.qemu import QemuInput, choose_cache_mode, qemu_convert, qemu_info
from .sinks.raw import SparseWriter, pump
from .sinks.target import Target
from .sources import Source, open_source
from .sources.cache import ReadAheadCache
from .sources.file import FileSource
from .streams import CountingStream, ThreadedReader

__all__ = ["ImportResult", "inspect_source", "run_import"]

RANGE_CHUNK = 8 << 20

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ImportResult:
    source: str
    destination: str
    target_kind: str  # file, block or directory
    format: str
    compression: list[str]
    virtual_size: int | None
    path: str  # stream, xz-blocks, nbd, staged, archive
    staged_bytes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    zero_bytes_skipped: int = 0
    preallocated: bool = False
    checksum: str | None = None
    #: labels the source carries for the caller (a container disk's KUBEVIRT_IO_ entries)
    labels: dict[str, str] = field(default_factory=dict)
    duration_seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Run:
    """State of one import; methods are the steps of the plans above."""

    def __init__(self, config: ImportConfig, progress: Progress, cancel: threading.Event) -> None:
        self.config = config
        self.progress = progress
        self.cancel = cancel
        self.stack = contextlib.ExitStack()
        # the sequential stream alone, closed early when a plan reads at random instead
        self.stream_closer = contextlib.ExitStack()
        self.stack.callback(self.stream_closer.close)
        self.spec = config.checksum  # the checksum to verify: the user's, or the object's own
        self.hasher = config.checksum.new_hash() if config.checksum else None

    # ---------------------------------------------------------------- opening

    def open(self) -> tuple[Source, Detected, CountingStream]:
        src = open_source(self.config)
        self.stack.callback(src.close)
        info = src.info()
        self.progress.total = info.size
        if self.spec is None and info.checksum is not None:
            self.spec, self.hasher = info.checksum, info.checksum.new_hash()
        counting = CountingStream(src.open_stream(0), self.progress, self.hasher)
        stream = ThreadedReader(counting)
        self.stream_closer.callback(stream.close)
        detected = detect(stream, size=info.size,
                          source_read_at=src.read_at if info.random_access else None)
        return src, detected, counting

    def verify_checksum(self, counting: CountingStream) -> str | None:
        spec = self.spec
        if spec is None:
            return None
        counting.drain()
        got = counting.hasher.hexdigest() if counting.hasher else ""
        if got != spec.hexdigest:
            raise ChecksumMismatchError(
                f"checksum mismatch: expected {spec.algorithm}:{spec.hexdigest}, calculated "
                f"{spec.algorithm}:{got}; the download is corrupt or the checksum is wrong, and "
                "nothing was imported")
        log.info("Checksum verification passed: %s:%s", spec.algorithm, got)
        return f"{spec.algorithm}:{got}"

    # ---------------------------------------------------------------- plans

    def run(self) -> ImportResult:
        cfg = self.config
        src, det, counting = self.open()
        info = det.info
        result = ImportResult(
            source=_redact(cfg.source), destination=str(cfg.dest), target_kind="file",
            format=info.format, compression=det.codecs, virtual_size=info.virtual_size, path="",
            labels=dict(src.info().labels))
        if cfg.content_type is ContentType.ARCHIVE:
            return self.archive(src, det, counting, result)
        if info.format == "tar" and not cfg.tar_as_raw:
            raise FormatError("the data is a tar archive; use --content-type archive to extract "
                              "it into a directory")
        if info.format == "tar":
            log.warning("the data is a tar archive, written as a raw disk image as CDI does; "
                        "use contentType: archive to extract it into the volume instead")
        target = Target(cfg.dest, cfg.capacity)
        result.target_kind = "block" if target.is_block else "file"
        if info.needs_conversion and not (info.format == "vhd" and info.details.get("type") == "fixed"):
            self.convert(src, det, counting, target, result)
        else:
            self.stream_raw(src, det, counting, target, result)
        result.bytes_read = self.progress.n
        if self.spec is not None and result.checksum is None and cfg.checksum is None:
            log.info("the object's own %s checksum was not verified: the %s plan reads it at "
                     "random (give --checksum to verify in order)", self.spec.algorithm, result.path)
        return result

    def archive(self, src: Source, det: Detected, counting: CountingStream, result: ImportResult
                ) -> ImportResult:
        if det.info.format != "tar":
            raise FormatError(f"--content-type archive needs a tar archive, but the data is "
                              f"{det.info.format}")
        result.target_kind, result.path = "directory", "archive"
        self.progress.plan([("TransferDataDir", 100, True)])
        self.progress.enter("TransferDataDir")
        extraction, stats = extract_tar(det.stream, self.config.dest, self.progress,
                                        self.config.capacity)
        try:
            result.checksum = self.verify_checksum(counting)
            src.verify()
            extraction.commit()
        except BaseException:
            extraction.abort()
            raise
        result.bytes_written = stats.bytes_written
        result.bytes_read = self.progress.n
        result.details = {"files": stats.files, "directories": stats.directories,
                          "skipped": stats.skipped}
        return result

    def _xz_blocks(self, src: Source, det: Detected) -> list[XzBlock] | None:
        """The block list when the data is one xz layer over a range-capable source and has
        several blocks that fit in memory: the shape that can be decoded in parallel."""
        info = src.info()
        if det.codecs != ["xz"] or not info.random_access or not info.size:
            return None
        blocks = read_xz_index(src.read_at, info.size)
        if len(blocks) < 2 or max(b.uncompressed_size for b in blocks) > MAX_BLOCK:
            log.info("xz file has %d block(s): decoding it as one stream", len(blocks))
            return None
        return blocks

    def stream_raw(self, src: Source, det: Detected, counting: CountingStream, target: Target,
                   result: ImportResult) -> None:
        cfg = self.config
        blocks = self._xz_blocks(src, det)
        limit = det.info.virtual_size if det.info.format == "vhd" else None
        vsize = det.info.virtual_size
        if blocks:  # the index gives the size up front, so a target too small fails at once
            vsize = sum(b.uncompressed_size for b in blocks)
        if cfg.checksum:
            blocks = None  # the hash needs the bytes in order: decode as one stream
        result.virtual_size = vsize
        target.check_fits(vsize)
        self.progress.plan([("TransferDataFile", 100, True)])
        self.progress.enter("TransferDataFile")
        target.open()
        writer = SparseWriter(target, self.progress, preallocate=cfg.preallocation)
        try:
            if cfg.preallocation and not target.is_block and vsize:
                target.preallocate(vsize)
            if blocks:
                result.path = "xz-blocks"
                self.stream_closer.close()  # the sequential stream is not needed
                total = self._parallel_xz(src, det.pins, blocks, writer)
            elif self._ranged_copy_possible(src, det):
                result.path = "ranges"
                self.stream_closer.close()
                size = src.info().size or 0
                total = self._parallel_ranges(src, det.pins, writer,
                                              size if limit is None else limit)
                if limit is not None:
                    total = size
                    self.progress.update(size - limit)  # the footer: counted, not copied
            else:
                result.path = "stream"
                total = pump(det.stream, writer, limit=limit, cancel=self.cancel)
                result.checksum = self.verify_checksum(counting)
            final = min(total, limit) if limit is not None else total
            footer = None if limit is not None else vhd_fixed_footer_size(writer.tail)
            if footer is not None and footer == total - 512:
                log.info("the data ends with a fixed-VHD footer: the disk is the %d bytes before it",
                         footer)
                result.format, final = "vhd", footer
                if target.is_block:
                    target.zero_range(footer, 512)
            result.virtual_size = self._finish_size(target, final)
            if cfg.preallocation and not target.is_block:
                target.preallocate(target.current_size())
            result.preallocated = cfg.preallocation
            src.verify()
            target.commit()
        except BaseException:
            target.abort(writer.high_water)
            raise
        result.bytes_written = self.progress.bytes_written
        result.zero_bytes_skipped = self.progress.zero_bytes

    def _parallel_xz(self, src: Source, pins: PinnedBytes, blocks: list[XzBlock],
                     writer: SparseWriter) -> int:
        workers = max(2, os.cpu_count() or 2)
        self.progress.total = blocks[-1].offset + blocks[-1].unpadded_size

        memo = ZeroBlockMemo()

        def one(block: XzBlock) -> None:
            if self.cancel.is_set():
                return
            compressed = read_block(src.read_at, block)
            self.progress.update(block.unpadded_size)
            if memo.is_zero(compressed, block.uncompressed_size):
                writer.write_zeros(block.uncompressed_offset, block.uncompressed_size)
                return
            zeros = 0
            for offset, piece in decode_pieces(compressed, block):
                if self.cancel.is_set():
                    return
                data = pins.apply(offset, piece)  # the inspected head, never a re-read
                assert not isinstance(data, memoryview)  # bytes in, bytes or a copy out
                zeros += writer.write(offset, data, len(data))
            if zeros == block.uncompressed_size:
                memo.remember(compressed, block.uncompressed_size)

        # bound memory: a few decoded blocks at a time
        self._run_parallel(src, one, blocks, workers, in_flight=workers + 1, name="xz")
        writer.finish()
        return sum(b.uncompressed_size for b in blocks)

    def _run_parallel(self, src: Source, fn: Callable[[Any], None], items: Iterable[Any],
                      workers: int, *, in_flight: int, name: str) -> None:
        """fn over items on a pool, at most `in_flight` submitted at once, results in order.
        On an error or a signal the source is closed first, which aborts reads blocked in the
        workers at once, and the pool is not waited for: a SIGTERM must not wait out a
        download (seen: 30 s for 8 MiB ranges at 256 KiB/s)."""
        pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
        try:
            pending: collections.deque[Future[None]] = collections.deque()
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= in_flight:
                    pending.popleft().result()
            while pending:
                pending.popleft().result()
        except BaseException:
            self.cancel.set()
            src.close()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    def _ranged_copy_possible(self, src: Source, det: Detected) -> bool:
        """Plain data from a range-capable source, with no checksum to compute in order:
        several connections can fetch it at once, each chunk written at its offset."""
        info = src.info()
        return (not det.codecs and info.random_access and bool(info.size)
                and self.config.checksum is None and self.config.connections > 1)

    def _parallel_ranges(self, src: Source, pins: PinnedBytes, writer: SparseWriter, size: int
                         ) -> int:
        """One network stream is bound to one core; N ranged connections spread the kernel's
        receive work (measured on 2 cores: 3.8 s -> see the benchmark for 4 GiB raw)."""
        chunk = RANGE_CHUNK
        workers = self.config.connections
        buffers: queue.Queue[bytearray] = queue.Queue()
        for _ in range(workers):
            buffers.put(bytearray(chunk))

        def one(offset: int) -> None:
            if self.cancel.is_set():
                return
            buf = buffers.get()
            try:
                want = min(chunk, size - offset)
                view = buf if want == chunk else bytearray(want)
                n = src.readinto_at(offset, view)
                if n != want:
                    raise SourceContentError(f"the source ended at byte {offset + n}, before "
                                             f"the {size} bytes it announced")
                self.progress.update(n)
                pins.overlay(offset, view, n)  # the inspected head, never a re-read
                writer.write(offset, view, n)
            finally:
                buffers.put(buf)

        self._run_parallel(src, one, range(0, size, chunk), workers, in_flight=2 * workers,
                           name="range")
        writer.finish()
        return size

    def _finish_size(self, target: Target, data_size: int) -> int:
        """The file gets the image's full length, grown to --image-size (never shrunk); the
        disk's size without that growth."""
        if data_size % 512 and not target.is_block:
            padded = data_size + 512 - data_size % 512
            # qemu (and so CDI, which converts every raw) rounds a disk up to whole sectors
            log.warning("the image is %d bytes, not a whole number of 512-byte sectors: padded "
                        "with zeros to %d bytes as qemu and CDI do. A disk image of that length "
                        "is usually truncated (a download cut short?) and may not boot; check "
                        "the source", data_size, padded)
            data_size = padded
        size = max(data_size, self.config.image_size or 0)
        if self.config.image_size and data_size > self.config.image_size:
            log.warning("the image (%d bytes) is larger than --image-size; not shrinking", data_size)
        target.set_size(size)
        return data_size

    def convert(self, src: Source, det: Detected, counting: CountingStream, target: Target,
                result: ImportResult) -> None:
        cfg = self.config
        sinfo = src.info()
        read: Any = None
        size = 0
        why_stage = None
        export: NbdExport | None = None

        def read_at(offset: int, length: int) -> bytes:
            data = src.read_at(offset, length)
            self.progress.update(len(data))
            return data

        def readinto_at(offset: int, buf: bytearray) -> int:
            n = src.readinto_at(offset, buf)
            self.progress.update(n)
            return n

        if cfg.checksum:
            why_stage = "a checksum must be verified before the target is written"
        elif not sinfo.random_access:
            why_stage = sinfo.sequential_reason or "the server does not support range requests"
        elif det.codecs == []:
            assert sinfo.size is not None
            cache = ReadAheadCache(readinto_at, sinfo.size, workers=cfg.connections)
            self.stack.callback(cache.close)
            read, size = cache.read, sinfo.size
        elif (blocks := self._xz_blocks(src, det)) is not None:
            xzr = XzBlockReader(read_at, blocks)
            self.stack.callback(xzr.close)
            read, size = xzr.read, xzr.size
        else:
            why_stage = f"{'+'.join(det.codecs)} compressed data cannot be read at random"

        staged_path = ""
        if why_stage:
            result.path = "staged"
            self.progress.plan([("TransferScratch", 50, True), ("Convert", 50, False)])
            staged = self._stage(det, counting, target, why_stage)
            result.checksum = self.verify_checksum(counting)
            result.staged_bytes = staged.info().size or 0
            # the staged file is what qemu-img reads, so it is what is inspected
            info = inspect_image(det.info.format, staged.read_at, staged.info().size)
            staged_path = str(staged.path)
        else:
            result.path = "nbd"
            self.progress.plan([("Convert", 100, False)])
            self.stream_closer.close()  # not needed: qemu-img reads at random
            pins = det.pins

            def pinned_read(offset: int, length: int) -> Any:
                return pins.apply(offset, read(offset, length))

            export = NbdExport(pinned_read, size)
            self.stack.callback(export.close)
            info = det.info

        @contextlib.contextmanager
        def qemu_input() -> Iterator[QemuInput]:
            if export is None:
                yield QemuInput.local_file(info.qemu_driver, staged_path)
                return
            conn = export.connect()  # one connection per qemu-img process
            try:
                yield QemuInput.nbd_fd(info.qemu_driver, conn.fileno())
            finally:
                conn.close()

        self.progress.enter("Convert")
        with qemu_input() as qin:
            qinfo = qemu_info(qin)
        vsize = int(qinfo["virtual-size"])  # type: ignore[call-overload]
        result.virtual_size = vsize
        target.check_fits(vsize)
        target.open()
        try:
            if not target.is_block:
                target.set_size(vsize)
                if cfg.preallocation:
                    target.preallocate(vsize)
            cache_mode = cfg.cache_mode or choose_cache_mode(target.fd_path)
            try:
                with qemu_input() as qin:
                    qemu_convert(qin, target.fd_path, cache=cache_mode,
                                 target_is_zero=not target.is_block, progress=self.progress,
                                 cancel=self.cancel, dest_fd=target.fd)
            except ImporterError:
                # qemu-img only says "Input/output error": the source's own error says why
                if export is not None and isinstance(export.error, ImporterError):
                    raise export.error from None
                raise
            self._finish_size(target, vsize)
            if cfg.preallocation and not target.is_block:
                # the area the resize added must be allocated too, not only the image's
                target.preallocate(target.current_size())
            result.preallocated = cfg.preallocation
            src.verify()
            target.commit()
        except BaseException:
            target.abort(vsize if target.is_block else None)
            raise
        result.bytes_written = vsize

    def _stage(self, det: Detected, counting: CountingStream, target: Target, why: str
               ) -> FileSource:
        cfg = self.config
        if cfg.scratch_required and not (cfg.scratch_dir and cfg.scratch_dir.is_dir()):
            raise ScratchSpaceRequiredError(f"scratch space required and none found ({why})")
        if cfg.scratch_dir:
            scratch_dir = cfg.scratch_dir
        elif target.is_block:
            scratch_dir = Path(tempfile.gettempdir())
        else:
            scratch_dir = cfg.dest.parent
        fd, name = tempfile.mkstemp(prefix=".importer-scratch-", dir=scratch_dir)
        os.close(fd)
        path = Path(name)
        self.stack.callback(lambda: path.unlink(missing_ok=True))
        log.warning("staging the image in %s because %s", scratch_dir, why)
        self.progress.enter("TransferScratch")
        scratch = Target(path, in_place=True)  # removed when the import ends
        scratch.open()
        writer = SparseWriter(scratch, Progress(), preallocate=False)
        total = pump(det.stream, writer, cancel=self.cancel)
        scratch.set_size(total)
        os.close(scratch.fd)
        scratch.fd = -1
        log.info("staged %s (%d bytes) in %s", format_bytes(total), total, path)
        src = FileSource(path)
        self.stack.callback(src.close)
        return src


def _redact(url: str) -> str:
    from urllib.parse import urlsplit

    p = urlsplit(url)
    return f"{p.scheme}://{p.hostname}{f':{p.port}' if p.port else ''}{p.path}" if p.netloc else url


def run_import(config: ImportConfig, progress: Progress | None = None,
               cancel: threading.Event | None = None) -> ImportResult:
    progress = progress or Progress()
    started = time.monotonic()
    run = _Run(config, progress, cancel or threading.Event())
    with run.stack:
        result = run.run()
    progress.finish()
    result.duration_seconds = round(time.monotonic() - started, 3)
    return result


def inspect_source(config: ImportConfig) -> dict[str, Any]:
    """What the source holds, read from its headers only: format, compression, virtual size,
    and whether it passed the safety checks (an unsafe image raises UnsafeImageError)."""
    progress = Progress()
    run = _Run(config, progress, threading.Event())
    with run.stack:
        src, det, _ = run.open()
        sinfo = src.info()
        info: ImageInfo = det.info
        vsize = info.virtual_size
        if det.codecs == ["xz"] and sinfo.random_access and sinfo.size and not info.needs_conversion:
            with contextlib.suppress(FormatError):
                vsize = sum(b.uncompressed_size for b in read_xz_index(src.read_at, sinfo.size))
        return {
            "source": _redact(config.source),
            "format": info.format,
            "compression": det.codecs,
            "virtual_size": vsize,
            "source_size": sinfo.size,
            "range_requests": sinfo.random_access,
            "details": info.details,
            "safe": True,
            "streamable": not info.needs_conversion or (sinfo.random_access and (
                not det.codecs or det.codecs == ["xz"])),
            "version": sinfo.version,
            "labels": sinfo.labels,
        }
