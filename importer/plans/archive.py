"""The archive plan: a tar extracted safely into a directory (sinks/archive.py)."""

from __future__ import annotations

from ..sinks.archive import extract_tar
from . import Plan
from .context import RunState

__all__ = ["run"]


def run(st: RunState, plan: Plan) -> None:
    result = st.result
    result.target_kind = "directory"
    st.run_ahead()
    st.progress.plan([("TransferDataDir", 100, True)])
    st.progress.enter("TransferDataDir")
    extraction, stats = extract_tar(st.detected.stream, st.config.dest, st.progress,
                                    st.config.capacity, replace=st.config.replace_existing,
                                    preallocate=st.config.preallocation)
    try:
        result.checksum = st.verify_checksum()
        st.source.verify()
        extraction.commit()
    except BaseException:
        extraction.abort()
        raise
    result.bytes_written = stats.bytes_written
    result.preallocated = st.config.preallocation
    result.details = {"files": stats.files, "directories": stats.directories,
                      "links": stats.links, "skipped": stats.skipped}
