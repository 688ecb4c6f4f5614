"""qemu-img, always told the format (-f), always under CPU-time and address-space limits
(through util-linux prlimit, so nothing runs in the forked child before exec), always stopped
when the import stops."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence

from ..errors import CancelledError, ConversionError, FormatError, UnsafeImageError
from ..progress import Progress

__all__ = ["choose_cache_mode", "qemu_convert", "qemu_info"]

log = logging.getLogger(__name__)
_PROGRESS = re.compile(rb"\((\d{1,3}\.\d+)/100%\)")
INFO_LIMITS = ("--as=1073741824", "--cpu=30")  # what OpenStack and CDI use for untrusted info
CONVERT_LIMITS = ("--as=4294967296", "--cpu=86400")


def _qemu_img() -> str:
    path = shutil.which("qemu-img")
    if not path:
        raise ConversionError("qemu-img is not installed; install the qemu-utils package")
    return path


def _limited(limits: Sequence[str], argv: list[str]) -> list[str]:
    prlimit = shutil.which("prlimit")
    if not prlimit:  # pragma: no cover - util-linux is essential on Debian
        log.warning("prlimit not found; qemu-img runs without resource limits")
        return argv
    return [prlimit, *limits, "--", *argv]


def qemu_info(src: str, driver: str) -> dict[str, object]:
    argv = _limited(INFO_LIMITS, [_qemu_img(), "info", "-f", driver, "--output=json", src])
    try:
        r = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    except subprocess.TimeoutExpired as exc:
        raise FormatError("qemu-img info did not finish within 120 s; the image is refused") from exc
    if r.returncode != 0:
        raise FormatError(f"qemu-img cannot read the {driver} image: "
                          f"{r.stderr.decode(errors='replace').strip()[-500:]}")
    try:
        info: dict[str, object] = json.loads(r.stdout)
    except ValueError as exc:
        raise FormatError("qemu-img info printed invalid JSON") from exc
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise UnsafeImageError(f"qemu-img reports a backing file {info.get('backing-filename')!r}")
    if info.get("format") != driver:
        raise FormatError(f"qemu-img reads the image as {info.get('format')!r}, not {driver!r}")
    return info


def choose_cache_mode(path: str) -> str:
    """O_DIRECT (`-t none`) bypasses the page cache, which keeps memory flat and was faster
    here; tmpfs and some network filesystems refuse it, then writeback is used."""
    try:
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_DIRECT", 0))
    except OSError:
        return "writeback"
    os.close(fd)
    return "none"


def qemu_convert(src: str, driver: str, dest: str, *, cache: str, target_is_zero: bool,
                 progress: Progress, cancel: threading.Event | None = None) -> None:
    argv = [_qemu_img(), "convert", "-p", "-f", driver, "-O", "raw", "-n", "-t", cache,
            "-m", "8", "-W"]
    if target_is_zero:
        argv.append("--target-is-zero")
    argv += [src, dest]
    log.info("running %s", " ".join(argv))
    proc = subprocess.Popen(_limited(CONVERT_LIMITS, argv), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr = bytearray()

    def read_progress() -> None:
        assert proc.stdout is not None
        buf = b""
        while chunk := proc.stdout.read1(4096):  # type: ignore[attr-defined]
            buf = (buf + chunk)[-256:]
            for m in _PROGRESS.finditer(buf):
                progress.set_fraction(float(m.group(1)) / 100)

    def read_stderr() -> None:
        assert proc.stderr is not None
        while chunk := proc.stderr.read1(4096):  # type: ignore[attr-defined]
            stderr.extend(chunk)
            del stderr[:-8192]

    threads = [threading.Thread(target=f, daemon=True) for f in (read_progress, read_stderr)]
    for t in threads:
        t.start()
    try:
        while proc.poll() is None:
            if cancel is not None and cancel.is_set():
                raise CancelledError(15)
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for t in threads:
            t.join(timeout=5)
    if proc.returncode != 0:
        msg = stderr.decode(errors="replace").strip().splitlines()
        raise ConversionError(
            f"qemu-img convert failed (exit {proc.returncode}): {' '.join(msg[-3:]) or 'no message'}")
    progress.set_fraction(1.0)
