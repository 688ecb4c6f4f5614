"""`-O qcow2|vmdk|vhdx`: the CLI's output formats (the pod always writes raw, as CDI does).

Where the plan converts with qemu-img anyway (vmdk, vdi, vhd, vhdx: the convert and staged
plans), qemu-img writes the requested format at once from our NBD export of the pinned source,
as it would write raw. The other plans (stream, ranges, extents: raw and the native qcow2
reader) run unchanged into a sparse raw file, then `qemu-img convert` writes the format from
it: they keep their safety checks, resume and speed, and qemu-img reads only a raw file we
wrote ourselves. That costs the image's *data* once more on disk (the raw file is sparse),
beside DEST or in --scratch-dir; so does a disk that must grow (--image-size), as qemu-img
cannot resize every format.

Both files live in a private directory (mode 0700) created beside DEST, so nobody can plant
anything where qemu-img creates its output; the result is renamed onto DEST (rename(2) never
follows a symlink at DEST) only after qemu-img succeeded and the file was fsync'ed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .config import ImportConfig, OutputSpec
from .errors import ConfigError, TargetError
from .progress import Progress
from .result import ImportResult
from .sinks.target import dest_kind

__all__ = ["OUTPUT_FORMATS", "import_as", "name_mismatch"]

log = logging.getLogger(__name__)
OUTPUT_FORMATS = ("raw", "qcow2", "vmdk", "vhdx")
#: formats whose `-c` qemu-img honours: qcow2 compressed clusters, vmdk's streamOptimized
COMPRESSIBLE = ("qcow2", "vmdk")
#: what a DEST's extension says it holds (.img is used for raw and qcow2 alike)
_EXTENSIONS = {".raw": {"raw"}, ".img": {"raw", "qcow2"}, ".bin": {"raw"}, ".iso": {"raw"},
               ".qcow2": {"qcow2"}, ".qcow": {"qcow2"}, ".vmdk": {"vmdk"},
               ".vhdx": {"vhdx"}, ".vhd": set(), ".vdi": set()}


def name_mismatch(dest: Path, fmt: str) -> str | None:
    """A warning when DEST's name says another format than the one written."""
    said = _EXTENSIONS.get(dest.suffix.lower())
    if said is None or fmt in said:
        return None
    named = dest.suffix.lower()[1:]
    hint = ("; leave -O out for raw" if named == "raw"
            else f"; add -O {named}" if named in OUTPUT_FORMATS else "")
    return f"DEST {dest.name} is named like another format, but {fmt} is written{hint}"


def check_output(fmt: str, compress: bool) -> None:
    if compress and fmt not in COMPRESSIBLE:
        raise ConfigError(f"-c/--compress: {fmt} has no compressed form; use it with -O qcow2 "
                          "or -O vmdk")


def import_as(config: ImportConfig, fmt: str, compress: bool, *,
              stage: Callable[[str], Progress], cancel: threading.Event,
              run: Callable[[ImportConfig, Progress, threading.Event], ImportResult]
              ) -> ImportResult:
    """Import into raw, then convert into `fmt`. `stage(name)` gives the progress of each
    stage (the CLI shows them one after the other); `run` is the engine's run_import."""
    check_output(fmt, compress)
    started = time.monotonic()
    dest = config.dest
    if str(dest) == "-" or dest_kind(dest) not in ("absent", "file"):
        raise ConfigError(f"-O {fmt} writes a file, and {dest} is not one; a block device, a "
                          "character device, a FIFO or standard output takes raw (leave -O out)")
    parent = dest.parent if str(dest.parent) else Path(".")
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".importer", dir=parent))
    except OSError as exc:
        raise TargetError(f"cannot create a working directory beside {dest}: "
                          f"{exc.strerror or exc}") from exc
    try:
        raw_dir = work
        if config.scratch_dir is not None:  # the raw copy where the user keeps scratch space
            raw_dir = Path(tempfile.mkdtemp(prefix=".importer-raw.", dir=config.scratch_dir))
        with contextlib.ExitStack() as cleanup:
            if raw_dir is not work:
                cleanup.callback(shutil.rmtree, raw_dir, True)
            raw = raw_dir / "disk.raw"
            os.close(os.open(raw, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
            spec = OutputSpec(fmt, compress, work / f"disk.{fmt}")
            result = run(dataclasses.replace(config, dest=raw, output=spec), stage("Import"),
                         cancel)
            out = spec.path
            if result.output_format != fmt:  # a plan that wrote raw: qemu-img converts it
                log.info("qemu-img writes %s from the raw copy", fmt)
                _convert(raw, spec, stage(f"Convert to {fmt}"), cancel)
                result.output_format = fmt
        fd = os.open(out, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        try:
            os.rename(out, dest)
        except OSError as exc:
            raise TargetError(f"renaming the {fmt} image onto {dest} failed: "
                              f"{exc.strerror or exc}") from exc
        _fsync_dir(parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.destination = str(dest)
    result.bytes_written = st.st_blocks * 512  # what the output file holds on disk
    result.duration_seconds = round(time.monotonic() - started, 3)
    log.info("wrote %s as %s: %d bytes on disk for a %s-byte disk", dest, fmt,
             result.bytes_written, result.virtual_size)
    return result


def _convert(raw: Path, spec: OutputSpec, progress: Progress, cancel: threading.Event) -> None:
    from .sinks.qemu import QemuInput, qemu_convert

    phase = f"Convert to {spec.format}"
    progress.plan([(phase, 100, False)])
    progress.enter(phase)
    # the raw file is ours: read through the page cache (the import just wrote it)
    qemu_convert(QemuInput.local_file("raw", str(raw)), str(spec.path), cache="writeback",
                 target_is_zero=False, progress=progress, cancel=cancel,
                 output=spec.qemu_options)
    progress.finish()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
