"""`cdi-uploadserver`: CDI's upload server (docs/pod-contract.md 4.7), a thin front-end over the core.

Every body goes through the import pipeline (engine.run_import with the body as its source):
formats sniffed, gz/xz/zstd decoded as they arrive, raw written sparse, qcow2 converted natively
as it streams, other formats staged in /scratch, archives extracted safely. Clone targets
(`x-cdi-content-type`) decode the cloner's Snappy stream (uploadserver/clone.py).

The HTTP stack is the standard library's (http.server, one thread per connection, TLS from
the ssl module), chosen by measurement: a 1 GiB body over TLS on loopback from curl, received
into a reused buffer, 0.63-0.64 GB/s with http.server against 0.21-0.29 GB/s with uvicorn
(an ASGI app reading `receive()` messages), on this 2-core machine where curl's encryption
shares the cores. It also hands each request its connection, whose verified peer certificate
the CN check needs. Bodies are read in place (Content-Length or chunked), never buffered whole.
"""

from __future__ import annotations

import dataclasses
import email.message
import email.utils
import http.server
import json
import logging
import os
import socket
import ssl
import sys
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import advice
from ..config import ContentType, ImportConfig
from ..errors import (
    CancelledError,
    ConfigError,
    FormatError,
    ImporterError,
    SourceContentError,
    TargetError,
    TargetTooSmallError,
)
from ..podconfig import available_space, get_usable_space
from ..quantity import is_decimal
from ..stopping import StopSignals
from ..termination import json_message, text_message, write_termination_message
from ..uploadconfig import UploadSettings, read_upload_environment
from .body import BodySource, FormFile, RequestBody
from .resumable import PREFIX, ResumableBody

__all__ = ["main"]

log = logging.getLogger("importer.uploadserver")

CLONE_TYPES = ("filesystem-clone", "blockdevice-clone")
TUS_HEADERS = {"Tus-Resumable": "1.0.0", "Tus-Version": "1.0.0"}
CONTENT_TYPE_HEADER = "x-cdi-content-type"
#: ours: `algo:hex` of the body as sent, verified before the upload counts as done
CHECKSUM_HEADER = "x-cdi-checksum"


class BadRequest(ImporterError):
    """A request the server refuses as HTTP says (RFC 9112): answered with `status`, and the
    connection closed (what follows on it cannot be trusted to be a new request)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


#: connections served at once (each is a thread); more are closed at accept
MAX_CONNECTIONS = 64
#: seconds a client has for its TLS handshake (a half-open connection holds a slot)
HANDSHAKE_SECONDS = 10


@dataclass(frozen=True, slots=True)
class Route:
    asynchronous: bool
    content: ContentType
    form: bool


ROUTES: dict[str, Route] = {}
for _v in ("v1alpha1", "v1beta1"):
    ROUTES[f"/{_v}/upload"] = Route(False, ContentType.KUBEVIRT, False)
    ROUTES[f"/{_v}/upload-async"] = Route(True, ContentType.KUBEVIRT, False)
    ROUTES[f"/{_v}/upload-archive"] = Route(False, ContentType.ARCHIVE, False)
    ROUTES[f"/{_v}/upload-form"] = Route(False, ContentType.KUBEVIRT, True)
    ROUTES[f"/{_v}/upload-form-async"] = Route(True, ContentType.KUBEVIRT, True)


class UploadState:
    """One upload at a time; after a success, none."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.uploading = False
        self.processing = False
        self.done = False
        self.clone_target = False
        self.preallocation_applied = False
        self.finished = threading.Event()  # the server's work is over (success or failure)
        self.resumable: dict[str, Resumable] = {}
        self.exit_code = 0
        self.message = ""


@dataclass
class Resumable:
    """A resumable upload in progress: its body, and the import reading it."""

    body: ResumableBody
    content: ContentType
    ended: threading.Event
    outcome: dict[str, Any]

    def idle(self) -> bool:
        """Waiting for bytes with no PATCH bringing them: what a deadline may end."""
        return (not self.ended.is_set() and self.body.offset < self.body.length
                and not self.body.patch_lock.locked())


class UploadServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 16

    def __init__(self, settings: UploadSettings, state: UploadState,
                 cancel: threading.Event) -> None:
        self.settings = settings
        self.state = state
        self.cancel = cancel
        super().__init__(settings.listen, Handler)
        self.ctx = tls_context(settings)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
            return  # a client that went away or spoke no TLS: logged where it happened
        log.error("error handling a request from %s: %r", client_address[0], exc)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        # the handshake runs in the connection's thread, not in accept(): a slow client must
        # not hold up the others
        return self.ctx.wrap_socket(conn, server_side=True, do_handshake_on_connect=False), addr

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """A slot per connection: past MAX_CONNECTIONS a new one is closed at once, so
        half-open or idle clients cannot make a thread each without bound."""
        if self.slots.acquire(blocking=False):
            return True
        log.warning("%d connections are open; closing the one from %s", MAX_CONNECTIONS,
                    client_address[0])
        return False

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


#: Go's cipher suite names (IANA's, which CDI's controller passes) to OpenSSL's
IANA_CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
}


def tls_context(s: UploadSettings) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(s.tls_cert), str(s.tls_key))
    if s.min_version is not None:
        ctx.minimum_version = s.min_version
    if s.ciphers:
        known = []
        for given in s.ciphers:  # as CDI: names this TLS library does not know are dropped
            name = IANA_CIPHERS.get(given, given)
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(name)
                known.append(name)
            except ssl.SSLError:
                log.warning("TLS_CIPHERS: %s is unknown here; dropped", given)
        if known:
            ctx.set_ciphers(":".join(known))
    if s.client_ca is not None:
        ctx.verify_mode = ssl.CERT_OPTIONAL  # "verify if given": /healthz needs no certificate
        ctx.load_verify_locations(str(s.client_ca))
    return ctx


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: UploadServer
    timeout = 120  # seconds without a byte from the client

    def setup(self) -> None:
        super().setup()
        try:
            self.request.settimeout(HANDSHAKE_SECONDS)
            self.request.do_handshake()
            self.request.settimeout(self.timeout)
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS handshake with %s failed: %s", self.client_address[0], exc)
            self.close_connection = True
            raise

    def log_message(self, fmt: str, *args: Any) -> None:
        log.info("%s %s", self.client_address[0], fmt % args)

    def _reply(self, code: int, text: str = "", *, close: bool = False) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has the length of the body, not the body
            self.wfile.write(data)

    # ---------------------------------------------------------------- methods

    def do_GET(self) -> None:
        self._other()

    def do_PUT(self) -> None:
        self._other()

    def do_PATCH(self) -> None:
        upload = self._resumable()
        if upload is not None:
            self._patch(upload)

    def do_DELETE(self) -> None:
        """tus termination: the client gives a resumable upload up; its import stops and
        removes what it wrote, and the server takes a new upload."""
        if not urlsplit(self.path).path.startswith(PREFIX + "/"):
            self._other()
            return
        upload = self._resumable()
        if upload is None:
            return
        if upload.ended.is_set() and "error" not in upload.outcome:
            self._reply(409, "the upload is complete; it cannot be terminated", close=True)
            return
        upload.body.abandoned.set()
        if not upload.ended.wait(60):
            self._reply(500, "the upload's import did not stop in time", close=True)
            return
        self.send_response(204)
        for k, v in TUS_HEADERS.items():
            self.send_header(k, v)
        self.end_headers()

    def do_OPTIONS(self) -> None:
        if urlsplit(self.path).path.startswith(PREFIX):
            self.send_response(204)
            for k, v in TUS_HEADERS.items():
                self.send_header(k, v)
            self.send_header("Tus-Extension", "creation,termination" + (
                ",expiration" if self.server.settings.deadline is not None else ""))
            self.end_headers()
        else:
            self._other()

    def do_HEAD(self) -> None:
        if urlsplit(self.path).path.startswith(PREFIX + "/"):
            upload = self._resumable()
            if upload is None:
                return
            self.send_response(200)
            for k, v in TUS_HEADERS.items():
                self.send_header(k, v)
            self.send_header("Upload-Offset", str(upload.body.offset))
            self.send_header("Upload-Length", str(upload.body.length))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = urlsplit(self.path).path
        route = ROUTES.get(path)
        if route is not None and route.asynchronous:  # CDI: HEAD on async answers at once
            self._reply(200)
        else:
            self._other()

    def _other(self) -> None:
        if urlsplit(self.path).path == "/healthz":
            self._reply(200, "OK")
        else:
            self._reply(404, close=True)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._reply(200, "OK")
            return
        route = ROUTES.get(path)
        if route is None and path in (PREFIX, PREFIX + "-archive"):
            self._create(ContentType.ARCHIVE if path.endswith("-archive") else
                         ContentType.KUBEVIRT)
            return
        if route is None:
            self._reply(404, close=True)
            return
        if not self._authorized():
            self._reply(401, close=True)
            return
        state = self.server.state
        with state.lock:
            if state.uploading or state.processing:
                log.warning("Got concurrent upload request")
                self._reply(503, close=True)
                return
            if state.done:
                log.warning("Got upload request after already done")
                self._reply(409, close=True)
                return
            state.uploading = True
        try:
            self._upload(route)
        finally:
            with state.lock:
                state.uploading = False

    def _authorized(self) -> bool:
        """A verified client certificate whose CN is CLIENT_NAME (CDI's rule)."""
        cert = self.request.getpeercert() if isinstance(self.request, ssl.SSLSocket) else None
        if not cert:
            return False
        subject: Any = cert.get("subject", ())
        for rdn in subject:
            for key, value in rdn:
                if key == "commonName" and value == self.server.settings.client_name:
                    return True
        log.warning("client certificate CN does not match %r", self.server.settings.client_name)
        return False

    # ---------------------------------------------------------------- resumable (tus)

    def _resumable(self) -> Resumable | None:
        """The resumable upload this request names, after the checks; None when answered."""
        path = urlsplit(self.path).path
        if not path.startswith(PREFIX + "/"):
            self._other()
            return None
        if not self._authorized():
            self._reply(401, close=True)
            return None
        upload = self.server.state.resumable.get(path.rsplit("/", 1)[1])
        if upload is None:
            self._reply(404, "no such upload: create it with POST " + PREFIX, close=True)
        return upload

    def _create(self, content: ContentType) -> None:
        if not self._authorized():
            self._reply(401, close=True)
            return
        length = self.headers.get("Upload-Length", "")
        if not is_decimal(length):
            self._reply(400, "Upload-Length is required (the upload's size in bytes)",
                        close=True)
            return
        available = import_config(self.server.settings, content).size_limit
        if available is not None and int(length) > available:
            self._failed(TargetTooSmallError(
                f"the upload's length {length} is larger than the volume ({available} bytes)",
                required=int(length), available=available))
            return
        state = self.server.state
        with state.lock:
            if state.uploading or state.processing:
                self._reply(503, close=True)
                return
            if state.done:
                self._reply(409, close=True)
                return
            state.processing = True
        upload_id = uuid.uuid4().hex
        checksum = self.headers.get(CHECKSUM_HEADER)
        upload = Resumable(ResumableBody(int(length), self.server.cancel), content,
                           threading.Event(), {})
        state.resumable[upload_id] = upload
        server = self.server

        def work() -> None:
            try:
                upload.outcome["applied"] = process(server, content, upload.body,
                                                    upload.body.length, "", checksum)
            except BaseException as exc:  # told to the client's next PATCH
                upload.outcome["error"] = exc
                upload.body.failed = exc
                with state.lock:
                    state.processing = False
                    state.resumable.pop(upload_id, None)
            finally:
                upload.ended.set()

        threading.Thread(target=work, name="upload-resumable", daemon=True).start()
        log.info("resumable upload %s of %s bytes created", upload_id, length)
        self.send_response(201)
        for k, v in TUS_HEADERS.items():
            self.send_header(k, v)
        self.send_header("Location", f"{PREFIX}/{upload_id}")
        self.send_header("Upload-Offset", "0")
        if self.server.settings.deadline is not None:  # abandoned uploads end there
            self.send_header("Upload-Expires", email.utils.format_datetime(
                self.server.settings.deadline.astimezone(UTC), usegmt=True))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _patch(self, upload: Resumable) -> None:
        if self.headers.get("Content-Type", "") != "application/offset+octet-stream":
            self._reply(415, "use Content-Type: application/offset+octet-stream", close=True)
            return
        offset = self.headers.get("Upload-Offset", "")
        if not upload.body.patch_lock.acquire(blocking=False):
            self._reply(409, "another PATCH of this upload is in progress", close=True)
            return
        try:
            if offset != str(upload.body.offset):
                self._reply(409, f"the upload is at offset {upload.body.offset}", close=True)
                return
            try:
                body, size = self._body()
                left = upload.body.length - upload.body.offset
                if size is not None and size > left:
                    raise BadRequest(413, f"the PATCH carries {size} bytes, and the upload has "
                                          f"{left} left of its Upload-Length")
                upload.body.append(body.read)
                if upload.body.offset == upload.body.length and body.read(1):
                    # chunked: more than Upload-Length; never parsed as another request
                    raise BadRequest(413, "the PATCH carries more bytes than Upload-Length")
            except BadRequest as exc:
                self._reply(exc.status, str(exc), close=True)
                return
            except ImporterError as exc:
                if upload.body.failed is None:  # the connection broke: resumable
                    log.info("PATCH ended at offset %d: %s", upload.body.offset, exc)
                    self.close_connection = True
                    return
            if upload.body.failed is None and upload.body.offset < upload.body.length:
                self._patched(upload)
                return
            upload.ended.wait()
            error = upload.outcome.get("error")
            if isinstance(error, ImporterError):
                self._failed(error)
                return
            if error is not None:
                raise error
            self._patched(upload)
            self._succeeded(bool(upload.outcome.get("applied")), "")
        finally:
            upload.body.patch_lock.release()

    def _patched(self, upload: Resumable) -> None:
        self.send_response(204)
        for k, v in TUS_HEADERS.items():
            self.send_header(k, v)
        self.send_header("Upload-Offset", str(upload.body.offset))
        self.end_headers()

    # ---------------------------------------------------------------- upload

    def _body(self) -> tuple[RequestBody, int | None]:
        """The body's framing, as RFC 9112 section 6 asks: a Transfer-Encoding other than
        exactly chunked is 501; both headers, or Content-Lengths that disagree or are not
        numbers, are 400 (a second reading of the framing is how requests are smuggled)."""
        encodings = [e.strip().lower() for v in self.headers.get_all("Transfer-Encoding", [])
                     for e in v.split(",")]
        lengths = {v.strip() for h in self.headers.get_all("Content-Length", [])
                   for v in h.split(",")}
        if encodings and encodings != ["chunked"]:
            raise BadRequest(501, f"Transfer-Encoding {', '.join(encodings)} is not supported; "
                                  "send the body as it is or chunked")
        if encodings and lengths:
            raise BadRequest(400, "the request has both a Transfer-Encoding and a "
                                  "Content-Length; send one")
        if len(lengths) > 1 or any(not is_decimal(v) for v in lengths):
            raise BadRequest(400, "the request's Content-Length is not one number")
        chunked = bool(encodings)
        size = int(next(iter(lengths))) if lengths else None
        if size is None and not chunked:
            raise TargetError("the upload has neither a Content-Length nor chunked encoding")
        return RequestBody(self.rfile, size, chunked=chunked), size  # type: ignore[arg-type]

    def _upload(self, route: Route) -> None:
        clone = self.headers.get(CONTENT_TYPE_HEADER, "")
        clone = clone if clone in CLONE_TYPES else ""
        log.info("Content type header is %r", clone)
        try:
            body, size = self._body()
            stream: Any = body
            if route.form:
                boundary = _boundary(self.headers.get("Content-Type", ""))
                stream, size = FormFile(body, boundary), None
            if route.asynchronous:
                if clone:
                    raise TargetError("async clone not supported")
                self._upload_async(route, body, stream, size)
                return
            applied = self._process(route.content, stream, size, clone)
            body.drain()
        except CancelledError:
            raise
        except ImporterError as exc:
            self._failed(exc, clone=bool(clone))
            return
        except Exception as exc:  # a bug: the client still gets an answer, the server goes on
            log.exception("internal error while saving the upload")
            self._failed(ImporterError(f"internal error (please report): {exc!r}"))
            return
        self._reply(200)  # answered before the server is told it is done (and exits)
        self._succeeded(applied, clone)

    def _process(self, content: ContentType, stream: Any, size: int | None, clone: str) -> bool:
        return process(self.server, content, stream, size, clone,
                       self.headers.get(CHECKSUM_HEADER))

    def _upload_async(self, route: Route, body: RequestBody, stream: Any,
                      size: int | None) -> None:
        """Answer once the whole body is on our side; the conversion finishes after."""
        state = self.server.state
        outcome: dict[str, Any] = {}
        ended = threading.Event()

        def work() -> None:
            try:
                outcome["applied"] = self._process(route.content, stream, size, "")
            except BaseException as exc:  # reported to the client, or ends the server
                outcome["error"] = exc
            finally:
                ended.set()

        worker = threading.Thread(target=work, name="upload-async", daemon=True)
        with state.lock:
            state.processing = True
        worker.start()
        while not (body.done.wait(0.2) or ended.is_set()):
            pass
        if "error" in outcome:
            with state.lock:
                state.processing = False
            err = outcome["error"]
            if isinstance(err, ImporterError):
                self._failed(err)
                return
            raise err
        log.info("Returning success to caller, continue processing in background")
        self._reply(200)

        def finish() -> None:
            ended.wait()
            with state.lock:
                state.processing = False
            if "error" in outcome:
                log.error("Error during resumed processing: %s", outcome["error"])
                state.exit_code, state.message = 1, text_message(
                    f"Saving stream failed: {outcome['error']}")
                state.finished.set()
                return
            self._succeeded(bool(outcome.get("applied")), "")

        threading.Thread(target=finish, name="upload-async-end", daemon=True).start()

    def _succeeded(self, applied: bool, clone: str) -> None:
        state = self.server.state
        with state.lock:
            state.done = True
            state.preallocation_applied = applied
            state.clone_target = bool(clone)
        log.info("Wrote data to %s", self.server.settings.destination)
        state.message = json_message("Clone Complete" if clone else "Upload Complete",
                                     preallocation_applied=applied)
        state.finished.set()

    def _failed(self, exc: ImporterError, *, clone: bool = False) -> None:
        """CDI's answers: 400 for what does not fit or is not a valid image, 500 for the rest
        (a broken clone stream too: the cloner's transfer failed, not a user's image); the
        server stays up so the client can try again."""
        log.error("Saving stream failed: %s", exc)
        if isinstance(exc, BadRequest):
            self._reply(exc.status, str(exc), close=True)
            return
        # CDI wraps every validation failure of the image as a capacity error (its
        # data-processor), so an invalid image is a 400 there too (its message says what is
        # wrong with the image): clients and CDI's tests tell "your data" (400) from "the
        # server" (500) by it
        if isinstance(exc, (FormatError, SourceContentError)) and not clone:
            self._reply(400, f"Saving stream failed: {exc}", close=True)
            return
        capacity = isinstance(exc, TargetTooSmallError) or (
            isinstance(exc, TargetError) and ("no space left" in str(exc)))
        if capacity:
            self._reply(400, "Saving stream failed: effective image size is larger than the "
                             f"reported available storage: {exc}", close=True)
        else:
            self._reply(500, f"Saving stream failed: {exc}", close=True)


