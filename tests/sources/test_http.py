"""HTTP source under faults, against a real HTTP server (pytest-httpserver) on loopback."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from werkzeug.wrappers import Request, Response

from importer.config import HttpOptions, build_config
from importer.engine import run_import
from importer.errors import (
    SourceAuthError,
    SourceContentError,
    SourceError,
    SourceNotFoundError,
    SourceUnavailableError,
)
from importer.sources.http import HttpSource

DATA = random.Random(3).randbytes(3 << 20) + bytes(1 << 20)  # 4 MiB: data, then zeros
FAST = {"retry_backoff": 0.01, "read_timeout": 2.0}


class Script:
    """Serves DATA with Range support; `faults` maps a request number (from 0) to a fault."""

    def __init__(self, faults: dict[int, Callable[[Request, int, int], Response]] | None = None,
                 etag: str = '"v1"', ranges: bool = True) -> None:
        self.faults = faults or {}
        self.requests: list[Request] = []
        self.etag = etag
        self.ranges = ranges

    def __call__(self, request: Request) -> Response:
        n = len(self.requests)
        self.requests.append(request)
        start, end = 0, len(DATA) - 1
        rng = request.headers.get("Range") if self.ranges else None
        if rng:
            a, _, b = rng.split("=")[1].partition("-")
            start, end = int(a), int(b) if b else len(DATA) - 1
        request.environ["script.ranged"] = bool(rng)
        if n in self.faults:
            return self.faults[n](request, start, end)
        headers = {"ETag": self.etag, "Accept-Ranges": "bytes"}
        if rng:
            ir = request.headers.get("If-Range")
            if ir and ir != self.etag:
                return Response(DATA, 200, headers)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(DATA)}"
            return Response(DATA[start : end + 1], 206, headers)
        return Response(DATA, 200, headers)


def _ranged(request: Request) -> bool:
    """Whether the Script honoured a Range header for this answer."""
    return bool(request.environ.get("script.ranged"))


def drop_after(nbytes: int) -> Callable[[Request, int, int], Response]:
    """Send `nbytes` of the answer, then reset the connection mid-body."""

    def fault(request: Request, start: int, end: int) -> Response:
        def gen() -> Any:
            yield DATA[start : start + nbytes]
            time.sleep(0.05)
            sock = request.environ["werkzeug.socket"]
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            yield b""

        status = 206 if _ranged(request) else 200
        headers = {"Content-Length": str(end - start + 1), "ETag": '"v1"'}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{len(DATA)}"
        return Response(gen(), status, headers, direct_passthrough=True)

    return fault


def status(code: int, body: bytes = b"busy", ctype: str = "text/plain"
           ) -> Callable[[Request, int, int], Response]:
    return lambda _r, _s, _e: Response(body, code, {"Content-Type": ctype})


def stall(seconds: float) -> Callable[[Request, int, int], Response]:
    def fault(request: Request, start: int, end: int) -> Response:
        def gen() -> Any:
            yield DATA[start : start + 65536]
            time.sleep(seconds)
            yield DATA[start + 65536 : end + 1]

        headers = {"Content-Length": str(end - start + 1), "ETag": '"v1"',
                   "Content-Range": f"bytes {start}-{end}/{len(DATA)}"}
        return Response(gen(), 206 if _ranged(request) else 200, headers,
                        direct_passthrough=True)

    return fault


def short_body(request: Request, start: int, end: int) -> Response:
    headers = {"Content-Length": str(end - start + 1), "ETag": '"v1"',
               "Content-Range": f"bytes {start}-{end}/{len(DATA)}"}
    return Response([DATA[start : start + 1000]], 206 if _ranged(request) else 200,
                    headers, direct_passthrough=True)


def serve(httpserver: HTTPServer, script: Script, path: str = "/disk.raw") -> str:
    httpserver.expect_request(path).respond_with_handler(script)
    return httpserver.url_for(path)


def read_all(url: str, **opts: Any) -> bytes:
    src = HttpSource(url, HttpOptions(**(FAST | opts)))
    try:
        stream = src.open_stream()
        return bytes(stream.read())  # RawIOBase.read() = readall
    finally:
        src.close()


@pytest.mark.parametrize("offset", [1, 65536, 1 << 20, (3 << 20) + 17])
def test_resume_after_drop_mid_body(httpserver: HTTPServer, offset: int) -> None:
    # request 0 is the probe; 1 is the stream, which breaks at `offset`
    script = Script({1: drop_after(offset), 2: drop_after(1000)})
    assert read_all(serve(httpserver, script)) == DATA
    resumed = [r.headers.get("Range") for r in script.requests[2:]]
    assert resumed[0] == f"bytes={offset}-"
    assert all(r.headers.get("If-Range") == '"v1"' for r in script.requests[2:])


def test_503_burst_then_success(httpserver: HTTPServer) -> None:
    script = Script({0: status(503), 1: status(503), 2: status(502), 4: status(503)})
    assert read_all(serve(httpserver, script)) == DATA


def test_retries_are_bounded(httpserver: HTTPServer) -> None:
    script = Script({i: status(503) for i in range(50)})
    with pytest.raises(SourceUnavailableError, match="503"):
        read_all(serve(httpserver, script), max_retries=3)
    assert len(script.requests) == 4


def test_stall_is_abandoned_and_resumed() -> None:
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)  # the stalled answer goes on
    server.start()
    try:
        script = Script({1: stall(3.0)})
        t = time.monotonic()
        assert read_all(serve(server, script), read_timeout=0.5) == DATA
    finally:
        server.stop()
    assert time.monotonic() - t < 3.0
    assert script.requests[2].headers["Range"] == "bytes=65536-"


def test_short_body_is_completed_by_range(httpserver: HTTPServer) -> None:
    script = Script({1: short_body})
    assert read_all(serve(httpserver, script)) == DATA


def test_short_body_without_range_support_fails_clearly(httpserver: HTTPServer) -> None:
    script = Script({0: short_body, 1: short_body}, ranges=False)
    with pytest.raises(SourceUnavailableError, match="does not support range requests"):
        read_all(serve(httpserver, script))


def test_drop_without_range_support_fails_clearly(httpserver: HTTPServer) -> None:
    script = Script({1: drop_after(5000)}, ranges=False)
    with pytest.raises(SourceUnavailableError, match="cannot resume"):
        read_all(serve(httpserver, script))


@pytest.mark.parametrize(("code", "error"), [(404, SourceNotFoundError), (410, SourceNotFoundError),
                                             (401, SourceAuthError), (403, SourceAuthError),
                                             (400, SourceError)])
def test_permanent_errors_fail_at_once(httpserver: HTTPServer, code: int,
                                       error: type[Exception]) -> None:
    script = Script({i: status(code) for i in range(10)})
    with pytest.raises(error, match=str(code)):
        read_all(serve(httpserver, script))
    assert len(script.requests) == 1


def test_html_page_with_200_is_refused(httpserver: HTTPServer, tmp_path: Path) -> None:
    body = b"<html><body>Please log in</body></html>"
    httpserver.expect_request("/login").respond_with_data(body, content_type="text/html")
    with pytest.raises(SourceContentError, match="HTML/XML document"):
        run_import(build_config(source=httpserver.url_for("/login"), dest=str(tmp_path / "d.img")))
    # the same page served as octet-stream is caught by content sniffing too
    httpserver.expect_request("/p").respond_with_data(body, content_type="application/octet-stream")
    with pytest.raises(SourceError, match="HTML/XML document"):
        run_import(build_config(source=httpserver.url_for("/p"), dest=str(tmp_path / "d.img")))
    assert not list(tmp_path.iterdir())


def test_object_replaced_mid_import_fails(httpserver: HTTPServer) -> None:
    script = Script({1: drop_after(100_000)})
    url = serve(httpserver, script)
    src = HttpSource(url, HttpOptions(**FAST))
    script.etag = '"v2"'  # replaced after the probe
    with pytest.raises(SourceContentError, match="changed during the import"):
        src.open_stream().read()


def test_credentials_never_follow_a_redirect_to_another_host(httpserver: HTTPServer,
                                                             tmp_path: Path) -> None:
    other = HTTPServer(host="127.0.0.2", port=0)
    other.start()
    try:
        script = Script()
        other.expect_request("/disk.raw").respond_with_handler(script)
        httpserver.expect_request("/start").respond_with_data(
            "", 302, headers={"Location": other.url_for("/disk.raw")})
        pw = tmp_path / "pw"
        pw.write_text("s3cret")
        hf = tmp_path / "hdr"
        hf.write_text("X-Token: secret-token\n")
        cfg = build_config(source=httpserver.url_for("/start"), dest=str(tmp_path / "d.img"),
                           username="u", password_file=str(pw), header_files=[str(hf)],
                           headers=["X-Public: 1"])
        run_import(cfg)
        assert (tmp_path / "d.img").read_bytes() == DATA
        for r in script.requests:
            assert "Authorization" not in r.headers
            assert "X-Token" not in r.headers and "X-Public" not in r.headers
        first = httpserver.log[0][0]
        assert first.headers["X-Token"] == "secret-token" and first.headers["X-Public"] == "1"
        assert first.headers["Authorization"].startswith("Basic ")
    finally:
        other.stop()


def test_redirect_loop_is_bounded(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/loop").respond_with_data(
        "", 302, headers={"Location": "/loop"})
    with pytest.raises(SourceError, match="redirects"):
        HttpSource(httpserver.url_for("/loop"), HttpOptions(**FAST))


def test_http_proxy_is_used_and_loopback_is_not_proxied(httpserver: HTTPServer,
                                                        tmp_path: Path) -> None:
    proxy = HTTPServer(host="127.0.0.1", port=0)
    proxy.start()
    try:
        seen: list[str] = []

        def proxied(request: Request) -> Response:
            seen.append(request.url)
            return Script()(request)

        proxy.expect_request("/disk.raw").respond_with_handler(proxied)
        # the target names a host that exists only behind the proxy
        opts = HttpOptions(proxies={"http": proxy.url_for("/")}, **FAST)
        assert opts.proxy_for("http://127.0.0.1/x") is None  # loopback bypasses (CDI quirk Q10)
        assert opts.proxy_for("http://images.example/x") == proxy.url_for("/")
        no = HttpOptions(proxies={"http": proxy.url_for("/"), "no": "example"})
        assert no.proxy_for("http://images.example/x") is None
        src = HttpSource("http://images.example/disk.raw", opts)
        assert src.open_stream().read() == DATA
        assert seen and all("images.example" in u for u in seen)
    finally:
        proxy.stop()


def test_accept_encoding_identity_and_user_agent(httpserver: HTTPServer) -> None:
    script = Script()
    read_all(serve(httpserver, script))
    for r in script.requests:
        assert r.headers["Accept-Encoding"] == "identity"
        assert r.headers["User-Agent"].startswith("importer/")
    assert script.requests[0].headers["Range"] == "bytes=0-0"  # never HEAD
    assert all(r.method == "GET" for r in script.requests)


def test_parallel_ranges_survive_faults(httpserver: HTTPServer, tmp_path: Path) -> None:
    # requests 0 probe, 1 the detection stream; then 8 MiB ranges on 4 connections
    script = Script({2: drop_after(70_000), 3: status(503), 4: short_body})
    result = run_import(build_config(source=serve(httpserver, script), dest=str(tmp_path / "d.img"),
                                     max_retries=4))
    assert result.path == "ranges"
    assert (tmp_path / "d.img").read_bytes() == DATA


def test_random_access_reads(httpserver: HTTPServer) -> None:
    script = Script({2: drop_after(10)})
    src = HttpSource(serve(httpserver, script), HttpOptions(**FAST))
    assert src.info().random_access and src.info().size == len(DATA)
    assert src.read_at(5, 100) == DATA[5:105]
    assert src.read_at(len(DATA) - 10, 100) == DATA[-10:]
    assert src.read_at(1 << 20, 1 << 20) == DATA[1 << 20 : 2 << 20]
