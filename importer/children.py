"""Child processes (qemu-img now; nbdkit, qemu-img rebase/commit next), started one way.

* argv is a list, never a shell string;
* the environment is minimal (PATH and LC_ALL): nothing of ours (IMPORTER_*, AWS_*, proxies
  with passwords) is inherited;
* a secret reaches the child only through an inherited pipe whose fd number goes in argv
  (nbdkit's `password=-N`), never argv or the environment;
* resource limits through util-linux prlimit, so nothing runs in the forked child before exec;
* stdout is handed to a line/chunk callback (progress), stderr is kept (the last 8 KiB) for the
  error message;
* stopping is terminate, then kill after a grace period, whether the caller returns, raises or
  is cancelled;
* a child dies with us even when we cannot stop it (SIGKILL, a crash): util-linux setpriv sets
  PR_SET_PDEATHSIG before the exec (`guarded`), so no qemu-img or nbdkit goes on writing into
  a work directory nobody owns. The signal follows the *thread* that started the child, and
  every caller waits for its child on that thread.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import CancelledError

__all__ = ["ChildResult", "ServerChild", "child_environment", "guarded", "limited", "run_child",
           "watch_child"]

log = logging.getLogger(__name__)

_CHILD_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "LC_ALL": "C"}
STDERR_KEPT = 8192


def child_environment() -> dict[str, str]:
    """A child's whole environment: tools found by absolute path, messages in English."""
    return dict(_CHILD_ENV)


def guarded(argv: list[str]) -> list[str]:
    """argv that is killed (SIGKILL) when the thread that starts it dies."""
    setpriv = shutil.which("setpriv", path=_CHILD_ENV["PATH"])
    if not setpriv:  # pragma: no cover - util-linux is essential on Debian
        log.warning("setpriv not found; %s may outlive us if we are killed", argv[0])
        return argv
    return [setpriv, "--pdeathsig", "KILL", "--", *argv]


def limited(limits: Sequence[str], argv: list[str]) -> list[str]:
    """argv under prlimit limits such as `--as=BYTES`, `--cpu=SECONDS`, guarded."""
    if not limits:
        return guarded(argv)
    prlimit = shutil.which("prlimit")
    if not prlimit:  # pragma: no cover - util-linux is essential on Debian
        log.warning("prlimit not found; %s runs without resource limits", argv[0])
        return guarded(argv)
    return guarded([prlimit, *limits, "--", *argv])


@dataclass(frozen=True, slots=True)
class ChildResult:
    returncode: int
    stdout: bytes
    stderr: bytes

    def message(self, lines: int = 3) -> str:
        text = self.stderr.decode(errors="replace").strip().splitlines()
        return " ".join(text[-lines:]) or "no message"


def _secret_pipe(secret: bytes | None) -> tuple[int, ...]:
    """The read end of a pipe holding `secret` (closed for writing), for the child to inherit."""
    if secret is None:
        return ()
    r, w = os.pipe()
    try:
        os.write(w, secret)  # a pipe holds 64 KiB without a reader: plenty for a password
    finally:
        os.close(w)
    return (r,)


def run_child(argv: list[str], *, timeout: float, limits: Sequence[str] = (),
              pass_fds: Sequence[int] = (), secret: bytes | None = None,
              secret_fd_placeholder: str = "{secret_fd}",
              stdin_data: bytes | None = None,
              env: dict[str, str] | None = None) -> ChildResult:
    """Run to completion and capture its output. A `{secret_fd}` in argv becomes the fd number
    of the pipe holding `secret`; `stdin_data` is written to its stdin; `env` is added to the
    minimal environment (a credential helper's keychain). subprocess.TimeoutExpired
    propagates: the caller says what the timeout means."""
    fds = _secret_pipe(secret)
    try:
        argv = [a.replace(secret_fd_placeholder, str(fds[0])) if fds else a for a in argv]
        full_env = {**child_environment(), **(env or {})}
        if stdin_data is None:
            r = subprocess.run(limited(limits, argv), capture_output=True, timeout=timeout,
                               check=False, stdin=subprocess.DEVNULL, env=full_env,
                               pass_fds=(*pass_fds, *fds))
        else:
            r = subprocess.run(limited(limits, argv), capture_output=True, timeout=timeout,
                               check=False, input=stdin_data, env=full_env,
                               pass_fds=(*pass_fds, *fds))
    finally:
        for fd in fds:
            os.close(fd)
    return ChildResult(r.returncode, r.stdout, r.stderr)


def watch_child(argv: list[str], *, limits: Sequence[str] = (), pass_fds: Sequence[int] = (),
                on_stdout: Callable[[bytes], None] | None = None,
                cancel: threading.Event | None = None, grace: float = 5.0) -> ChildResult:
    """Run a long child (a conversion), feeding its stdout to `on_stdout` as it comes; stopped
    (terminate, then kill after `grace`) when `cancel` is set or the caller is interrupted."""
    proc = subprocess.Popen(limited(limits, argv), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=child_environment(), pass_fds=tuple(pass_fds))
    stderr = bytearray()

    def read_stdout() -> None:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(4096):  # type: ignore[attr-defined]
            if on_stdout is not None:
                on_stdout(chunk)

    def read_stderr() -> None:
        assert proc.stderr is not None
        while chunk := proc.stderr.read1(4096):  # type: ignore[attr-defined]
            stderr.extend(chunk)
            del stderr[:-STDERR_KEPT]

    threads = [threading.Thread(target=f, daemon=True) for f in (read_stdout, read_stderr)]
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
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for t in threads:
            t.join(timeout=grace)
    return ChildResult(proc.returncode, b"", bytes(stderr))


class ServerChild:
    """A long-lived child that serves the import (nbdkit): started with a secret through an
    inherited pipe, its merged stdout and stderr handed line by line to `on_line` (the last
    lines also kept for error messages), stopped by stop() (terminate, then kill)."""

    def __init__(self, argv: list[str], *, secret: bytes | None = None,
                 secret_fd_placeholder: str = "{secret_fd}",
                 on_line: Callable[[str], None] | None = None, kept: int = 1000) -> None:
        fds = _secret_pipe(secret)
        try:
            argv = [a.replace(secret_fd_placeholder, str(fds[0])) if fds else a for a in argv]
            self.proc = subprocess.Popen(guarded(argv), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, env=child_environment(),
                                         pass_fds=fds)
        finally:
            for fd in fds:
                os.close(fd)  # the child holds its copy; the password leaves our process here
        self.lines: list[str] = []
        self._kept = kept
        self._on_line = on_line
        self._reader = threading.Thread(target=self._read, name=f"{argv[0]}-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            del self.lines[: -self._kept]
            if self._on_line is not None:
                self._on_line(line)

    def running(self) -> bool:
        return self.proc.poll() is None

    def last_lines(self, n: int = 5) -> list[str]:
        self._reader.join(timeout=0.5 if not self.running() else 0)
        return self.lines[-n:]

    def stop(self, grace: float = 5.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=grace)
        return self.proc.returncode
