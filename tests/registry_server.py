"""Real registries for the tests (fixtures ca, plain, secure, token, disks; registered by
conftest.pytest_plugins): Debian's docker-registry (distribution v2.8) on loopback,
plain HTTP, TLS with a test CA plus htpasswd, or Bearer tokens from a small token server in
this process (distribution verifies the tokens' RS256 signatures against a certificate it is
given, as with any production token service). Images are pushed with skopeo
--preserve-digests."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.server
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from . import oci_images as oci
from .conftest import Images, free_port, run, wait_port
from .oci_images import Entry, Image, Layer, disk_layer

USER, PASSWORD = "tester", "s3cret"


@dataclasses.dataclass
class Registry:
    port: int
    storage: Path
    tls: bool = False
    auth: str | None = None  # None, "basic" or "token"
    ca_dir: Path | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ref(self, repo: str, tag: str = "v1") -> str:
        return f"docker://{self.host}/{repo}:{tag}"

    def push(self, layout: Path, tag: str, repo: str, *, all_images: bool = False) -> None:
        args = ["skopeo", "copy", "-q", "--preserve-digests"]
        if all_images:
            args.append("--all")
        if self.tls:
            args += ["--dest-cert-dir", str(self.ca_dir)]
        else:
            args.append("--dest-tls-verify=false")
        if self.auth:
            args += ["--dest-creds", f"{USER}:{PASSWORD}"]
        run(*args, f"oci:{layout}:{tag}", f"docker://{self.host}/{repo}:{tag}")

    def blob_file(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


def _config(port: int, storage: Path, extra: str) -> str:
    return (f"version: 0.1\nlog: {{level: warn, formatter: text}}\n"
            f"storage:\n  filesystem: {{rootdirectory: {storage}}}\n  delete: {{enabled: true}}\n"
            f"http:\n  addr: 127.0.0.1:{port}\n{extra}")


@contextmanager
def registry_server(work: Path, *, tls: bool = False, auth: str | None = None,
                    ca: object = None, s3_endpoint: str | None = None) -> Iterator[Registry]:
    if not shutil.which("docker-registry") or not shutil.which("skopeo"):
        pytest.skip("docker-registry and skopeo are not installed (run scripts/setup.sh)")
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    extra = ""
    ca_dir = None
    token: TokenServer | None = None
    if tls:
        import trustme

        assert isinstance(ca, trustme.CA)
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_and_cert_chain_pem.write_to_path(str(work / "server.pem"))
        cert.private_key_pem.write_to_path(str(work / "server.key"))
        ca_dir = work / "certs"
        ca_dir.mkdir()
        ca.cert_pem.write_to_path(str(ca_dir / "ca.crt"))  # skopeo's cert-dir takes *.crt
        extra += (f"  tls: {{certificate: {work / 'server.pem'}, key: {work / 'server.key'}}}\n")
    if auth == "basic":
        run("htpasswd", "-Bbc", work / "htpasswd", USER, PASSWORD)
        extra += f"auth:\n  htpasswd: {{realm: test-realm, path: {work / 'htpasswd'}}}\n"
    elif auth == "token":
        token = TokenServer(work)
        extra += (f"auth:\n  token: {{realm: 'http://127.0.0.1:{token.port}/token', "
                  f"service: test-registry, issuer: test-issuer, "
                  f"rootcertbundle: {token.cert_file}}}\n")
    storage = work / "storage"
    config = _config(port, storage, extra)
    if s3_endpoint:  # blobs in S3: the registry answers blob GETs with presigned redirects
        config = config.replace(
            f"  filesystem: {{rootdirectory: {storage}}}\n",
            f"  s3: {{accesskey: testing, secretkey: testing, region: us-east-1, bucket: registry,"
            f" regionendpoint: '{s3_endpoint}', secure: false, v4auth: true}}\n")
    (work / "config.yml").write_text(config)
    log = open(work / "registry.log", "wb")  # noqa: SIM115 - closed below
    # the AWS SDK inside the registry panics on AWS_CA_BUNDLE (set on some machines) with
    # its custom transport; moto is plain HTTP anyway
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    proc = subprocess.Popen(["docker-registry", "serve", str(work / "config.yml")],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_port(port)
        yield Registry(port, work / "storage", tls, auth, ca_dir)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        if token:
            token.close()


class TokenServer:
    """A Docker token service (distribution's token auth spec): checks Basic credentials at
    GET /token and issues an RS256 JWT granting the scope asked for; without credentials, a
    pull-only token for repositories under public/ (Docker Hub's and quay's anonymous pulls).
    `issued` counts tokens."""

    def __init__(self, work: Path) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token-signer")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .sign(self._key, hashes.SHA256()))
        self.cert_file = work / "token-signer.pem"
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        spki = self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
        # libtrust's key ID, which distribution matches against the "kid" header
        b32 = base64.b32encode(hashlib.sha256(spki).digest()[:30]).decode().rstrip("=")
        self._kid = ":".join(b32[i:i + 4] for i in range(0, 48, 4))
        self.issued = 0
        self.refused = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                q = parse_qs(urlsplit(self.path).query)
                want = f"Basic {base64.b64encode(f'{USER}:{PASSWORD}'.encode()).decode()}"
                scope = q.get("scope", [""])[0]
                given = self.headers.get("Authorization")
                if given is None and scope.startswith("repository:public/"):
                    scope = scope.rsplit(":", 1)[0] + ":pull"  # anonymous: pull public images
                elif given != want:
                    server.refused += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                if "repository:broken/" in scope:  # a misconfigured realm: an HTML page
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.end_headers()
                    self.wfile.write(b"<html><body>Sign in</body></html>")
                    return
                body = json.dumps({"token": server.token(scope)}).encode()
                server.issued += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def token(self, scope: str) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        if scope.startswith("repository:"):
            _, name, actions = scope.split(":")
            access.append({"type": "repository", "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": "test-issuer", "sub": USER, "aud": "test-registry", "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8), "access": access}
        header = {"typ": "JWT", "alg": "RS256", "kid": self._kid}

        def b64(obj: object) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

        signing = f"{b64(header)}.{b64(claims)}"
        sig = self._key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{base64.urlsafe_b64encode(sig).decode().rstrip('=')}"

    def close(self) -> None:
        self._httpd.shutdown()




# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def containerimage_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """native/cdi-containerimage-server.c built static, as the image ships it."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed (run scripts/setup.sh)")
    out = tmp_path_factory.mktemp("native") / "cdi-containerimage-server"
    run("gcc", "-O2", "-Wall", "-Werror", "-static", "-o", out,
        Path(__file__).resolve().parent.parent / "native" / "cdi-containerimage-server.c")
    return out


