"""A stand-in for the Kubernetes API server, for cdi-source-update-poller's tests.

Why a stand-in: no Kubernetes API server can run on this machine (no kube-apiserver, etcd or
container runtime for a cluster; the registries reach only PyPI, Debian and npm). It checks
what a real API server checks for the poller's two requests, and answers as one does:
* TLS with a certificate from a test CA, and `Authorization: Bearer <token>` on every request,
  the scheme in any case (401 with a Status object otherwise);
* GET and PATCH only on /apis/cdi.kubevirt.io/v1beta1/namespaces/NS/dataimportcrons/NAME
  (404 Status for an unknown object, 405 for another verb);
* PATCH with `Content-Type: application/json-patch+json` (415 otherwise), a JSON array of RFC
  6902 operations applied in order, all or nothing (422 Status when one cannot apply, e.g. an
  "add" under a missing parent), and the updated object returned with a new resourceVersion.
Requests are recorded for the tests to inspect."""

from __future__ import annotations

import copy
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "/apis/cdi.kubevirt.io/v1beta1/namespaces/"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class KubeApi:
    port: int
    token: str
    ca_file: Path
    crons: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def add_cron(self, namespace: str, name: str, annotations: dict[str, str] | None) -> None:
        meta: dict[str, Any] = {"name": name, "namespace": namespace, "resourceVersion": "1",
                                "uid": f"uid-{name}"}
        if annotations is not None:
            meta["annotations"] = dict(annotations)
        self.crons[(namespace, name)] = {
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataImportCron", "metadata": meta,
            "spec": {"schedule": "*/5 * * * *", "managedDataSource": name}}

    def annotations(self, namespace: str, name: str) -> dict[str, str]:
        return dict(self.crons[(namespace, name)]["metadata"].get("annotations") or {})

    def kubeconfig(self, path: Path, token: str | None = None) -> Path:
        path.write_text(json.dumps({  # JSON is YAML: the client reads it with its YAML loader
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {
                "server": self.url, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": "poller", "user": {"token": token or self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "poller"}}]}))
        return path


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def apply_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add, replace, remove and test on a copy; ValueError names what cannot apply."""
    out = copy.deepcopy(doc)
    for op in ops:
        kind, path = op.get("op"), op.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"invalid path {path!r}")
        parts = [_unescape(p) for p in path[1:].split("/")]
        parent: Any = out
        for part in parts[:-1]:
            if not isinstance(parent, dict) or part not in parent:
                raise ValueError(f"doc is missing path: {path!r}")
            parent = parent[part]
        if not isinstance(parent, dict):
            raise ValueError(f"path {path!r} does not name an object member")
        last = parts[-1]
        if kind == "add":
            parent[last] = copy.deepcopy(op["value"])
        elif kind == "replace":
            if last not in parent:
                raise ValueError(f"replace operation does not apply: doc is missing key {path!r}")
            parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            if last not in parent:
                raise ValueError(f"remove operation does not apply: doc is missing key {path!r}")
            del parent[last]
        elif kind == "test":
            if parent.get(last) != op.get("value"):
                raise ValueError(f"testing value {path!r} failed")
        else:
            raise ValueError(f"unexpected operation {kind!r}")
    return out


@contextmanager
def kube_api(work: Path, ca: Any, token: str = "poller-token") -> Iterator[KubeApi]:
    """The stand-in on a free loopback port, with a server certificate from `ca` (trustme)."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    pem = work / "apiserver.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca_file = work / "ca.crt"
    ca.cert_pem.write_to_path(str(ca_file))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pem))
    api = KubeApi(0, token, ca_file)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, code: int, obj: dict[str, Any]) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with lock:
                api.requests.append(Recorded(self.command, self.path,
                                             {k.lower(): v for k, v in self.headers.items()},
                                             body))
            scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
            # the API server's bearer authenticator takes the scheme in any case (the Python
            # client's in-cluster loader sends "bearer")
            if scheme.lower() != "bearer" or given.strip() != api.token:
                self._answer(401, _status(401, "Unauthorized", "Unauthorized"))
                return
            path = self.path.split("?", 1)[0]
            parts = path[len(PREFIX):].split("/") if path.startswith(PREFIX) else []
            if len(parts) != 3 or parts[1] != "dataimportcrons":
                self._answer(404, _status(404, "NotFound", "the server could not find the "
                                          "requested resource"))
                return
            key = (parts[0], parts[2])
            with lock:
                cron = api.crons.get(key)
                if cron is None:
                    self._answer(404, _status(404, "NotFound", f'dataimportcrons.cdi.kubevirt.io '
                                              f'"{key[1]}" not found'))
                    return
                if self.command == "GET":
                    self._answer(200, cron)
                    return
                ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                if ctype != "application/json-patch+json":
                    self._answer(415, _status(415, "UnsupportedMediaType",
                                              f"the body of the request was in an unknown "
                                              f"format - accepted media types include: "
                                              f"application/json-patch+json, "
                                              f"application/merge-patch+json (got {ctype!r})"))
                    return
                try:
                    ops = json.loads(body)
                    if not isinstance(ops, list):
                        raise ValueError("a JSON patch is an array of operations")
                    updated = apply_patch(cron, ops)
                except (ValueError, KeyError) as exc:
                    self._answer(422, _status(422, "Invalid", f"the server rejected our request "
                                              f"due to an error in our request: {exc}"))
                    return
                updated["metadata"]["resourceVersion"] = str(
                    int(cron["metadata"]["resourceVersion"]) + 1)
                api.crons[key] = updated
                self._answer(200, updated)

        do_GET = _handle
        do_PATCH = _handle

        def do_PUT(self) -> None:
            self._answer(405, _status(405, "MethodNotAllowed", "not the poller's verb"))

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    api.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
