"""Blobs and manifests from a registry (distribution API v2) through oras-py.

oras supplies the protocol pieces: the token (Bearer) and basic auth backends with their
Www-Authenticate handshake, and the API URLs. Three things are done on top of it, each because
oras lacks it for an import that streams gigabytes:
* do_request is replaced: oras's version retries every failure with sleeps of up to 83 s, sets
  no timeouts, and is not safe for several threads sharing one token; retries here follow the
  importer's one back-off policy (sources/retry.py) and resume where the bytes stopped;
* blobs are streamed from a byte offset (Range), resumed after a dropped connection, and read at
  random for qemu-img; oras only downloads whole blobs to files;
* the backend is chosen by the registry's own challenge on /v2/ (Bearer -> token, Basic ->
  basic): oras's token backend cannot answer a Basic challenge, and its basic backend fails
  with an AttributeError when no credentials are set.
Digests are verified by the caller (digest.VerifyingStream / InOrderVerifier), since only it
knows whether the bytes arrive in order."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import oras.auth
import oras.auth.utils
import oras.container
import oras.provider
import requests
import requests.adapters
import urllib3.exceptions

from ... import __version__, advice
from ...errors import (
    ImporterError,
    SourceAuthError,
    SourceContentError,
    SourceError,
    SourceNotFoundError,
    SourceTLSError,
    SourceUnavailableError,
    SourceUnreachableError,
)
from ..options import HttpOptions
from ..ranged import read_range
from ..resumable import ResumableStream
from ..retry import backoff, retry_unreachable, unreachable_cause
from ..tls import verify_setting
from .credentials import Credentials
from .digest import Digest, check_bytes
from .manifest import ACCEPT, MAX_MANIFEST, Descriptor
from .reference import ImageReference

__all__ = ["RegistryStore"]

log = logging.getLogger(__name__)
READ_PIECE = 1 << 20
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
              urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError)


class _Oras(oras.provider.Registry):  # type: ignore[misc]
    """oras's Registry with a request method fit for parallel, resumable transfers."""

    timeout: tuple[float, float] = (30.0, 120.0)

    def __init__(self, hostname: str, insecure: bool, tls_verify: bool | str) -> None:
        super().__init__(hostname=hostname, insecure=insecure, tls_verify=tls_verify,
                         auth_backend="token")
        self.auth_header: dict[str, str] = {}
        self.auth_lock = threading.Lock()

    def use_backend(self, name: str, creds: Credentials | None) -> None:
        self.auth = oras.auth.get_auth_backend(name, self.session, self.prefix == "http",
                                               tls_verify=self._tls_verify)
        if creds is not None:
            self.auth.set_basic_auth(creds.username, creds.password)

    def do_request(self, url: str, method: str = "GET", data: Any = None,
                   headers: dict[str, str] | None = None, json: Any = None,
                   stream: bool = False) -> requests.Response:
        # only reads pass through here (oras's push paths, which send data/json, are unused)
        headers = dict(headers or {})
        sent = dict(self.auth_header)
        resp = self.send(method, url, {**headers, **sent}, stream)
        if resp.status_code != 401 or not resp.headers.get("Www-Authenticate"):
            return resp
        resp.close()
        with self.auth_lock:
            if self.auth_header == sent:  # no other thread has renewed it meanwhile
                try:
                    new, changed = self.auth.authenticate_request(resp, {}, refresh=True)
                except (ValueError, KeyError, AttributeError, TypeError) as exc:
                    # oras reads the token service's answer as JSON without checking it
                    raise SourceAuthError(
                        f"the registry's token service at "
                        f"{resp.headers.get('Www-Authenticate', '?')[:200]} gave no usable "
                        f"token ({type(exc).__name__}: {exc})") from exc
                if not changed or "Authorization" not in new:
                    return resp
                self.auth_header = {"Authorization": new["Authorization"]}
            sent = dict(self.auth_header)
        return self.send(method, url, {**headers, **sent}, stream)

    def send(self, method: str, url: str, headers: dict[str, str], stream: bool
              ) -> requests.Response:
        session: requests.Session = self.session
        return session.request(method, url, headers=headers, stream=stream,
                               verify=self._tls_verify, timeout=self.timeout)


