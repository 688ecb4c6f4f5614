"""The pod's metrics endpoint against clients that misbehave: a bare TCP connection that says
nothing, a handshake cut halfway, plain HTTP on the TLS port, a request far too large, and a
TLS client that never sends its request. CDI's controller scrapes in between and must be
answered at once; the stalled ones are dropped at the deadline; nothing reaches stderr."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time

import pytest

from importer import metrics
from importer.metrics import MetricsServer
from importer.progress import Progress

from .conftest import free_port


def _scrape(port: int, ctx: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c, \
            ctx.wrap_socket(c) as t:
        t.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := t.recv(65536):
            data += chunk
        return data


def _request_threads() -> list[threading.Thread]:
    """socketserver's per-request threads still alive."""
    return [t for t in threading.enumerate() if "process_request_thread" in t.name]


def test_stalled_and_broken_clients_do_not_stop_a_scrape(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(metrics, "CLIENT_TIMEOUT", 0.5)
    # the records go to caplog only: in-process front-ends run earlier may have left handlers
    # on the root logger writing to streams since closed
    logger = logging.getLogger("importer.metrics")
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "handlers", [caplog.handler])
    caplog.set_level(logging.DEBUG, logger="importer.metrics")
    progress = Progress()
    progress.total = 100
    progress.update(40)
    port = free_port()
    server = MetricsServer(progress, "uid-m", port, addr="127.0.0.1")
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        socket.create_connection(("127.0.0.1", port)).close()
        with socket.create_connection(("127.0.0.1", port)) as cut:
            cut.sendall(b"\x16\x03\x01\x00\xff")  # a ClientHello's first bytes, then gone
        with socket.create_connection(("127.0.0.1", port)) as plain:
            plain.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c, \
                ctx.wrap_socket(c) as big:
            # answered 414 after 64 KiB and closed: the rest of the send may meet the close
            try:
                big.sendall(b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n")
                assert big.recv(100).startswith(b"HTTP/1.0 414")
            except (ssl.SSLError, ConnectionError):
                pass  # the close came first; the scrapes below show the server is whole
        stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        quiet = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))
        started = time.monotonic()
        body = _scrape(port, ctx)
        assert time.monotonic() - started < 2, "a stalled client held the scrape up"
        assert b'kubevirt_cdi_import_progress_total{ownerUID="uid-m"}' in body
        assert _request_threads(), "the stalled clients each hold a thread until the deadline"
        time.sleep(1.5)  # past the deadline: the stalled clients are dropped
        for s in (*stalled, quiet):
            s.settimeout(2)
            assert s.recv(10) == b""
            s.close()
        assert _scrape(port, ctx)  # and the next scrape is served as the first
        deadline = time.monotonic() + 5
        while _request_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _request_threads() == [], "a client's thread outlived its deadline"
    finally:
        server.close()
    assert "Traceback" not in capfd.readouterr().err
    assert any("dropped a client" in r.getMessage() for r in caplog.records)
