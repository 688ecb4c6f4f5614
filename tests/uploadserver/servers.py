"""The upload server as the controller runs it (a child process, CDI's environment, /etc/tls),
and the certificates the upload proxy and the cloner would hold."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, free_port, wait_port

CLIENT_NAME = "client.upload-server.cdi.kubevirt.io"


@dataclasses.dataclass
class Certs:
    dir: Path
    ca: Path
    client: tuple[Path, Path]  # cert, key with CN = CLIENT_NAME
    wrong: tuple[Path, Path]  # signed by the same CA, another CN
    clone: tuple[Path, Path]  # CN = a clone's client name


def make_certs(work: Path) -> Certs:
    import trustme

    work.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(work / "tls.key"))
    server.cert_chain_pems[0].write_to_path(str(work / "tls.crt"))
    ca.cert_pem.write_to_path(str(work / "ca.crt"))

    def client(name: str, cn: str) -> tuple[Path, Path]:
        leaf = ca.issue_cert(f"{name}.example.test", common_name=cn)
        leaf.cert_chain_pems[0].write_to_path(str(work / f"{name}.crt"))
        leaf.private_key_pem.write_to_path(str(work / f"{name}.key"))
        return work / f"{name}.crt", work / f"{name}.key"

    return Certs(work, work / "ca.crt", client("proxy", CLIENT_NAME),
                 client("other", "someone.else"), client("cloner", "ns/src-ns/tgt"))


@dataclasses.dataclass
class UploadPod:
    root: Path
    certs: Certs
    proc: subprocess.Popen[str] | None = None
    port: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def termination(self) -> str:
        return (self.root / "dev" / "termination-log").read_text()

    def start(self, *, listening: bool = True, **env: str) -> UploadPod:
        tls = self.root / "etc" / "tls"
        tls.mkdir(parents=True, exist_ok=True)
        for name in ("tls.crt", "tls.key", "ca.crt"):
            (tls / name).write_bytes((self.certs.dir / name).read_bytes())
        self.port = free_port()
        base = {"PATH": os.environ["PATH"], "IMPORTER_FS_ROOT": str(self.root),
                "TLS_KEY_FILE": "/etc/tls/tls.key", "TLS_CERT_FILE": "/etc/tls/tls.crt",
                "CLIENT_CERT_FILE": "/etc/tls/ca.crt", "CLIENT_NAME": CLIENT_NAME,
                "FILESYSTEM_OVERHEAD": "0", "UPLOAD_IMAGE_SIZE": "64Mi", "PREALLOCATION": "false",
                "LISTEN_ADDRESS": "127.0.0.1", "LISTEN_PORT": str(self.port), **env}
        self.proc = subprocess.Popen([sys.executable, "-m", "importer", "upload-server",
                                      "-v=1"], cwd=ROOT, env=base, text=True,
                                     stderr=subprocess.PIPE)
        if listening:
            wait_port(self.port, timeout=20)
        return self

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def curl(self, path: str, *args: str, cert: tuple[Path, Path] | None = None,
             method: str = "POST") -> tuple[int, str]:
        """curl as the upload proxy calls the server; the HTTP status and the body."""
        cert = self.certs.client if cert is None else cert
        argv = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert",
                str(self.certs.ca), "-X", method, *args]
        if cert:
            argv += ["--cert", str(cert[0]), "--key", str(cert[1])]
        r = subprocess.run([*argv, self.url(path)], capture_output=True, text=True, timeout=300)
        body, _, code = r.stdout.rpartition("\n")
        return int(code or 0), body or r.stderr

    def wait(self, timeout: float = 60) -> tuple[int, str]:
        assert self.proc is not None
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def message(self) -> dict[str, object]:
        return dict(json.loads(self.termination))


def wait_until(predicate: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.05)
