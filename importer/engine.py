"""The one core both front-ends call: open the source, detect what it holds, ask the planner
(plans/__init__.py) which plan to take, and run it. `inspect_source` asks the same planner, so
it reports exactly the plan an import would take."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import advice
from .config import ImportConfig
from .disks.base import NativeUnsupported
from .errors import FormatError, SourceError, TargetError, UnsafeImageError
from .formats.detect import detect
from .plans import Plan, SourceFacts, choose_plan, runner
from .plans.context import RunState
from .progress import Progress
from .result import ImportResult
from .sinks.target import Sink, Target, dest_kind
from .sources import Source, open_source
from .sources.base import ExtentSource, Transactional
from .streams import CountingStream, HeadThenStream, ThreadedReader

__all__ = ["ImportResult", "inspect_source", "run_import", "verify_import"]

log = logging.getLogger(__name__)


def run_import(config: ImportConfig, progress: Progress | None = None,
               cancel: threading.Event | None = None, *, source: Source | None = None
               ) -> ImportResult:
    """Import `config.source` (or `source`, already opened: an upload body, a delta stage)
    into `config.dest`."""
    progress = progress or Progress()
    cancel = cancel or threading.Event()
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if config.source_kind == "blank":
            result = _blank(config)
        else:
            st = _open(config, progress, cancel, stack, source)
            plan = resolve_plan(st)
            _execute(st, plan)
            result = st.result
    progress.finish()
    result.duration_seconds = round(time.monotonic() - started, 3)
    return result


def verify_import(config: ImportConfig, progress: Progress | None = None,
                  cancel: threading.Event | None = None) -> dict[str, Any]:
    """Whether `config.dest` holds what importing `config.source` would write: the import runs
    with a sink that compares instead of writing (sinks/compare.py), so the source is read as
    an import reads it and DEST only where needed. The sink takes the disk in order, as a pipe
    does: the extent copier hands it each piece in the disk's order (the first difference found
    is the first there is), and a plan that converts with qemu-img writes a sparse scratch copy
    first (plans/convert.py). Stops at the first difference."""
    from .sinks.compare import CompareSink, Differs

    progress = progress or Progress()
    cancel = cancel or threading.Event()
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        st = _open(config, progress, cancel, stack, None)
        plan = resolve_plan(st)
        if plan.name in ("archive", "delta"):
            raise TargetError(f"verify compares a disk image; this source takes the {plan.name} "
                              "plan, which does not write one")
        sink = CompareSink(config.dest)
        stack.callback(sink.close)
        found: dict[str, Any] = {"identical": True, "first_difference": None, "reason": None}
        try:
            runner(plan.name)(st, plan, sink)
            found.update(sink.finish())
        except Differs as exc:
            found.update(identical=False, first_difference=exc.offset, reason=str(exc),
                         compared_bytes=sink.compared)
        result = st.result
        return {"source": result.source, "destination": str(config.dest),
                "format": result.format, "compression": result.compression,
                "virtual_size": result.virtual_size, "plan": plan.name,
                "plan_reason": plan.reason, "bytes_read": st.bytes_read, **found,
                "duration_seconds": round(time.monotonic() - started, 3)}


def inspect_source(config: ImportConfig) -> dict[str, Any]:
    """What the source holds, read from its headers only, and the plan an import would take.
    An unsafe image is reported (`safe: false` and why), not raised: CI gates on it."""
    try:
        return _inspect(config)
    except UnsafeImageError as exc:
        # the same keys as for a safe image (CI reads them), with what the header told
        return {"source": _redact(config.source), "format": exc.format, "compression": [],
                "virtual_size": exc.virtual_size, "source_size": None, "range_requests": None,
                "details": {}, "safe": False, "unsafe_reasons": [str(exc)], "plan": None,
                "plan_reason": "an unsafe image is not imported", "converter": None,
                "streamable": False, "allocated_size": _allocated_size(config),
                "required_size": exc.virtual_size, "etag": None, "version": None, "labels": {},
                "appliance": None}


def _inspect(config: ImportConfig) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        st = _open(config, Progress(), threading.Event(), stack, None, inspecting=True)
        plan = resolve_plan(st)
        if isinstance(st.source, Transactional):
            st.source.end(False)  # nothing was imported: an oVirt transfer is cancelled
        sinfo = st.source.info()
        info = st.detected.info
        vsize = info.virtual_size
        if st.disk is not None:
            vsize = st.disk.size
        elif st.xz_blocks and not info.needs_conversion:
            vsize = sum(b.uncompressed_size for b in st.xz_blocks)
        return {
            "source": _redact(config.source),
            "format": info.format,
            "compression": st.detected.codecs,
            "virtual_size": vsize,
            "source_size": sinfo.size,
            "range_requests": sinfo.random_access,
            "details": info.details,
            "safe": True,
            "unsafe_reasons": [],
            "plan": plan.name,
            "plan_reason": plan.reason,
            "converter": plan.converter,
            "streamable": plan.name != "staged",
            # as qemu-img info's "disk size" (a local file's allocated bytes) and qemu-img
            # measure -O raw's "required size" (what a raw target must be able to hold)
            "allocated_size": _allocated_size(config),
            "required_size": max(vsize or 0, config.image_size or 0) if vsize is not None
            else None,
            "etag": sinfo.version,
            "version": sinfo.version,  # the ETag under its old name (schema 1)
            "labels": sinfo.labels,
            "appliance": sinfo.details.get("ova"),
        }


def _open(config: ImportConfig, progress: Progress, cancel: threading.Event,
          stack: contextlib.ExitStack, source: Source | None, *, inspecting: bool = False
          ) -> RunState:
    try:
        src = source if source is not None else open_source(config)
    except SourceError as exc:
        exc.connecting = True  # the pod words these as CDI does ("Unable to connect to ...")
        raise
    stack.push(_closing(src))
    src, head = _appliance_disk(src, config, inspecting)
    info = src.info()
    progress.total = info.size
    spec = config.checksum or info.checksum
    raw = (HeadThenStream(src, info.size, head) if info.random_access and info.size
           else src.open_stream(0))
    counting = CountingStream(raw, progress, spec.new_hash() if spec else None)
    stream = ThreadedReader(counting)
    stream_closer = contextlib.ExitStack()  # closed early by plans that read at random
    stack.callback(stream_closer.close)
    stream_closer.callback(stream.close)
    detected = detect(stream, size=info.size,
                      source_read_at=src.read_at if info.random_access else None,
                      backing_allowed=config.delta_of is not None,
                      guest_data=info.guest_data,
                      forced=None if config.input_format == "ova" else config.input_format)
    result = ImportResult(
        source=_redact(config.source), destination=str(config.dest), target_kind="file",
        format=detected.info.format, compression=detected.codecs,
        virtual_size=detected.info.virtual_size, labels=dict(info.labels))
    return RunState(config, progress, cancel, stack, src, detected, counting, result,
                    stream_closer, spec, run_ahead=stream.run_ahead)


def _closing(src: Source) -> Callable[..., bool]:
    """The source's end: a transactional source learns whether the import succeeded (the
    target is committed by then), then every source is closed."""

    def exit_(exc_type: type[BaseException] | None, *_: object) -> bool:
        try:
            if isinstance(src, Transactional):
                src.end(exc_type is None)
        finally:
            src.close()
        return False

    return exit_


def source_facts(st: RunState) -> SourceFacts:
    """What the planner needs to know of the source; reads the xz index when there is one."""
    info = st.source.info()
    xz_count = 0
    if st.detected.codecs == ["xz"] and info.random_access and info.size:
        from .formats.xz_blocks import MAX_BLOCK, read_xz_index  # python-xz: only for xz

        blocks = read_xz_index(st.source.read_at, info.size)
        if len(blocks) >= 2 and max(b.uncompressed_size for b in blocks) <= MAX_BLOCK:
            st.xz_blocks, xz_count = blocks, len(blocks)
        else:
            log.info("xz file has %d block(s): decoding it as one stream", len(blocks))
    return SourceFacts(random_access=info.random_access, size=info.size,
                       sequential_reason=info.sequential_reason, xz_blocks=xz_count,
                       extent_map=isinstance(st.source, ExtentSource)
                       and st.source.extent_map() is not None,
                       changes_only=info.changes_only,
                       checksum_required=info.checksum_required and info.checksum is not None,
                       local_file=info.local_path is not None,
                       sequential_target=_sequential_dest(st.config))


def resolve_plan(st: RunState) -> Plan:
    """The planner's choice; a native plan is confirmed by opening the disk (its L1 table),
    and falls back to qemu-img with the reason when the native reader cannot read the image."""
    facts = source_facts(st)
    det = st.detected
    plan = choose_plan(facts, det.info, det.codecs, st.config)
    if plan.name in ("extents", "delta") and plan.disk in ("qcow2", "vmdk"):
        from .plans.extents import open_disk

        size = st.source.info().size
        assert size is not None
        try:
            st.disk = open_disk(st, plan, st.reads(progress=False), size)
        except NativeUnsupported as exc:
            if plan.name == "delta":
                raise FormatError(f"the qcow2 delta cannot be applied: {exc.reason}") from exc
            log.info("the native %s reader declines: %s; qemu-img converts it", plan.disk,
                     exc.reason)
            plan = choose_plan(facts, det.info, det.codecs,
                               dataclasses.replace(st.config, converter="qemu-img"))
            plan = dataclasses.replace(plan, reason=f"{plan.reason} ({exc.reason})")
    log.info("plan %s", plan.describe())
    st.result.plan, st.result.plan_reason, st.result.converter = (
        plan.name, plan.reason, plan.converter)
    return plan


def _execute(st: RunState, plan: Plan) -> None:
    cfg = st.config
    if plan.name == "archive":
        from .plans import archive

        archive.run(st, plan)
    else:
        if st.detected.info.format == "tar":
            log.warning("the data is a tar archive, written as a raw disk image as CDI does; "
                        "use contentType: archive to extract it into the volume instead")
        target: Sink
        if str(cfg.dest) == "-":
            target = _stream_target(plan, None)
        elif cfg.output is None and plan.name != "delta" and dest_kind(cfg.dest) == "stream":
            target = _stream_target(plan, cfg.dest)  # a character device or FIFO
        else:
            # a delta is applied onto the disk the previous stage wrote, in place; -O's raw
            # copy is a scratch file (output_format.py created it): never fsync'ed or renamed
            mode = ("apply" if plan.name == "delta" else
                    "scratch" if cfg.output is not None else "create")
            target = Target(cfg.dest, cfg.capacity, mode=mode)
        st.result.target_kind = "block" if target.is_block else "file"
        runner(plan.name)(st, plan, target)
    st.result.bytes_read = st.bytes_read
    st.result.bytes_received = st.bytes_received
    st.result.details.update(st.source.info().details)  # the VDDK version and host
    if st.spec is not None and st.result.checksum is None and cfg.checksum is None:
        log.info("the object's own %s checksum was not verified: the %s plan reads it at "
                 "random%s", st.spec.algorithm, plan.name,
                 " (give --checksum to verify in order)" if advice.speaks_cli() else "")


def _allocated_size(config: ImportConfig) -> int | None:
    """The bytes a local source file takes on its file system; None for anything else."""
    import os
    from urllib.parse import unquote, urlsplit

    from .sources.kinds import kind_for

    try:
        if config.source == "-" or kind_for(config.source, config.source_kind).name != "file":
            return None
    except (KeyError, StopIteration):
        return None
    parts = urlsplit(config.source)
    path = unquote(parts.path) if parts.scheme == "file" else config.source
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return None


def _appliance_disk(src: Source, config: ImportConfig, inspecting: bool
                    ) -> tuple[Source, bytes]:
    """The disk of an OVA as the source (sources/ova.py), or `src` itself: a clone's bytes, an
    archive to extract or a delta stage are never looked into. (The pod takes other tars as
    raw disks, as CDI does; an appliance is not taken so.)"""
    from .settings import ContentType
    from .sources.ova import OvaDiskSource, open_ova_disk

    if (src.info().guest_data or config.content_type is ContentType.ARCHIVE
            or config.delta_of is not None or config.input_format not in (None, "ova")):
        return src, b""
    disk, head = open_ova_disk(src, config.ova_disk, forced=config.input_format == "ova",
                               pod=not advice.speaks_cli(), first_if_many=inspecting)
    if isinstance(disk, OvaDiskSource):
        if config.checksum is not None:
            raise FormatError(
                "the data is an OVA, whose disks are checked against its manifest; a checksum "
                "given for the import covers the whole file, which an import of one disk does "
                "not read: check the OVA itself (sha256sum), then import it without one")
    elif config.ova_disk is not None:
        raise FormatError(f"--disk {config.ova_disk!r} picks a disk of an OVA, but the data "
                          "is not an OVA")
    return disk, head


def _sequential_dest(config: ImportConfig) -> bool:
    """DEST takes the disk in order: standard output, a character device or a FIFO."""
    if config.output is not None:
        return False
    return str(config.dest) == "-" or dest_kind(config.dest) == "stream"


def _stream_target(plan: Plan, path: Path | None) -> Sink:
    """DEST `-`, a character device or a FIFO: the plans write it in the disk's order (the
    extent copier orders its writes, qemu-img converts to scratch first); the planner never
    picks the one that cannot, the native streaming reader (file order)."""
    from .sinks.target import StreamTarget

    what = "standard output (DEST -)" if path is None else f"{path} (a character device or FIFO)"
    if (plan.name == "stream" and plan.disk is not None) or plan.name == "delta":
        raise TargetError(f"{what} takes the disk in order, but this import takes the "
                          f"{plan.name} plan ({plan.reason}); write to a file")
    return StreamTarget() if path is None else StreamTarget.open_path(path)


def _blank(config: ImportConfig) -> ImportResult:
    from .plans import blank

    plan = choose_plan(SourceFacts(False, None, blank=True), None, [], config)
    result = ImportResult(source="blank", destination=str(config.dest), target_kind="file",
                          format="raw", compression=[], virtual_size=config.image_size,
                          plan=plan.name, plan_reason=plan.reason)
    blank.run(config, plan, result)
    return result


def _redact(url: str) -> str:
    from urllib.parse import urlsplit

    p = urlsplit(url)
    return f"{p.scheme}://{p.hostname}{f':{p.port}' if p.port else ''}{p.path}" if p.netloc else url