def process(server: UploadServer, content: ContentType, stream: Any, size: int | None,
            clone: str, checksum: str | None = None) -> bool:
    """Run a body through the pipeline; whether preallocation was applied. `checksum`
    (x-cdi-checksum) is verified over the body before the target is committed."""
    settings = server.settings
    if clone:
        from .clone import receive_clone

        return receive_clone(stream, clone, settings, server.cancel)
    from ..engine import run_import

    config = import_config(settings, content)
    if checksum:
        from ..checksum import parse_checksum

        try:
            spec = parse_checksum(checksum)
        except ValueError as exc:
            raise TargetError(f"{CHECKSUM_HEADER}: {exc}") from exc
        config = dataclasses.replace(config, checksum=spec)
    source = BodySource(stream, size, "upload")
    applied = run_import(config, cancel=server.cancel, source=source).preallocated
    if content is ContentType.KUBEVIRT and not settings.block:
        os.chmod(settings.destination, 0o660)  # CDI's upload server chmods disk.img so
    return applied


def _boundary(content_type: str) -> str:
    msg = email.message.Message()
    msg["Content-Type"] = content_type
    boundary = msg.get_param("boundary")
    if msg.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
        raise TargetError("the form upload is not multipart/form-data with a boundary")
    return boundary


def import_config(s: UploadSettings, content: ContentType) -> ImportConfig:
    """The import of one body: sizes as the importer pod computes them (contract 3.3, 5.1)."""
    dest = s.data_dir if content is ContentType.ARCHIVE else s.destination
    available = available_space(s.destination if s.block else s.data_dir, s.block, s.image_size)
    resize_to = None
    if s.image_size is not None and not s.block:
        resize_to = min(get_usable_space(s.overhead, available), s.image_size)
    return ImportConfig(source="upload", dest=dest, content_type=content, image_size=resize_to,
                        size_limit=available, preallocation=s.preallocation,
                        scratch_dir=s.scratch_dir, tar_as_raw=True, source_kind="upload")


