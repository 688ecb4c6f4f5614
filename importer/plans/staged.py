"""The staged plan: when the image needs random access and the source cannot give it, the
decoded image goes to a sparse scratch file first, is inspected again (the staged file is what
gets read, so it is what is judged), then read by the native reader or by qemu-img."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..disks.base import NativeUnsupported
from ..errors import ScratchSpaceRequiredError
from ..formats.headers import inspect_image
from ..formats.pinned import PinnedBytes
from ..progress import Progress
from ..quantity import format_bytes
from ..sinks.qemu import QemuInput
from ..sinks.raw import SparseWriter, pump
from ..sinks.target import Target
from ..sources.file import FileSource
from . import Plan, extents
from .context import Coverage, RunState, SourceReads, scratch_location
from .convert import qemu_to_target

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(st: RunState, plan: Plan, target: Target) -> None:
    st.progress.plan([("TransferScratch", 50, True), ("Convert", 50, plan.converter == "native")])
    st.run_ahead()
    staged = _stage(st, target, plan.reason)
    st.result.checksum = st.verify_checksum()
    size = staged.info().size or 0
    st.result.staged_bytes = size
    # the staged file is what gets read, so it is what is inspected; its own pins
    pins = PinnedBytes()
    info = inspect_image(st.detected.info.format, pins.reader(staged.read_at), size)
    if plan.converter == "native":
        st.progress.enter("Convert")
        st.detected = dataclasses.replace(st.detected, info=info, codecs=[], pins=pins)
        reads = SourceReads(staged, None, Coverage())  # the staged copy, not the source
        try:
            disk = extents.open_disk(st, plan, reads, size)
        except NativeUnsupported as exc:
            log.info("the native reader declines: %s; qemu-img converts the staged image",
                     exc.reason)
            st.result.converter = "qemu-img"
        else:
            extents.run(st, plan, target, disk=disk)
            return

    @contextlib.contextmanager
    def qemu_input() -> Iterator[QemuInput]:
        yield QemuInput.local_file(info.qemu_driver, str(staged.path))

    qemu_to_target(st, target, info, qemu_input)


def _stage(st: RunState, target: Target, why: str) -> FileSource:
    cfg = st.config
    scratch_dir = scratch_location(cfg, target)
    if scratch_dir is None or not scratch_dir.is_dir():
        raise ScratchSpaceRequiredError(f"scratch space required and none found ({why})")
    fd, name = tempfile.mkstemp(prefix=".importer-scratch-", dir=scratch_dir)
    os.close(fd)
    path = Path(name)
    st.stack.callback(lambda: path.unlink(missing_ok=True))
    log.warning("staging the image in %s because %s", scratch_dir, why)
    st.progress.enter("TransferScratch")
    scratch = Target(path, mode="scratch")  # removed when the import ends
    with scratch.writing():
        writer = SparseWriter(scratch, Progress(), preallocate=False)
        total = pump(st.detected.stream, writer, cancel=st.cancel)
        scratch.set_size(total)
    log.info("staged %s (%d bytes) in %s", format_bytes(total), total, path)
    src = FileSource(path)
    st.stack.callback(src.close)
    return src
