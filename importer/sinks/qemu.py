"""qemu-img, always told the format, always under CPU-time and address-space limits (through
util-linux prlimit, so nothing runs in the forked child before exec), always stopped when the
import stops.

qemu-img parses untrusted images, and an image can make it open host files (a backing file, a
qcow2 external data file). Three independent layers keep that from happening; each exists
because the others have been bypassed somewhere before:
1. the pure-Python header inspector refuses such images, and the bytes it judged are pinned and
   are the only bytes served for that region (formats/pinned.py): qemu-img sees what we saw;
2. the image is opened through a `json:` spec that names the driver (no probing, the
   CVE-2026-24708 trick), sets `"backing": null` (qemu then never opens a backing file,
   whatever the header says) and reaches the bytes through an inherited socket fd rather than a
   path (relative names have nothing to resolve against). qemu offers no way to null a qcow2
   `data-file` that the header asks for, which is why layer 3 exists;
3. `qemu-img info` runs first, and any backing reference, external data file or encryption it
   reports refuses the image before `convert` reads a byte of data.
qemu-img also runs with a minimal environment: it never sees our credentials (children.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..children import run_child, watch_child
from ..errors import ConversionError, FormatError, UnsafeImageError
from ..progress import Progress

__all__ = ["QemuInput", "choose_cache_mode", "qemu_convert", "qemu_data_bytes", "qemu_info"]

log = logging.getLogger(__name__)
_PROGRESS = re.compile(rb"\((\d{1,3}\.\d+)/100%\)")
INFO_LIMITS = ("--as=1073741824", "--cpu=30")  # what OpenStack and CDI use for untrusted info
CONVERT_LIMITS = ("--as=4294967296", "--cpu=86400")



@dataclass(frozen=True, slots=True)
class QemuInput:
    """How qemu-img opens the source image (layer 2 above)."""

    driver: str
    protocol: dict[str, Any]  # the `file` child: an NBD fd or a file we wrote ourselves
    fd: int | None = None  # inherited by the child when the protocol is an fd

    @classmethod
    def nbd_fd(cls, driver: str, fd: int) -> QemuInput:
        return cls(driver, {"driver": "nbd", "server": {"type": "fd", "str": str(fd)}}, fd)

    @classmethod
    def local_file(cls, driver: str, path: str) -> QemuInput:
        return cls(driver, {"driver": "file", "filename": path})

    @property
    def filename(self) -> str:
        return "json:" + json.dumps({"driver": self.driver, "backing": None,
                                     "file": self.protocol})

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return () if self.fd is None else (self.fd,)


def _qemu_img() -> str:
    path = shutil.which("qemu-img")
    if not path:
        raise ConversionError("qemu-img is not installed; install the qemu-utils package")
    return path


def qemu_info(src: QemuInput, *, timeout: float = 120) -> dict[str, object]:
    driver = src.driver
    argv = [_qemu_img(), "info", "--output=json", src.filename]
    try:
        r = run_child(argv, timeout=timeout, limits=INFO_LIMITS, pass_fds=src.pass_fds)
    except subprocess.TimeoutExpired as exc:
        raise FormatError(f"qemu-img info did not finish within {timeout:g} s; the image is "
                          "refused") from exc
    if r.returncode != 0:
        raise FormatError(f"qemu-img cannot read the {driver} image: "
                          f"{r.stderr.decode(errors='replace').strip()[-500:]}")
    try:
        info: dict[str, object] = json.loads(r.stdout)
    except ValueError as exc:
        raise FormatError("qemu-img info printed invalid JSON") from exc
    _refuse_host_references(info)
    if info.get("format") != driver:
        raise FormatError(f"qemu-img reads the image as {info.get('format')!r}, not {driver!r}")
    return info


def _refuse_host_references(info: dict[str, object]) -> None:
    """Layer 3: whatever qemu-img found that points outside the image refuses it."""
    for key in ("backing-filename", "full-backing-filename", "backing-filename-format"):
        if info.get(key):
            raise UnsafeImageError(f"qemu-img reports a backing file {info.get(key)!r}; "
                                   "import a flattened image")
    if info.get("encrypted"):
        raise UnsafeImageError("qemu-img reports the image is encrypted; import a decrypted image")
    specific = info.get("format-specific")
    data = specific.get("data") if isinstance(specific, dict) else None
    if isinstance(data, dict):
        if data.get("data-file") or data.get("data-file-raw"):
            raise UnsafeImageError(f"qemu-img reports an external data file "
                                   f"{data.get('data-file')!r}, which would be read from this "
                                   "host; import a self-contained image")
        if data.get("encrypt"):
            raise UnsafeImageError("qemu-img reports the image is encrypted; import a decrypted "
                                   "image")
        extents = data.get("extents")
        if isinstance(extents, list) and len(extents) > 1:
            raise UnsafeImageError("qemu-img reports a multi-file vmdk; import a monolithic one")


def qemu_data_bytes(path: Path, fmt: str, *, timeout: float = 120) -> int:
    """Guest bytes an image we wrote ourselves stores as data (`qemu-img map`): the rest of the
    virtual size reads as zeros without being stored."""
    argv = [_qemu_img(), "map", "--output=json", "-f", fmt, str(path)]
    try:
        r = run_child(argv, timeout=timeout, limits=INFO_LIMITS)
    except subprocess.TimeoutExpired as exc:
        raise ConversionError(f"qemu-img map of {path} did not finish within {timeout:g} s"
                              ) from exc
    if r.returncode != 0:
        raise ConversionError(f"qemu-img map {path} failed: "
                              f"{r.stderr.decode(errors='replace').strip()[-500:]}")
    try:
        extents = json.loads(r.stdout)
        return sum(int(e["length"]) for e in extents if e.get("data"))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConversionError("qemu-img map printed invalid JSON") from exc


def choose_cache_mode(path: str) -> str:
    """O_DIRECT (`-t none`) bypasses the page cache, which keeps memory flat and was faster
    here; tmpfs and some network filesystems refuse it, then writeback is used."""
    try:
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_DIRECT", 0))
    except OSError:
        return "writeback"
    os.close(fd)
    return "none"


def qemu_convert(src: QemuInput, dest: str, *, cache: str, target_is_zero: bool,
                 progress: Progress, cancel: threading.Event | None = None,
                 dest_fd: int | None = None, output: tuple[str, ...] = ()) -> None:
    """`dest` may be /proc/self/fd/N for `dest_fd` N, which the child then inherits. By
    default raw is written into a target we opened (`-n`); `output` (for example `("-O",
    "qcow2", "-c")`) makes qemu-img create `dest` in that format instead."""
    argv = [_qemu_img(), "convert", "-p", "-t", cache, "-m", "8", "-W"]
    argv += list(output) if output else ["-O", "raw", "-n"]
    if target_is_zero:
        argv.append("--target-is-zero")
    argv += [src.filename, dest]
    log.info("running %s", " ".join(argv))
    fds = src.pass_fds + (() if dest_fd is None else (dest_fd,))
    tail = b""

    def on_stdout(chunk: bytes) -> None:
        nonlocal tail
        tail = (tail + chunk)[-256:]
        for m in _PROGRESS.finditer(tail):
            progress.set_fraction(float(m.group(1)) / 100)

    r = watch_child(argv, limits=CONVERT_LIMITS, pass_fds=fds, on_stdout=on_stdout,
                    cancel=cancel)
    if r.returncode != 0:
        raise ConversionError(f"qemu-img convert failed (exit {r.returncode}): {r.message()}")
    progress.set_fraction(1.0)
