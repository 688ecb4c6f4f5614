"""The HTTP transport every HTTP client of the importer shares (issue 22): connections to
http(s) URLs with one TLS context (CA directories, insecure), the proxy decision, the read
timeout and the low-speed meter on every socket, an abort that reaches reads blocked in other
threads, and one classification of failures into the error hierarchy (what heals by waiting
and what does not). Built on http.client, on purpose: the bulk bytes are read into reused
buffers (design notes: httpx `iter_raw` 9.1 s, http.client `readinto` 3.9 s for 4 GiB over
loopback), and the few requests around them (probes, engine calls, the node pull's /info)
cost no second stack to import. Used by the HTTP source, the oVirt engine and daemon clients
and the node pull; the SDKs that bring their own stack (boto3, google-cloud-storage, oras)
keep it, translated at their boundary.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from .. import __version__, advice
from ..errors import (
    SourceContentError,
    SourceError,
    SourceTLSError,
    SourceUnavailableError,
    SourceUnreachableError,
)
from .options import HttpOptions
from .tls import make_ssl_context

__all__ = ["USER_AGENT", "ApiConnection", "ConnectTimeout", "HttpConnector", "ShortBody",
           "classify_error",
           "close_connection", "redact", "timed_out_message"]

USER_AGENT = f"importer/{__version__}"
def redact(url: str) -> str:
    """URLs are logged without their query string: presigned URLs carry signatures there."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}{p.path}" + ("?…" if p.query else "")


class HttpConnector:
    """Connections to http(s) URLs as every HTTP client of the importer makes them: one TLS
    context (CA directories, --insecure), the proxy decision, the low-speed meter, and an
    abort that reaches reads blocked in other threads. The HTTP source and the oVirt engine
    client (sources/ovirt/engine_api.py) share it, so TLS and proxies mean one thing."""

    def __init__(self, opts: HttpOptions) -> None:
        self.opts = opts
        self._ctx_made: ssl.SSLContext | None = None
        self._conns: list[http.client.HTTPConnection] = []
        self._conns_lock = threading.Lock()
        self.closed = threading.Event()

    @property
    def ctx(self) -> ssl.SSLContext:
        """Made on first use: loading the CA store costs ~25 ms, which a plain-http import
        (most of a 1 MiB image's time) never needs."""
        if self._ctx_made is None:
            self._ctx_made = make_ssl_context(self.opts.ca_dirs, self.opts.insecure,
                                              self.opts.ca_pems)
        return self._ctx_made

    def connection(self, url: str, *, tracked: bool = False) -> http.client.HTTPConnection:
        """A new (unconnected) connection for `url`; `tracked` ones are aborted by close()."""
        if self.closed.is_set():
            raise SourceError(f"{redact(url)}: the import was stopped")
        p = urlsplit(url)
        if p.scheme not in ("http", "https"):
            raise SourceError(f"{redact(url)}: unsupported URL scheme {p.scheme!r}; use http "
                              "or https")
        try:
            port = p.port
        except ValueError as exc:
            raise SourceError(f"{redact(url)}: invalid URL: {exc}") from exc
        proxy = self.opts.proxy_for(url)
        opts = self.opts
        conn: http.client.HTTPConnection
        if proxy:
            pp = urlsplit(proxy)
            ptarget = (pp.hostname or "", pp.port or (443 if pp.scheme == "https" else 80))
            if p.scheme == "https":  # CONNECT tunnel: the proxy sees only the host
                conn = _MeteredHTTPSConnection(opts, *ptarget, context=self.ctx)
                conn.set_tunnel(p.hostname or "", port or 443, headers=self._proxy_headers(proxy))
            else:  # plain HTTP through a proxy: absolute URLs in the request line
                conn = _MeteredHTTPConnection(opts, *ptarget)
        elif p.scheme == "https":
            conn = _MeteredHTTPSConnection(opts, p.hostname or "", port or 443, context=self.ctx)
        else:
            conn = _MeteredHTTPConnection(opts, p.hostname or "", port or 80)
        if tracked:
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def request_target(self, url: str, headers: dict[str, str]) -> str:
        """What the request line names: the path, or through a plain-HTTP proxy the absolute
        URL (and the proxy's credentials join `headers`)."""
        p = urlsplit(url)
        proxy = self.opts.proxy_for(url)
        if proxy and p.scheme == "http":
            headers.update(self._proxy_headers(proxy))
            return url
        return (p.path or "/") + (f"?{p.query}" if p.query else "")

    @staticmethod
    def _proxy_headers(proxy: str) -> dict[str, str]:
        pp = urlsplit(proxy)
        if not pp.username:
            return {}
        creds = f"{pp.username}:{pp.password or ''}".encode()
        return {"Proxy-Authorization": "Basic " + base64.b64encode(creds).decode()}

    def close(self) -> None:
        """Abort every tracked connection, including reads blocked in other threads (shutdown
        wakes a blocked recv; close alone does not), so an import stops at once."""
        self.closed.set()
        with self._conns_lock:
            for c in self._conns:
                if c.sock is not None:
                    with contextlib.suppress(OSError):
                        c.sock.shutdown(socket.SHUT_RDWR)
                c.close()
            self._conns.clear()


