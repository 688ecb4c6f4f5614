"""What the plans that write raw bytes themselves share: the target opened for the import with
a sparse writer, and the end of a raw disk (fixed-VHD footer, size, preallocation, commit)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from ..formats.headers import vhd_fixed_footer_size
from ..sinks.raw import SparseWriter
from ..sinks.target import Sink
from .context import RunState

__all__ = ["raw_target", "settle_raw"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def raw_target(st: RunState, target: Sink, virtual_size: int | None
               ) -> Iterator[SparseWriter]:
    """The target, checked against the virtual size (when known) before anything is read,
    opened and preallocated as asked; committed when the block ends, aborted when it raises
    (a block device is zeroed as far as it was written)."""
    cfg = st.config
    target.check_fits(virtual_size)
    writer: SparseWriter | None = None
    with target.writing(lambda: writer.high_water if writer else None):
        writer = SparseWriter(target, st.progress, preallocate=cfg.preallocation)
        if cfg.preallocation and not target.is_block and virtual_size:
            target.preallocate(virtual_size)
        yield writer
        st.finish_target(target)
    st.result.bytes_written = st.progress.bytes_written
    st.result.zero_bytes_skipped = st.progress.zero_bytes


def settle_raw(st: RunState, target: Sink, writer: SparseWriter, total: int,
               limit: int | None) -> None:
    """The disk's final size: the data (up to a fixed VHD's footer), padded to sectors and
    grown to --image-size."""
    final = min(total, limit) if limit is not None else total
    footer = (None if limit is not None or st.config.input_format == "raw"
              else vhd_fixed_footer_size(writer.tail))
    if footer is not None and footer == total - 512:
        log.info("the data ends with a fixed-VHD footer: the disk is the %d bytes before it",
                 footer)
        st.result.format, final = "vhd", footer
        if target.is_block:
            target.zero_range(footer, 512)
    st.result.virtual_size = st.finish_size(target, final)
