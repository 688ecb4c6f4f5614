"""The HTTP source against a hostile or broken server (issue 9, items 9, 15, 17): permanent
errors fail at once with what to check, a trickle trips the low-speed limit, a mislabelled
image still imports."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from importer.config import build_config
from importer.engine import run_import
from importer.errors import (
    SourceContentError,
    SourceError,
    SourceNotFoundError,
    SourceTLSError,
    SourceUnreachableError,
)
from tests.conftest import make_seed
from tests.hostile_server import HostileServer, Reply, Request, closed_port, hostile, ranged

__all__ = ["hostile"]
DISK = make_seed.__module__ and bytes(range(256)) * 4096  # 1 MiB of non-zero data


def _import(url: str, dest: Path, **kw: object) -> float:
    started = time.monotonic()
    run_import(build_config(source=url, dest=str(dest), **kw))  # type: ignore[arg-type]
    return time.monotonic() - started


def _fails_fast(exc: type[Exception], match: str, url: str, dest: Path, limit: float = 5.0,
                **kw: object) -> None:
    started = time.monotonic()
    with pytest.raises(exc, match=match):
        _import(url, dest, **kw)
    assert time.monotonic() - started < limit, "a permanent error was retried"
    assert not dest.exists() and not dest.with_name(dest.name + ".partial").exists()


@pytest.mark.parametrize("location", ["file:///etc/passwd", "gopher://127.0.0.1:1/x"])
def test_redirect_to_another_scheme_is_permanent(hostile: HostileServer, tmp_path: Path,
                                                 location: str) -> None:
    hostile.routes["/r"] = lambda req: Reply(302, {"Location": location})
    _fails_fast(SourceError, "only http and https redirects", hostile.url("/r"),
                tmp_path / "d.img")


def test_connection_refused_gets_quick_retries_then_fails(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/disk.img"
    _fails_fast(SourceUnreachableError, "connection refused: nothing listens", url,
                tmp_path / "d.img")


def test_unresolvable_host_fails_with_what_to_check(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # A mock on purpose: a real lookup would ask this machine's resolver, which is not ours
    # to send test traffic to; the classification is what is under test.
    real = socket.getaddrinfo

    def getaddrinfo(host: str, *a: object, **kw: object) -> object:
        if host == "no-such-host.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    _fails_fast(SourceUnreachableError, "host name does not resolve",
                "http://no-such-host.test/disk.img", tmp_path / "d.img")


def test_plain_http_on_an_https_url_is_a_tls_error_not_an_outage(hostile: HostileServer,
                                                                 tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{hostile.port}/disk.img"
    _fails_fast(SourceTLSError, "may not speak TLS", url, tmp_path / "d.img")


def test_oversize_response_headers_are_permanent(hostile: HostileServer, tmp_path: Path
                                                 ) -> None:
    hostile.routes["/big"] = lambda req: Reply(200, {"X-Junk": "a" * (200 << 10)}, DISK)
    _fails_fast(SourceContentError, "malformed", hostile.url("/big"), tmp_path / "d.img")


def test_a_server_that_keeps_sending_short_206_bodies_fails(hostile: HostileServer,
                                                             tmp_path: Path) -> None:
    def short(req: Request) -> Reply:
        r = ranged(DISK, req)
        if r.status == 206 and req.range != (0, 0):
            return Reply(206, r.headers, r.body[: len(r.body) // 2] if req.range and
                         req.range[0] == 0 else b"", content_length=len(r.body))
        if r.status == 200:
            return Reply(200, r.headers, r.body[:1000], content_length=len(r.body))
        return r

    hostile.routes["/short"] = short
    _fails_fast(SourceContentError, "keeps ending its answers", hostile.url("/short"),
                tmp_path / "d.img", limit=10)


def test_a_trickle_trips_the_low_speed_limit(hostile: HostileServer, tmp_path: Path) -> None:
    def trickle(req: Request) -> Reply:
        r = ranged(DISK, req)
        if r.status == 206 and req.range == (0, 0):
            return r
        r.trickle, r.trickle_delay = 1, 0.5
        return r

    hostile.routes["/trickle"] = trickle
    started = time.monotonic()
    with pytest.raises(SourceError, match="low-speed limit"):
        _import(hostile.url("/trickle"), tmp_path / "d.img", low_speed_limit=1024,
                low_speed_time=1.0, max_retries=1, connections=1)
    assert time.monotonic() - started < 15


def test_an_image_served_as_text_html_imports(hostile: HostileServer, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    hostile.routes["/disk.img"] = lambda req: ranged(DISK, req, content_type="text/html")
    _import(hostile.url("/disk.img"), tmp_path / "d.img")
    assert (tmp_path / "d.img").read_bytes() == DISK
    # CDI's sentence, which its functional test looks for in the pod's log
    assert ("Unexpected content type 'text/html'. Content might not be a KubeVirt image."
            in caplog.text)


def test_404_says_what_cdi_says(hostile: HostileServer, tmp_path: Path) -> None:
    _fails_fast(SourceNotFoundError,
                r"expected status code 200, got 404\. Status: 404 Not Found",
                hostile.url("/missing"), tmp_path / "d.img")


Route = Callable[[Request], Reply]