class ApiConnection:
    """Small API calls (JSON or XML documents, not image bytes) on one kept-alive connection:
    one request at a time, a connection gone stale replaced once, the answer's body bounded
    (a bigger one is a broken or hostile server). The oVirt engine client and the Keystone and
    Glance clients make their calls through it."""

    def __init__(self, connector: HttpConnector, *, max_body: int = 16 << 20,
                 what: str = "the server") -> None:
        self._net = connector
        self._max_body = max_body
        self._what = what
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None

    def send(self, method: str, url: str, body: bytes | None, headers: dict[str, str]
             ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body) of one request."""
        headers = {"User-Agent": USER_AGENT, **headers}
        for attempt in (1, 2):
            with self._lock:
                conn = self._conn or self._net.connection(url)
                self._conn = None
            sent = dict(headers)
            try:
                conn.request(method, self._net.request_target(url, sent), body=body,
                             headers=sent)
                resp = conn.getresponse()
                data = resp.read(self._max_body + 1)
                if len(data) > self._max_body:
                    raise SourceContentError(f"{redact(url)}: {self._what}'s answer is larger "
                                             f"than {self._max_body} bytes")
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                if attempt == 1:
                    continue
                raise classify_error(exc, redact(url)) from exc
            except SourceError:
                conn.close()
                raise
            except (http.client.HTTPException, OSError) as exc:
                conn.close()
                raise classify_error(exc, redact(url)) from exc
            with self._lock:
                if self._conn is None and not resp.will_close:
                    self._conn = conn
                else:
                    conn.close()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class _LowSpeedSocket:
    """A connected socket whose reads fail once fewer than `limit` bytes arrived in `window`
    seconds. A server trickling a byte a second never trips a read timeout, and the buffered
    reads above us block until their whole buffer is full, so the check sits where each recv
    returns. Everything else is the wrapped socket's own."""

    def __init__(self, sock: socket.socket, limit: int, window: float) -> None:
        self._sock = sock
        self._limit = limit
        self._window = window
        self._start = time.monotonic()
        self._bytes = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)

    def makefile(self, mode: str = "r", *args: object, **kwargs: object) -> io.BufferedReader:
        if mode != "rb":
            raise ValueError("only binary reads are metered")
        # as socket.makefile does: the real socket counts the file's reference, because
        # http.client closes the connection while its response is still being read
        self._sock._io_refs += 1  # type: ignore[attr-defined]
        return io.BufferedReader(_MeteredIO(self._sock, self))

    def count(self, n: int) -> None:
        self._bytes += n
        now = time.monotonic()
        if now - self._start >= self._window:
            if self._bytes < self._limit:
                raise TimeoutError(f"transfer slower than {self._limit} bytes in "
                                   f"{self._window:g} s (low-speed limit)")
            self._start, self._bytes = now, 0


class _MeteredIO(socket.SocketIO):
    def __init__(self, sock: socket.socket, meter: _LowSpeedSocket) -> None:
        super().__init__(sock, "rb")
        self._meter = meter

    def readinto(self, b: Any) -> int | None:
        n = super().readinto(b)
        self._meter.count(n or 0)
        return n


class ConnectTimeout(TimeoutError):
    """No connection (TCP or TLS) within connect_timeout: told apart from a server that
    accepted and then said nothing, which read_timeout bounds."""


