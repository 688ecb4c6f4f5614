"""The state one import shares between the engine and the plan it runs."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..checksum import ChecksumSpec
from ..disks.base import RandomAccessDisk
from ..errors import ChecksumMismatchError
from ..formats.detect import Detected
from ..progress import Progress
from ..result import ImportResult
from ..settings import ImportConfig
from ..sinks.target import Sink
from ..sources.base import Source
from ..streams import CountingStream

if TYPE_CHECKING:
    from ..formats.xz_blocks import XzBlock

__all__ = ["Coverage", "RunState", "SourceReads"]

log = logging.getLogger(__name__)


class Coverage:
    """Which bytes of the source were fetched at least once: the result's `bytes_read` is the
    source the import needed, whatever was fetched twice (the head detection read, then a
    converter's read-ahead from offset 0) or read ahead and dropped. Ranges are merged as they
    pile up, so memory stays bounded by the number of separate runs, not of reads."""

    COMPACT_AT = 65536

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ranges: list[tuple[int, int]] = []
        self._merged_len = 0

    def add(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        with self._lock:
            self._ranges.append((offset, offset + length))
            if len(self._ranges) - self._merged_len >= self.COMPACT_AT:
                self._ranges = _merge(self._ranges)
                self._merged_len = len(self._ranges)

    def total(self, *extra: tuple[int, int]) -> int:
        with self._lock:
            merged = _merge(self._ranges + [r for r in extra if r[1] > r[0]])
        return sum(end - start for start, end in merged)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


class SourceReads:
    """Counts the bytes random readers take from the source (the stream counts its own), and
    notes which ones (Coverage)."""

    def __init__(self, source: Source, progress: Progress | None, coverage: Coverage) -> None:
        self._source = source
        self._progress = progress
        self._coverage = coverage
        self._lock = threading.Lock()  # the extent copier's workers read concurrently
        self.count = 0

    def _took(self, offset: int, n: int) -> None:
        with self._lock:
            self.count += n
        self._coverage.add(offset, n)
        if self._progress is not None:
            self._progress.update(n)

    def readinto_at(self, offset: int, buf: bytearray | memoryview) -> int:
        n = self._source.readinto_at(offset, buf)  # type: ignore[arg-type]
        self._took(offset, n)
        return n

    def read_at(self, offset: int, length: int) -> bytes:
        data = self._source.read_at(offset, length)
        self._took(offset, len(data))
        return data


@dataclass
class RunState:
    config: ImportConfig
    progress: Progress
    cancel: threading.Event
    stack: contextlib.ExitStack
    source: Source
    detected: Detected
    counting: CountingStream
    result: ImportResult
    #: the sequential stream alone, closed early by plans that read at random instead
    stream_closer: contextlib.ExitStack
    #: the checksum to verify: the user's, or the object's own
    spec: ChecksumSpec | None = None
    #: lets the sequential stream read ahead: called by the plans that read all of it
    run_ahead: Callable[[], None] = lambda: None
    random_reads: list[SourceReads] = field(default_factory=list)
    coverage: Coverage = field(default_factory=Coverage)
    #: the blocks of a single xz layer, read once from its index when the source is ranged
    xz_blocks: list[XzBlock] | None = None
    #: the random-access disk the planner opened to confirm a native plan, used by the plan
    disk: RandomAccessDisk | None = None

    def reads(self, *, progress: bool = True) -> SourceReads:
        r = SourceReads(self.source, self.progress if progress else None, self.coverage)
        self.random_reads.append(r)
        return r

    @property
    def bytes_received(self) -> int:
        """Every byte taken from the source, re-reads and dropped read-ahead included."""
        return self.counting.count + sum(r.count for r in self.random_reads)

    @property
    def bytes_read(self) -> int:
        """The source bytes the import needed: each byte once (the stream reads from 0)."""
        return self.coverage.total((0, self.counting.count))

    def verify_checksum(self) -> str | None:
        spec = self.spec
        if spec is None:
            return None
        self.counting.drain()
        got = self.counting.hasher.hexdigest() if self.counting.hasher else ""
        if got != spec.hexdigest:
            raise ChecksumMismatchError(
                f"checksum mismatch: expected {spec.algorithm}:{spec.hexdigest}, calculated "
                f"{spec.algorithm}:{got}; the download is corrupt or the checksum is wrong, and "
                "nothing was imported")
        log.info("Checksum verification passed: %s:%s", spec.algorithm, got)
        return f"{spec.algorithm}:{got}"

    def finish_size(self, target: Sink, data_size: int) -> int:
        """The file gets the image's full length, grown to --image-size (never shrunk); the
        disk's size without that growth is returned."""
        if data_size % 512 and not target.is_block:
            padded = data_size + 512 - data_size % 512
            # qemu (and so CDI, which converts every raw) rounds a disk up to whole sectors
            log.warning("the image is %d bytes, not a whole number of 512-byte sectors: padded "
                        "with zeros to %d bytes as qemu and CDI do. A disk image of that length "
                        "is usually truncated (a download cut short?) and may not boot; check "
                        "the source", data_size, padded)
            data_size = padded
        image_size = self.config.image_size
        if image_size and data_size > image_size:
            log.warning("the image (%d bytes) is larger than --image-size; not shrinking", data_size)
        target.set_size(max(data_size, image_size or 0))
        return data_size

    def finish_target(self, target: Sink) -> None:
        """What every plan that writes a disk does last: the size, preallocation of what the
        resize added, the source's own integrity check. The commit follows (Target.writing)."""
        if self.config.preallocation and not target.is_block:
            target.preallocate(target.current_size())
        self.result.preallocated = self.config.preallocation
        self.source.verify()


def scratch_location(cfg: ImportConfig, target: Sink) -> Path | None:
    """Where an import keeps what it must set aside (a staged image, spilled qcow2 clusters):
    the scratch directory given (--scratch-dir, the pod's /scratch), else beside a file
    destination, else (a device) the temporary directory; None when scratch space is required
    and none was given (the pod then asks for it)."""
    if cfg.scratch_dir:
        return cfg.scratch_dir
    if cfg.scratch_required:
        return None
    if getattr(target, "is_block", False) or str(cfg.dest) == "-":
        return Path(tempfile.gettempdir())
    return cfg.dest.parent