@pytest.fixture(scope="session")
def ca() -> object:
    import trustme

    return trustme.CA()


@pytest.fixture(scope="session")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with registry_server(tmp_path_factory.mktemp("registry-plain")) as reg:
        yield reg


@pytest.fixture(scope="session")
def secure(tmp_path_factory: pytest.TempPathFactory, ca: object) -> Iterator[Registry]:
    with registry_server(tmp_path_factory.mktemp("registry-tls"), tls=True, auth="basic",
                         ca=ca) as reg:
        yield reg


@pytest.fixture(scope="session")
def s3_backed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry keeping its blobs in S3 (moto_server), as quay.io and most hosted
    registries do with their object stores and CDNs: every blob GET is a 307 redirect."""
    import sys

    import boto3

    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("moto_server is not installed")
    port = free_port()
    moto = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 30)
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing"
                     ).create_bucket(Bucket="registry")
        with registry_server(tmp_path_factory.mktemp("registry-s3"), s3_endpoint=endpoint) as reg:
            yield reg
    finally:
        moto.terminate()
        moto.wait(10)


@pytest.fixture(scope="session")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with registry_server(tmp_path_factory.mktemp("registry-token"), auth="token") as reg:
        yield reg


@dataclasses.dataclass
class Disks:
    """The layout every test image lives in, and small raw disks A and B to tell apart."""

    layout: Path
    a: Path
    b: Path


def _small(path: Path, fill: bytes) -> Path:
    with open(path, "wb") as f:
        f.truncate(4 << 20)
        f.write(fill * 4096)
        f.seek(3 << 20)
        f.write(fill * 8192)
    return path


@pytest.fixture(scope="session")
def disks(images: Images, plain: Registry, tmp_path_factory: pytest.TempPathFactory) -> Disks:
    d = tmp_path_factory.mktemp("cdisks")
    a, b = _small(d / "a.img", b"A"), _small(d / "b.img", b"B")
    qcow = images["disk.qcow2"]
    specs: dict[str, Image | list[Image]] = {
        "raw": Image([disk_layer(images.raw, "disk.img")]),
        "qcow2": Image([disk_layer(qcow)]),
        "qcow2-gz": Image([disk_layer(qcow, compression="gzip")]),
        "raw-zst": Image([disk_layer(images.raw, "disk.img", compression="zstd")]),
        "raw-gz-file": Image([disk_layer(images["disk.raw.gz"])]),
        "multi": [Image([disk_layer(qcow)], "amd64"), Image([disk_layer(a)], "arm64")],
        "replaced": Image([disk_layer(a, "disk.img"), disk_layer(b, "disk.img")]),
        "whiteout": Image([disk_layer(a, "old.img"),
                           Layer([Entry("disk/.wh.old.img", source=b""),
                                  Entry("disk/new.img", source=b)], "gzip")]),
        "opaque": Image([Layer([Entry("disk", "dir"), Entry("disk/x.img", source=a),
                                Entry("disk/y.img", source=a)]),
                         Layer([Entry("disk/.wh..wh..opq", source=b""),
                                Entry("disk/z.img", source=b)])]),
        "two": Image([Layer([Entry("disk", "dir"), Entry("disk/a.img", source=a),
                             Entry("disk/b.img", source=b)])]),
        "lower-extra": Image([disk_layer(a, "extra.img"), disk_layer(b, "disk.img")]),
        "lower-extra-gz": Image([disk_layer(a, "extra.img"),
                                 disk_layer(b, "disk.img", compression="gzip")]),
        "nodisk": Image([Layer([Entry("etc", "dir"), Entry("etc/hostname", source=b"vm\n")])]),
        "subdir": Image([Layer([Entry("disk", "dir"), Entry("disk/sub", "dir"),
                                Entry("disk/sub/x.img", source=a)])]),
        "symlink": Image([Layer([Entry("disk", "dir"), Entry("disk/x.img", "symlink",
                                                             link="/etc/passwd")])]),
        "climb": Image([Layer([Entry("disk", "dir"), Entry("disk/../../x.img", source=a)])]),
        "labels": Image([disk_layer(a)], env=[
            "PATH=/usr/bin", "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.small",
            "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=fedora"]),
        "bootc": Image([disk_layer(a)], labels={"containers.bootc": "1"}),
        # layers of their own (blobs are shared by digest): tampering must touch no other test
        "sparse-gnu": Image([oci.sparse_layer(images.raw, d, "gnu")]),
        "sparse-posix": Image([oci.sparse_layer(images.raw, d, "posix")]),
        "tamper": Image([disk_layer(qcow, "tamper.qcow2")]),
        "tamper-gz": Image([disk_layer(images.raw, "tamper.img", compression="gzip")]),
    }
    layout = oci.build(d / "layout", specs).root
    for tag, spec in specs.items():
        plain.push(layout, tag, "cd", all_images=isinstance(spec, list))
    return Disks(layout, a, b)
