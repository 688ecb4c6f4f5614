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

DEST is locked for the whole run the way a raw import locks it (`DEST.partial`, created
O_EXCL and flock'ed: a second import to DEST fails at once). Each private directory holds a
flock'ed `.lock` file; a directory whose lock nobody holds is the leftover of a killed run,
removed by the next run (its qemu-img died with it: children.guarded).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .config import ImportConfig, OutputSpec
from .errors import ConfigError, TargetError
from .progress import Progress
from .result import ImportResult
from .settings import OUTPUT_FORMATS
from .sinks.archive import remove_tree
from .sinks.durable import commit_file
from .sinks.target import Target, dest_kind

__all__ = ["OUTPUT_FORMATS", "import_as", "name_mismatch"]

log = logging.getLogger(__name__)
#: formats whose `-c` qemu-img honours: qcow2 compressed clusters, vmdk's streamOptimized
COMPRESSIBLE = ("qcow2", "vmdk")
#: what a DEST's extension says it holds (.img is used for raw and qcow2 alike)
_EXTENSIONS = {".raw": {"raw"}, ".img": {"raw", "qcow2"}, ".bin": {"raw"}, ".iso": {"raw"},
               ".qcow2": {"qcow2"}, ".qcow": {"qcow2"}, ".vmdk": {"vmdk"},
               ".vhdx": {"vhdx"}, ".vhd": {"vpc"}, ".vdi": {"vdi"}}


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
    dest_lock = Target(dest)  # DEST.partial, flock'ed: the destination's lock
    dest_lock.open()
    with contextlib.ExitStack() as held:
        held.callback(dest_lock.abort)  # the lock file goes; DEST is renamed over, not it
        work = _private_dir(parent, f".{dest.name}.", f"cannot create a working directory "
                                                      f"beside {dest}")
        held.callback(_remove_private_dir, work)
        raw_dir = work
        if config.scratch_dir is not None:  # the raw copy where the user keeps scratch space
            raw_dir = _private_dir(config.scratch_dir, ".importer-raw.",
                                   f"cannot create a directory in {config.scratch_dir}")
            held.callback(_remove_private_dir, raw_dir)
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
        raw.unlink()  # its space back before the fsync of the result
        try:
            commit_file(out, dest)
            st = os.stat(dest, follow_symlinks=False)
        except OSError as exc:
            raise TargetError(f"committing the {fmt} image onto {dest} failed: "
                              f"{exc.strerror or exc}") from exc
    result.destination = str(dest)
    result.bytes_written = st.st_blocks * 512  # what the output file holds on disk
    result.duration_seconds = round(time.monotonic() - started, 3)
    log.info("wrote %s as %s: %d bytes on disk for a %s-byte disk", dest, fmt,
             result.bytes_written, result.virtual_size)
    return result


PRIVATE_SUFFIX = ".importer"


def _private_dir(parent: Path, prefix: str, failure: str) -> Path:
    """A new directory (0700) holding a flock'ed `.lock` for as long as this process lives;
    the leftovers of killed runs with the same prefix are removed first."""
    _remove_leftovers(parent, prefix)
    try:
        path = Path(tempfile.mkdtemp(prefix=prefix, suffix=PRIVATE_SUFFIX, dir=parent))
        fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise TargetError(f"{failure}: {exc.strerror or exc}") from exc
    fcntl.flock(fd, fcntl.LOCK_EX)  # held until exit: O_CLOEXEC keeps it from children
    _HELD[path] = fd
    return path


_HELD: dict[Path, int] = {}
#: a directory of ours without its .lock yet is at most this old (mkdtemp, then the lock)
_LOCKLESS_GRACE = 60.0


def _remove_private_dir(path: Path) -> None:
    remove_tree(path)
    fd = _HELD.pop(path, -1)
    if fd >= 0:
        os.close(fd)


def _remove_leftovers(parent: Path, prefix: str) -> None:
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(prefix)
                   and e.name.endswith(PRIVATE_SUFFIX) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for entry in entries:
        try:
            fd = os.open(os.path.join(entry.path, ".lock"), os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            if time.time() - entry.stat(follow_symlinks=False).st_mtime < _LOCKLESS_GRACE:
                continue  # another run between mkdtemp and its lock
            fd = -1
        except OSError:
            continue
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live run's
        else:
            log.warning("removing %s, left behind by an interrupted import", entry.path)
            with contextlib.suppress(OSError):
                remove_tree(Path(entry.path))
        finally:
            if fd >= 0:
                os.close(fd)


def _convert(raw: Path, spec: OutputSpec, progress: Progress, cancel: threading.Event) -> None:
    from .sinks.qemu import QemuInput, qemu_convert

    phase = f"Convert to {spec.format}"
    progress.plan([(phase, 100, False)])
    progress.enter(phase)
    progress.fraction_bytes = raw.stat().st_size  # the stage shows its own bytes and rate
    from .plans.convert import OUTPUT_CACHE

    # the raw file is ours: read through the page cache (the import just wrote it); the output
    # is fsync'ed before its rename (OUTPUT_CACHE)
    qemu_convert(QemuInput.local_file("raw", str(raw)), str(spec.path), cache=OUTPUT_CACHE,
                 target_is_zero=False, progress=progress, cancel=cancel,
                 output=spec.qemu_options)
    progress.finish()
