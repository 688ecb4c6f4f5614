"""A hostile HTTP server for tests: a real server on loopback (http.server, threaded) whose
answers a test scripts per path, including the ones a well-behaved server never gives: other
bytes for large ranges than for small ones, redirects to file://, oversize headers, short 206
bodies, a trickle of one byte a second, HTML content types on real images."""

from __future__ import annotations

import dataclasses
import http.server
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

__all__ = ["HostileServer", "Reply", "Request", "hostile", "ranged"]


@dataclasses.dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]

    @property
    def range(self) -> tuple[int, int | None] | None:
        m = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("range", ""))
        if not m:
            return None
        return int(m.group(1)), int(m.group(2)) if m.group(2) else None


@dataclasses.dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: bytes = b""
    #: send the body this many bytes at a time, sleeping `trickle_delay` between pieces
    trickle: int = 0
    trickle_delay: float = 1.0
    #: announce this Content-Length instead of the body's (a short body when larger)
    content_length: int | None = None


def ranged(data: bytes, req: Request, etag: str = '"v1"',
           content_type: str = "application/octet-stream") -> Reply:
    """What a correct server answers for `data`, honouring one Range."""
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Content-Type": content_type}
    rng = req.range
    if rng is None:
        return Reply(200, headers, data)
    start, end = rng
    if start >= len(data):
        return Reply(416, headers | {"Content-Range": f"bytes */{len(data)}"})
    end = len(data) - 1 if end is None else min(end, len(data) - 1)
    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
    return Reply(206, headers, data[start : end + 1])


Route = Callable[[Request], Reply]


class HostileServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Request] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                req = Request("GET", self.path, {k.lower(): v for k, v in self.headers.items()})
                server.requests.append(req)
                route = server.routes.get(self.path.split("?")[0])
                reply = route(req) if route else Reply(404, {}, b"not here\n")
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                length = len(reply.body) if reply.content_length is None else reply.content_length
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if reply.content_length is not None and reply.content_length > len(reply.body):
                    self.close_connection = True  # the short body ends with the connection
                try:
                    if not reply.trickle:
                        self.wfile.write(reply.body)
                        return
                    for i in range(0, len(reply.body), reply.trickle):
                        self.wfile.write(reply.body[i : i + reply.trickle])
                        self.wfile.flush()
                        time.sleep(reply.trickle_delay)
                except OSError:
                    return

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    server = HostileServer()
    try:
        yield server
    finally:
        server.close()


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
