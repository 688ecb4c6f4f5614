"""The stream plan: decoded bytes in order straight to the target, zeros skipped."""

from __future__ import annotations

from ..sinks.raw import pump
from ..sinks.target import Target
from . import Plan
from .context import RunState
from .writing import raw_target, settle_raw

__all__ = ["run"]


def run(st: RunState, plan: Plan, target: Target) -> None:
    info = st.detected.info
    # a fixed VHD detected by its footer: the disk is the data before it
    limit = info.virtual_size if info.format == "vhd" else None
    st.run_ahead()
    st.progress.plan([("TransferDataFile", 100, True)])
    st.progress.enter("TransferDataFile")
    with raw_target(st, target, info.virtual_size) as writer:
        total = pump(st.detected.stream, writer, limit=limit, cancel=st.cancel)
        st.result.checksum = st.verify_checksum()
        settle_raw(st, target, writer, total, limit)