def timed_out_message(where: str, exc: TimeoutError, opts: HttpOptions) -> str:
    if isinstance(exc, ConnectTimeout):
        return (f"{where}: no connection within {opts.connect_timeout:g} s"
                f"{advice.cli_only('--connect-timeout')}; "
                "the host may be down or a firewall may drop the packets")
    if "slower than" in str(exc):  # the low-speed limit's own words
        return f"{where}: {exc}"
    return (f"{where}: the server accepted the connection but sent nothing for "
            f"{opts.read_timeout:g} s{advice.cli_only('--read-timeout')}; it may be overloaded or "
            "hung")


class _MeteredHTTPConnection(http.client.HTTPConnection):
    def __init__(self, opts: HttpOptions, host: str, port: int) -> None:
        super().__init__(host, port, timeout=opts.connect_timeout)
        self._opts = opts

    def connect(self) -> None:
        _connect_metered(self, super().connect, self._opts)


class _MeteredHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, opts: HttpOptions, host: str, port: int, *, context: ssl.SSLContext
                 ) -> None:
        super().__init__(host, port, timeout=opts.connect_timeout, context=context)
        self._opts = opts

    def connect(self) -> None:
        _connect_metered(self, super().connect, self._opts)


def _connect_metered(conn: http.client.HTTPConnection, connect: Callable[[], None],
                     opts: HttpOptions) -> None:
    """`connect` (http.client's, plain or TLS) told apart when it times out, then metered."""
    try:
        connect()
    except TimeoutError as exc:
        raise ConnectTimeout(str(exc)) from exc
    _meter(conn, opts)


def _meter(conn: http.client.HTTPConnection, opts: HttpOptions) -> None:
    """Connected within connect_timeout; from now on reads wait read_timeout at most and
    must keep above the low-speed limit."""
    conn.sock.settimeout(opts.read_timeout)
    if opts.low_speed_limit > 0:
        conn.sock = _LowSpeedSocket(conn.sock, opts.low_speed_limit, opts.low_speed_time)


class ShortBody(SourceUnavailableError):
    """The server closed a body before the length it announced. Once is a dropped
    connection; again at the same byte, with nothing new, is a server that keeps doing it."""


def close_connection(conn: http.client.HTTPConnection,
                      resp: http.client.HTTPResponse | None) -> None:
    if conn.sock is not None:
        with contextlib.suppress(OSError):  # wakes a read blocked in another thread
            conn.sock.shutdown(socket.SHUT_RDWR)
    if resp is not None:
        resp.close()
    conn.close()


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def classify_error(exc: BaseException, where: str) -> SourceError:
    """Which failures are outages (retried) and which are not: a name that does not resolve, a
    refused connection, a TLS failure or a protocol violation does not heal by waiting."""
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, http.client.IncompleteRead):
            return ShortBody(f"{where}: the body ended early ({e!r})")
        if isinstance(e, ssl.SSLCertVerificationError) or (
                isinstance(e, ssl.SSLError) and "CERTIFICATE" in str(e).upper()):
            detail = getattr(e, "verify_message", None) or e
            return SourceTLSError(
                f"{where}: TLS verification failed ({detail}); give the CA ({advice.ca()}) or "
                f"skip verification ({advice.insecure()})")
        if isinstance(e, ssl.SSLError) and not isinstance(e, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return SourceTLSError(
                f"{where}: TLS handshake failed ({e.reason or e}); the server may not speak TLS "
                "on this port: check http:// versus https:// and the port")
        if isinstance(e, socket.gaierror):
            return SourceUnreachableError(
                f"{where}: the host name does not resolve ({e.strerror or e}); check the URL's "
                "host name and the DNS of this machine or pod")
        if isinstance(e, ConnectionRefusedError):
            return SourceUnreachableError(
                f"{where}: connection refused: nothing listens on that host and port; check the "
                "URL's port and that the server is running")
        if isinstance(e, http.client.LineTooLong) or (
                isinstance(e, http.client.HTTPException) and re.search(
                    r"too long|too large|too many|more than \d+ headers", str(e), re.IGNORECASE)):
            return SourceContentError(f"{where}: the server's answer is malformed ({e}); this "
                                      "does not heal by retrying")
    return SourceUnavailableError(f"{where}: connection failed: {exc!r}")
