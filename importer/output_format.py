"""`-O qcow2|vmdk|vhdx`: the CLI's output formats (the pod always writes raw, as CDI does).

The import runs unchanged into a sparse raw file, then `qemu-img convert` writes the requested
format from it. Why a raw intermediate rather than qemu-img writing the format straight from
our NBD export of the source: every plan (stream, ranges, extents, staged, the native qcow2
reader) then works as it does for raw, with its safety checks and resume, and qemu-img only
ever reads a raw file we wrote ourselves, never the untrusted image. The cost is the image's
*data* once more on disk (the raw file is sparse), beside DEST or in --scratch-dir.

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

from .config import ImportConfig
from .errors import ConfigError, TargetError
from .progress import Progress
from .result import ImportResult

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
    if str(dest) == "-" or dest.is_block_device() or dest.is_dir():
        raise ConfigError(f"-O {fmt} writes a file, and {dest} is not one; a block device or "
                          "standard output takes raw (leave -O out)")
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
            result = run(dataclasses.replace(config, dest=raw), stage("Import"), cancel)
            out = work / f"disk.{fmt}"
            _convert(raw, out, fmt, compress, stage(f"Convert to {fmt}"), cancel)
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
    result.output_format = fmt
    result.bytes_written = st.st_blocks * 512  # what the output file holds on disk
    result.duration_seconds = round(time.monotonic() - started, 3)
    log.info("wrote %s as %s: %d bytes on disk for a %s-byte disk", dest, fmt,
             result.bytes_written, result.virtual_size)
    return result


def _convert(raw: Path, out: Path, fmt: str, compress: bool, progress: Progress,
             cancel: threading.Event) -> None:
    from .sinks.qemu import QemuInput, qemu_convert

    options = ["-O", fmt]
    if compress:
        options += ["-c"] if fmt == "qcow2" else ["-o", "subformat=streamOptimized"]
    progress.plan([(f"Convert to {fmt}", 100, False)])
    progress.enter(f"Convert to {fmt}")
    # the raw file is ours: read through the page cache (the import just wrote it)
    qemu_convert(QemuInput.local_file("raw", str(raw)), str(out), cache="writeback",
                 target_is_zero=False, progress=progress, cancel=cancel,
                 output=tuple(options))
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