def _registry_errors(resp: requests.Response) -> str:
    """distribution's error codes (MANIFEST_UNKNOWN, UNAUTHORIZED, ...) for messages."""
    with contextlib.suppress(Exception):
        body = json.loads(resp.content[:65536])
        codes = [f"{e.get('code')}: {e.get('message')}" for e in body.get("errors", [])]
        if codes:
            return "; ".join(codes)
    return resp.reason or ""


class RegistryStore:
    random_access = True

    def __init__(self, ref: ImageReference, opts: HttpOptions, creds: Credentials | None) -> None:
        self.ref = ref
        self.where = f"{ref.domain}/{ref.repository}"
        self._opts = opts
        self._creds = creds
        self._closed = threading.Event()
        verify = verify_setting(opts)
        self._reg = _Oras(ref.api_host, insecure=False, tls_verify=verify)
        self._reg.timeout = (opts.connect_timeout, opts.read_timeout)
        session = self._reg.session
        session.trust_env = False  # proxies come from the configuration layer only
        session.headers["User-Agent"] = f"importer/{__version__}"
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        self._pins: dict[str, str] = {}  # blob digest -> where the registry redirected it
        self._container = oras.container.Container(f"{ref.api_host}/{ref.repository}",
                                                   registry=ref.api_host)
        self._ping()

    # ------------------------------------------------------------------ set-up

    def _set_scheme(self, scheme: str) -> str:
        self._reg.prefix = scheme
        base = f"{scheme}://{self.ref.api_host}/v2/"
        self._reg.session.proxies = self._proxies(base)
        return base

    def _ping(self) -> None:
        """GET /v2/ (the API's version check) tells the scheme, and which auth the registry
        wants. Plain HTTP is tried only when insecure access was asked for."""
        def ping(scheme: str) -> requests.Response:
            base = self._set_scheme(scheme)
            return self._attempt(lambda: self._reg.send("GET", base, {}, False), "connecting")

        try:
            resp = ping("https")
        except SourceTLSError:
            if not self._opts.insecure:
                raise
            log.warning("%s does not speak TLS; using plain HTTP as insecure access was asked "
                        "for", self.ref.api_host)
            resp = ping("http")
        challenge = resp.headers.get("Www-Authenticate", "")
        resp.close()
        scheme = challenge.split(" ", 1)[0].lower()
        if resp.status_code == 401 and scheme == "basic":
            if self._creds is None:
                raise SourceAuthError(f"{self.where}: the registry requires a user name and "
                                      f"password, and none were given ({advice.credentials()})")
            self._reg.use_backend("basic", self._creds)
            # sent up front: a Basic registry would otherwise answer 401 to every request first
            basic = oras.auth.utils.get_basic_auth(self._creds.username, self._creds.password)
            self._reg.auth_header = {"Authorization": f"Basic {basic}"}
        elif resp.status_code == 401 and scheme == "bearer":
            self._reg.use_backend("token", self._creds)
        elif resp.status_code not in (200, 401):
            log.warning("%s answered %d to GET /v2/; trying anyway", self.ref.api_host,
                        resp.status_code)
        if self._creds is not None:
            log.info("registry credentials from %s", self._creds.origin)

    # ------------------------------------------------------------------ requests

    def _attempt(self, call: Any, action: str) -> requests.Response:
        """One request with transport errors translated, retried with back-off when transient."""
        attempt = 0
        while True:
            if self._closed.is_set():
                raise SourceError(f"{self.where}: the import was stopped")
            try:
                resp: requests.Response = call()
                if resp.status_code in _RETRY_STATUS:
                    detail = _registry_errors(resp)
                    resp.close()
                    raise SourceUnavailableError(f"{self.where}: {action}: HTTP {resp.status_code} "
                                                 f"{detail}")
                return resp
            except requests.exceptions.SSLError as exc:
                if "WRONG_VERSION_NUMBER" in str(exc):
                    raise SourceTLSError(
                        f"{self.where}: TLS handshake failed ({_reason(exc)}): the registry "
                        f"serves plain HTTP; ask for insecure access ({advice.insecure()}) if "
                        "that is intended") from exc
                raise SourceTLSError(
                    f"{self.where}: TLS handshake or verification failed ({_reason(exc)}); give the "
                    f"registry's CA ({advice.ca()}), or insecure access ({advice.insecure()}) if "
                    "the registry is trusted otherwise") from exc
            except _TRANSIENT as exc:
                why = unreachable_cause(exc)
                if why:  # nobody there: retried briefly, as every source does
                    attempt += 1
                    retry_unreachable(self._opts, self._closed, attempt, SourceUnreachableError(
                        f"{self.where}: {action}: {why}; check the registry's host and port"))
                    continue
                err: SourceUnavailableError = SourceUnavailableError(
                    f"{self.where}: {action}: {_reason(exc)}")
            except SourceUnavailableError as exc:
                err = exc
            except requests.RequestException as exc:  # redirect loops, invalid URLs, ...
                raise SourceError(f"{self.where}: {action}: {_reason(exc)}") from exc
            attempt += 1
            backoff(self._opts, self._closed, attempt, err)

    def _get(self, url: str, action: str, headers: dict[str, str], stream: bool) -> requests.Response:
        resp = self._attempt(lambda: self._reg.do_request(url, "GET", headers=dict(headers),
                                                          stream=stream), action)
        if resp.status_code in (200, 206):
            return resp
        detail = _registry_errors(resp)
        resp.close()
        code = resp.status_code
        if code == 401:
            who = (f"the credentials from {self._creds.origin}" if self._creds
                   else "anonymous access")
            raise SourceAuthError(f"{self.where}: {action}: the registry refused {who} (401 "
                                  f"{detail}); check the user name and password")
        if code == 403:
            raise SourceAuthError(f"{self.where}: {action}: access denied (403 {detail})")
        if code == 404:
            raise SourceNotFoundError(f"{self.where}: {action}: not found (404 {detail})")
        if code == 416:
            raise SourceContentError(f"{self.where}: {action}: range not satisfiable (416)")
        raise SourceError(f"{self.where}: {action}: HTTP {code} {detail}")

    # ------------------------------------------------------------------ manifests

    def root_manifest(self) -> tuple[bytes, str, Digest | None]:
        """The manifest or index the reference names, its media type and, when pulled by
        digest, the digest it must have (verified here)."""
        ref = self.ref
        url = f"{self._reg.prefix}://{self._container.manifest_url(ref.reference)}"
        what = f"manifest {ref.reference} of {self.where}"
        try:
            resp = self._get(url, f"fetching {what}", {"Accept": ", ".join(ACCEPT)}, stream=True)
        except SourceNotFoundError as exc:
            raise SourceNotFoundError(
                f"{self.where}: {'digest' if ref.digest else 'tag'} {ref.reference!r} not found "
                f"({str(exc).rsplit('(', 1)[-1].rstrip(')')}); check the image name") from exc
        data = self._read_limited(resp, MAX_MANIFEST, what)
        mtype = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if ref.digest:
            check_bytes(data, ref.digest, None, what)
        served = resp.headers.get("Docker-Content-Digest")
        digest = ref.digest or Digest.of(data)
        if served and not ref.digest and served != str(digest):
            log.warning("%s: the registry says the manifest is %s but its bytes hash to %s",
                        self.where, served, digest)
        return data, mtype, digest

    def fetch_manifest(self, desc: Descriptor) -> bytes:
        url = f"{self._reg.prefix}://{self._container.manifest_url(str(desc.digest))}"
        what = f"manifest {desc.digest.short()} of {self.where}"
        resp = self._get(url, f"fetching {what}", {"Accept": ", ".join(ACCEPT)}, stream=True)
        data = self._read_limited(resp, max(desc.size, 1), what)
        check_bytes(data, desc.digest, desc.size, what)
        return data

    def fetch_blob(self, desc: Descriptor) -> bytes:
        what = f"blob {desc.digest.short()} of {self.where}"
        resp = self._get(self._blob_url(desc), f"fetching {what}", {}, stream=True)
        data = self._read_limited(resp, max(desc.size, 1), what)
        check_bytes(data, desc.digest, desc.size, what)
        return data

    def _read_limited(self, resp: requests.Response, limit: int, what: str) -> bytes:
        with resp:
            try:
                data = resp.raw.read(limit + 1, decode_content=True)
            except _TRANSIENT as exc:
                raise SourceUnavailableError(f"{what}: {_reason(exc)}") from exc
        if len(data) > limit:
            raise SourceContentError(f"{what} is larger than {limit} bytes; refusing it")
        return bytes(data)

    # ------------------------------------------------------------------ blobs

    def _blob_url(self, desc: Descriptor) -> str:
        return f"{self._reg.prefix}://{self._container.get_blob_url(str(desc.digest))}"

    def supports_ranges(self, desc: Descriptor) -> bool:
        resp = self._get(self._blob_url(desc), "probing range support", {"Range": "bytes=0-0"},
                         stream=True)
        resp.close()
        return resp.status_code == 206

    def open_blob(self, desc: Descriptor, offset: int = 0) -> io.RawIOBase:
        """The blob's bytes from `offset`, resumed after a dropped connection; the count must
        reach the blob's size (the digest is checked by the caller)."""
        action = f"reading blob {desc.digest.short()}"

        def read(resp: requests.Response, b: memoryview) -> int:
            with self._transient(action):
                return int(resp.raw.readinto(b))

        return ResumableStream(offset=offset, size=desc.size, where=f"{self.where}: {action}",
                               open_at=lambda pos: self._open_at(desc, pos, None), read=read,
                               backoff=self.backoff)

    def _open_at(self, desc: Descriptor, offset: int, end: int | None) -> requests.Response:
        headers = {}
        if offset or end is not None:
            headers["Range"] = f"bytes={offset}-{'' if end is None else end}"
        action = f"reading blob {desc.digest.short()}"
        key = str(desc.digest)
        resp = None
        pinned = self._pins.get(key)
        if pinned is not None:
            resp = self._attempt(lambda: self._reg.session.get(
                pinned, headers=headers, stream=True, timeout=self._reg.timeout,
                verify=self._reg._tls_verify, proxies=self._proxies(pinned),
                allow_redirects=False), action)
            if resp.status_code not in (200, 206):
                # a presigned URL expires: go through the registry again for a fresh one
                log.info("%s: the pinned blob URL answered %d; asking the registry again",
                         self.where, resp.status_code)
                resp.close()
                self._pins.pop(key, None)
                resp = None
        if resp is None:
            resp = self._get(self._blob_url(desc), action, headers, stream=True)
            if resp.history and urlsplit(resp.url).netloc != urlsplit(self._blob_url(desc)).netloc:
                # the registry hands blob reads to storage (S3, a CDN): go there directly for
                # the next ranges instead of being redirected every time
                if key not in self._pins:
                    log.info("%s: blob %s is served by %s; reading it there directly",
                             self.where, desc.digest.short(), urlsplit(resp.url).netloc)
                self._pins[key] = resp.url
        if "Range" in headers:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if resp.status_code != 206 or not m or int(m.group(1)) != offset:
                resp.close()
                raise SourceContentError(f"{self.where}: the registry ignored a range request for "
                                         f"blob {desc.digest.short()}")
        return resp

    def _proxies(self, url: str) -> dict[str, str]:
        proxy = self._opts.proxy_for(url)
        return {urlsplit(url).scheme: proxy} if proxy else {}

    def readinto_blob(self, desc: Descriptor, offset: int, buf: bytearray | memoryview) -> int:
        size = max(0, min(len(buf), desc.size - offset))
        action = f"reading blob {desc.digest.short()}"

        def read_into(resp: requests.Response, view: memoryview) -> int:
            with self._transient(action):
                # urllib3 reads into a new bytes object of the size asked and copies: pieces
                # of at most 1 MiB keep that transient memory small
                return int(resp.raw.readinto(view[:READ_PIECE]) or 0)

        return read_range(offset, memoryview(buf)[:size],
                          open_range=lambda first, last: self._open_at(desc, first, last),
                          read_into=read_into, discard=lambda resp: resp.close(),
                          release=lambda resp: resp.close(),
                          backoff=lambda n, exc, _at: self.backoff(n, exc),
                          short=lambda at: SourceUnavailableError(
                              f"{self.where}: short answer to a range (at byte {at})"))

    @contextlib.contextmanager
    def _transient(self, action: str) -> Iterator[None]:
        try:
            yield
        except _TRANSIENT as exc:
            raise SourceUnavailableError(f"{self.where}: {action}: {_reason(exc)}") from exc

    def backoff(self, attempt: int, exc: Exception) -> None:
        backoff(self._opts, self._closed, attempt, exc)

    def close(self) -> None:
        self._closed.set()


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests/urllib3 error, without the URL noise."""
    seen = exc
    while seen.__context__ is not None and not isinstance(seen, ImporterError):
        seen = seen.__context__
    text = str(seen) or type(seen).__name__
    m = re.search(r"\[SSL: [A-Z_]+\][^')\"]*|certificate verify failed[^')\"]*|Connection refused|"
                  r"Name or service not known|timed out|Connection reset by peer", text)
    return m.group(0) if m else text[:300]
