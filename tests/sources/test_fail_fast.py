"""The same fail-fast rules for every source (issue 19, item 15), through the real CLI against
real servers on loopback: nobody listening fails in seconds whatever the source, a server that
accepts and says nothing is named as such, and retries are bounded in time and say how often
and how long they tried. Every case is bounded by the test's own timeout."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from ..conftest import importer_cli
from ..hostile_server import HostileServer, Reply, closed_port, hostile

__all__ = ["hostile"]


def _timed(*args: object, **kw: object) -> tuple[float, str, int]:
    started = time.monotonic()
    r = importer_cli(*args, timeout=90, **kw)  # type: ignore[arg-type]
    return time.monotonic() - started, r.stderr, r.returncode


def test_s3_with_nobody_listening_fails_in_seconds(tmp_path: object) -> None:
    pytest.importorskip("boto3")
    port = closed_port()
    took, err, rc = _timed("import", "s3://bucket/disk.img", f"{tmp_path}/d.img",
                           "--s3-endpoint", f"http://127.0.0.1:{port}")
    assert rc == 1 and "connection refused" in err, err
    assert took < 10, f"took {took:.1f} s"
    assert "Traceback" not in err


def test_gcs_with_nobody_listening_fails_in_seconds(tmp_path: object) -> None:
    pytest.importorskip("google.cloud.storage")
    port = closed_port()
    env = {**os.environ, "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    took, err, rc = _timed("import", "gs://bucket/disk.img", f"{tmp_path}/d.img", env=env)
    assert rc == 1 and "connection refused" in err, err
    assert took < 10, f"took {took:.1f} s"


def test_a_registry_with_nobody_listening_fails_in_seconds(tmp_path: object) -> None:
    pytest.importorskip("oras")
    port = closed_port()
    took, err, rc = _timed("import", f"docker://127.0.0.1:{port}/vm/disk:1", f"{tmp_path}/d.img")
    assert rc == 1 and "connection refused" in err, err
    assert took < 10, f"took {took:.1f} s"  # 30 s of retries before


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and never answers (bounded: closed at the end of the test)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(2)
        for c in held:
            c.close()
        srv.close()


def test_a_server_that_never_answers_is_named_and_bounded(silent_server: int,
                                                          tmp_path: object) -> None:
    took, err, rc = _timed("import", f"http://127.0.0.1:{silent_server}/disk.img",
                           f"{tmp_path}/d.img", "--read-timeout", "1", "--retry-time", "4",
                           "--progress", "lines", "--progress-interval", "0.3")
    assert rc == 1, err
    assert "progress: waiting for the server" in err, err
    assert "accepted the connection but sent nothing for 1 s (--read-timeout)" in err, err
    assert "gave up after" in err and "--retry-time 4 s" in err, err
    assert "timed out: timed out" not in err
    assert took < 15, f"took {took:.1f} s"


def test_a_server_answering_500_gives_up_after_the_retry_time(hostile: HostileServer,
                                                              tmp_path: object) -> None:
    hostile.routes["/disk.img"] = lambda req: Reply(500, {}, b"oops\n")
    took, err, rc = _timed("import", hostile.url("/disk.img"), f"{tmp_path}/d.img",
                           "--retries", "100", "--retry-time", "3")
    assert rc == 1, err
    assert "gave up after" in err and "attempts in" in err, err
    assert took < 12, f"took {took:.1f} s"  # it stops before a wait would pass the time


def test_a_stream_that_keeps_breaking_gives_up_after_the_retry_time(hostile: HostileServer,
                                                                    tmp_path: object) -> None:
    body = os.urandom(1 << 20)
    # no byte ranges, and every answer cut at half its length
    hostile.routes["/disk.img"] = lambda req: Reply(200, {}, body[: len(body) // 2],
                                                    content_length=len(body))
    took, err, rc = _timed("import", hostile.url("/disk.img"), f"{tmp_path}/d.img",
                           "--retries", "100", "--retry-time", "3")
    assert rc == 1, err
    assert "gave up after" in err, err
    assert took < 15, f"took {took:.1f} s"


def test_the_default_retry_time_is_about_thirty_seconds() -> None:
    from importer.config import HttpOptions, build_config

    assert HttpOptions().retry_time == 30.0
    assert build_config(source="http://x/y", dest="-", retry_time=5).http.retry_time == 5
    r = importer_cli("import", "http://127.0.0.1:1/x", "-", "--retry-time", "-1")
    assert r.returncode == 2 and "--retry-time -1" in r.stderr, r.stderr
