"""Progress on HTTPS, exactly as CDI's controller scrapes it (docs/pod-contract.md section 2):
`kubevirt_cdi_import_progress_total{ownerUID="<uid>"} <percent>` in fixed-point notation, plus
our own `importer_*` metrics, from a private registry, on every path, with a self-signed
certificate made at start (the controller does not verify it)."""

from __future__ import annotations

import contextlib
import datetime
import logging
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from .progress import Progress

__all__ = ["MetricsServer", "ProgressCollector", "self_signed_certificate"]

log = logging.getLogger(__name__)


class ProgressCollector(Collector):
    """Reads the shared Progress object at scrape time."""

    def __init__(self, progress: Progress, owner_uid: str,
                 metric: str = "kubevirt_cdi_import_progress") -> None:
        self.progress = progress
        self.owner_uid = owner_uid
        #: the counter's name without _total: the importer's, or the cloner's
        #: (kubevirt_cdi_clone_progress)
        self.metric = metric
        self._last = (time.monotonic(), 0)

    def collect(self) -> Iterator[Any]:
        p = self.progress
        # two decimals, never below 0.01 unless zero: prometheus prints small floats in
        # exponent form (1e-05), which CDI's regex `(\d{1,3}\.?\d*)` would misread
        pct = round(p.percent, 2)
        cdi = CounterMetricFamily(self.metric, "The progress in percentage", labels=["ownerUID"])
        cdi.add_metric([self.owner_uid], pct)
        yield cdi
        for name, doc, value in (
            ("importer_bytes_read", "Bytes read from the source", p.n),
            ("importer_bytes_written", "Bytes of data written to the target", p.bytes_written),
            ("importer_zero_bytes", "Zero bytes skipped or written as zero ranges", p.zero_bytes),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        phase = GaugeMetricFamily("importer_phase", "The current phase (1 for the current one)",
                                  labels=["phase"])
        phase.add_metric([p.phase], 1)
        yield phase
        now, read = time.monotonic(), p.n
        last_t, last_read = self._last
        rate = (read - last_read) / (now - last_t) if now > last_t else 0.0
        self._last = (now, read)
        yield GaugeMetricFamily("importer_transfer_rate_bytes_per_second",
                                "Source bytes per second since the previous scrape", value=rate)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"importer@{int(time.time())}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=365))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


#: seconds a client has to finish its TLS handshake, and then to send its request
CLIENT_TIMEOUT = 10.0


class _TlsServer(ThreadingWSGIServer):
    """A thread per scrape, the TLS handshake done in that thread with a deadline.
    prometheus_client's start_http_server wraps the listening socket instead, so its accept()
    shakes hands with each client in turn: one client that connected and said nothing stopped
    every scrape (seen: CDI's scrape timed out behind a bare TCP connection)."""

    context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(CLIENT_TIMEOUT)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):  # a cut, a stall, or not TLS at all: nothing to answer
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):  # as socketserver ends a request: writes first
                tls.shutdown(socket.SHUT_WR)
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that stalls past the deadline or breaks off mid-request: dropped, logged
        at debug level (socketserver would print a traceback to stderr)."""
        log.debug("metrics: dropped a client %s: %s", client_address, sys.exc_info()[1])


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not worth a log line


class MetricsServer:
    def __init__(self, progress: Progress, owner_uid: str, port: int, addr: str = "0.0.0.0",
                 *, metric: str = "kubevirt_cdi_import_progress") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ProgressCollector(progress, owner_uid, metric))
        self._server: Any = None
        tmp = Path(tempfile.mkdtemp(prefix="importer-metrics-"))
        try:
            cert, key = self_signed_certificate(tmp)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(cert), str(key))
            server = make_server(addr, port, make_wsgi_app(self.registry), _TlsServer,
                                 handler_class=_QuietHandler)
            server.context = context
            threading.Thread(target=server.serve_forever, name="metrics",
                             daemon=True).start()
            self._server = server
            log.info("progress metrics on https://%s:%d/metrics", addr, port)
        except (OSError, ValueError, ssl.SSLError) as exc:  # as CDI: the import goes on
            log.error("cannot serve metrics on port %d: %s", port, exc)
        finally:
            # the TLS context holds the certificate and key once it loaded them: the files
            # (a private key among them) are not left in /tmp
            shutil.rmtree(tmp, ignore_errors=True)

    def close(self) -> None:
        """Stop serving without waiting: socketserver's shutdown() waits for serve_forever to
        notice, which polls every 0.5 s. That wait was 0.44 s of every pod's run (py-spy, the
        1 MiB row of the pod benchmark); the pod exits right after, and a long-lived caller's
        server stops within the poll on a daemon thread."""
        server, self._server = self._server, None
        if server is not None:
            def stop() -> None:
                server.shutdown()
                server.server_close()

            threading.Thread(target=stop, name="metrics-close", daemon=True).start()
