"""The child-process helper: minimal environment, secrets through an inherited pipe, limits,
and a child stopped (terminate, then kill) when the import is cancelled."""

from __future__ import annotations

import threading
import time

import pytest

from importer.children import run_child, watch_child
from importer.errors import CancelledError


def test_secret_reaches_the_child_through_a_pipe_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPORTER_SECRET_KEY", "do-not-leak")
    r = run_child(["sh", "-c", 'cat /dev/fd/$1; echo; env', "sh", "{secret_fd}"], timeout=10,
                  secret=b"hunter2")
    out = r.stdout.decode()
    assert r.returncode == 0 and out.startswith("hunter2\n")
    env = dict(line.split("=", 1) for line in out.splitlines()[1:] if "=" in line)
    assert "IMPORTER_SECRET_KEY" not in env and env["LC_ALL"] == "C"
    assert "hunter2" not in " ".join(env.values())


def test_limits_apply() -> None:
    r = run_child(["sh", "-c", "ulimit -t"], timeout=10, limits=["--cpu=7"])
    assert r.stdout.decode().strip() == "7"


def test_cancel_terminates_then_kills() -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(CancelledError):
        # ignores SIGTERM: only the kill after the grace period stops it
        watch_child(["sh", "-c", "trap '' TERM; sleep 30"], cancel=cancel, grace=0.5)
    assert time.monotonic() - started < 5


def test_stdout_is_streamed_and_stderr_kept() -> None:
    seen: list[bytes] = []
    r = watch_child(["sh", "-c", "echo one; echo two; echo oops >&2; exit 3"],
                    on_stdout=seen.append)
    assert b"".join(seen) == b"one\ntwo\n" and r.returncode == 3 and r.message() == "oops"
