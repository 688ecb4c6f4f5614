"""The stream plan: decoded bytes in order straight to the target, zeros skipped."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from ..sinks.raw import SparseWriter, pump
from ..sinks.target import Sink
from ..streams import ThreadedReader
from . import Plan
from .context import RunState, scratch_location
from .writing import raw_target, settle_raw

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(st: RunState, plan: Plan, target: Sink) -> None:
    if plan.disk == "qcow2":
        _qcow2(st, target)
        return
    if plan.disk == "vmdk":
        _vmdk(st, target)
        return
    info = st.detected.info
    # a fixed VHD detected by its footer: the disk is the data before it; a guest's own disk
    # is taken whole, whatever its last sector looks like
    limit = info.virtual_size if info.format == "vhd" else None
    if limit is None and (st.source.info().guest_data or st.config.input_format == "raw"):
        limit = info.virtual_size
    st.run_ahead()
    st.progress.plan([("TransferDataFile", 100, True)])
    st.progress.enter("TransferDataFile")
    with raw_target(st, target, info.virtual_size) as writer:
        total = pump(st.detected.stream, writer, limit=limit, cancel=st.cancel)
        st.result.checksum = st.verify_checksum()
        settle_raw(st, target, writer, total, limit)


def _qcow2(st: RunState, target: Sink) -> None:
    """A qcow2 converted natively in file order (disks/qcow2_stream.py)."""
    from ..disks.qcow2_stream import StreamedQcow2
    from ..formats.qcow2_header import parse_qcow2_header

    head = st.detected.pins.covered(0, 512) or st.detected.pins.covered(0, 112)
    assert head is not None  # the sniffed head is pinned whole
    header = parse_qcow2_header(head)
    with _native(st, target, header.size) as (writer, decoded):
        reader = StreamedQcow2(header, write=writer.write, write_zeros=writer.write_zeros,
                               scratch_dir=scratch_location(st.config, target))
        reader.run(decoded, st.cancel.is_set)
        st.result.staged_bytes = reader.stats.spilled
        if reader.stats.spilled:
            log.warning("%d MiB of the qcow2 arrived before the tables placing it and went "
                        "through scratch", reader.stats.spilled >> 20)


def _vmdk(st: RunState, target: Sink) -> None:
    """A vmdk converted natively in file order (disks/vmdk_stream.py)."""
    from ..disks.vmdk_stream import StreamedVmdk
    from ..formats.vmdk_header import parse_vmdk_header

    head = st.detected.pins.covered(0, 512)
    assert head is not None  # the sniffed head is pinned whole
    header = parse_vmdk_header(head)
    with _native(st, target, header.size) as (writer, decoded):
        StreamedVmdk(header, write=writer.write, write_zeros=writer.write_zeros).run(
            decoded, st.cancel.is_set)


@contextlib.contextmanager
def _native(st: RunState, target: Sink, size: int
            ) -> Iterator[tuple[SparseWriter, ThreadedReader]]:
    """What both native streaming readers need around them: the target, and the decoded
    stream from byte 0 on its own thread (gzip and zstd release the GIL) while the reader
    places data on this one; the checksum and the size settled after."""
    st.result.virtual_size = size
    st.run_ahead()
    st.progress.plan([("TransferDataFile", 100, True)])
    st.progress.enter("TransferDataFile")
    with raw_target(st, target, size) as writer:
        decoded = ThreadedReader(st.detected.stream, chunk=4 << 20, depth=3)
        decoded.run_ahead()
        st.stack.callback(decoded.close)
        yield writer, decoded
        writer.finish()
        st.result.checksum = st.verify_checksum()
        st.finish_size(target, size)