def main(argv: Sequence[str] | None = None) -> int:
    advice.use("pod")  # messages name the pod's settings, never CLI flags
    args = list(sys.argv[1:] if argv is None else argv)
    if "--version" in args:
        from .. import __version__ as version

        print(f"cdi-uploadserver (importer {version})")
        return 0
    verbose = next((int(a[3:]) for a in args if a.startswith("-v=") and is_decimal(a[3:])), 1)
    logging.basicConfig(level=logging.DEBUG if verbose >= 3 else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from os import environ

    from .. import __version__

    log.info("importer %s as cdi-uploadserver", __version__)  # which image ran

    term = Path(environ.get("IMPORTER_FS_ROOT", "/")) / "dev" / "termination-log"
    try:
        settings = read_upload_environment(environ)
    except ConfigError as exc:
        log.error("%s", exc)
        write_termination_message(term, text_message(str(exc)))
        return exc.exit_code
    stop = StopSignals()
    state = UploadState()
    try:
        server = UploadServer(settings, state, stop.cancel)
    except (OSError, ssl.SSLError) as exc:
        log.error("cannot serve on %s:%d: %s", *settings.listen, exc)
        write_termination_message(settings.termination_log, text_message(
            f"Upload server failed to start: {exc}"))
        return 1
    log.info("Upload server listening on %s:%d", *server.server_address[:2])
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                     name="serve", daemon=True).start()
    try:
        while not state.finished.wait(0.5):
            if settings.deadline is not None and _deadline_passed(settings, state):
                state.message = json.dumps({"deadlinePassed": True, "message": "Deadline Passed"},
                                           separators=(",", ":"))
                break
    except CancelledError as exc:
        stop.cancel.set()
        state.exit_code, state.message = exc.exit_code, text_message("Upload server stopped by "
                                                                     "a signal")
    finally:
        stop.answered.set()
        server.shutdown()
        server.server_close()
        stop.restore()
    write_termination_message(settings.termination_log, state.message)
    return state.exit_code


def _deadline_passed(settings: UploadSettings, state: UploadState) -> bool:
    assert settings.deadline is not None
    if datetime.now(UTC) < settings.deadline:
        return False
    with state.lock:
        idle = [u for u in state.resumable.values() if u.idle()]
        only_idle = bool(idle) and len(idle) == len(state.resumable)  # all created, abandoned
        busy = state.uploading or (state.processing and not only_idle)
    if busy:  # an upload in flight is waited for
        return False
    for upload in idle:  # created, then abandoned: given up as DELETE would
        log.info("deadline passed: giving up the resumable upload stopped at offset %d",
                 upload.body.offset)
        upload.body.abandoned.set()
        upload.ended.wait(60)
    log.info("deadline %s passed while idle", settings.deadline.isoformat())
    return True


if __name__ == "__main__":
    raise SystemExit(main())
