"""Shared fixtures: images generated at test time from a small seed, a real nginx started by the
tests (range, no-range, basic auth, TLS, rate-limited locations), and helpers to run the CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# fixtures shared by several suites: the registry, and the oVirt world (imageio + engine)
pytest_plugins = ["tests.registry_server", "tests.sources.ovirt.fixtures",
                  "tests.sources.vmware.fixtures", "tests.sources.openstack.fixtures"]

ROOT = Path(__file__).resolve().parent.parent
SEED_SIZE = 24 << 20  # virtual size of the seed disk


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def run(*argv: str | Path, **kw: object) -> subprocess.CompletedProcess[bytes]:
    r: subprocess.CompletedProcess[bytes] = subprocess.run(  # type: ignore[call-overload]
        [str(a) for a in argv], check=False, capture_output=True, **kw)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} failed ({r.returncode}): "
                             f"{r.stderr.decode(errors='replace')[-1000:]}")
    return r


def run_to(out: Path, *argv: str | Path) -> None:
    """Run a command with its stdout written to `out`."""
    with open(out, "wb") as f:
        subprocess.run([str(a) for a in argv], check=True, stdout=f, stderr=subprocess.PIPE)


def make_seed(path: Path, size: int = SEED_SIZE, seed: int = 7) -> Path:
    """A raw disk with a partition-table-like first sector, text, random and repetitive data
    at scattered offsets, and long zero runs (holes): what real images look like."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(b"\xeb\x63\x90" + bytes(507) + b"\x55\xaa")  # a boot-sector signature
        for i in range(12):
            off = rnd.randrange(1 << 20, size - (1 << 20)) & ~4095
            f.seek(off)
            kind = i % 3
            n = rnd.randrange(64 << 10, 768 << 10)
            if kind == 0:
                f.write(rnd.randbytes(n))
            elif kind == 1:
                f.write((b"importer test data %d\n" % i) * (n // 22))
            else:
                f.write(bytes(rnd.randrange(1, 255) for _ in range(256)) * (n // 256))
        f.seek(size - 4096)
        f.write(b"END!" * 1024)  # data in the very last block
    return path


@dataclasses.dataclass
class Images:
    dir: Path
    raw: Path

    def __getitem__(self, name: str) -> Path:
        return self.dir / name


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    d = tmp_path_factory.mktemp("images")
    raw = make_seed(d / "disk.raw")
    q = ["qemu-img", "convert", "-f", "raw", str(raw)]
    run(*q, "-O", "qcow2", d / "disk.qcow2")
    run(*q, "-O", "qcow2", "-o", "compat=0.10", d / "disk-v2.qcow2")
    run(*q, "-O", "qcow2", "-c", "-o", "compression_type=zstd", d / "disk-zstd.qcow2")
    run(*q, "-O", "vmdk", "-o", "subformat=streamOptimized", d / "disk-so.vmdk")
    run(*q, "-O", "vmdk", "-o", "subformat=monolithicSparse", d / "disk-ms.vmdk")
    run(*q, "-O", "vdi", d / "disk.vdi")
    run(*q, "-O", "vpc", "-o", "force_size=on", d / "disk-dynamic.vhd")
    run(*q, "-O", "vpc", "-o", "subformat=fixed,force_size=on", d / "disk-fixed.vhd")
    run(*q, "-O", "vhdx", d / "disk.vhdx")
    # compressed variants: gzip multi-member, xz multi-block and single-block, zstd multi-frame
    data = raw.read_bytes()
    half = len(data) // 2
    (d / "disk.raw.gz").write_bytes(gzip.compress(data[:half], 1) + gzip.compress(data[half:], 1))
    run_to(d / "disk.raw.xz", "xz", "-T2", "-1", "--block-size=4MiB", "-c", raw)
    run_to(d / "disk-1block.raw.xz", "xz", "-1", "-c", raw)
    with open(d / "disk.raw.zst", "wb") as out:
        for part in (data[:half], data[half:]):
            out.write(subprocess.run(["zstd", "-1", "-c", "-q"], input=part, check=True,
                                     capture_output=True).stdout)
    qcow = (d / "disk.qcow2").read_bytes()
    (d / "disk.qcow2.gz").write_bytes(gzip.compress(qcow, 1))
    run_to(d / "disk.qcow2.xz", "xz", "-T2", "-1", "--block-size=1MiB", "-c", d / "disk.qcow2")
    run("zstd", "-q", "-1", "-k", d / "disk.qcow2", "-o", d / "disk.qcow2.zst")
    run_to(d / "disk.raw.gz.xz", "xz", "-1", "-c", d / "disk.raw.gz")  # nested
    # an ISO 9660 look-alike: raw data with the volume descriptor magic at 0x8001
    iso = bytearray(1 << 20)
    iso[0x8000:0x8006] = b"\x01CD001"
    (d / "disk.iso").write_bytes(bytes(iso))
    (d / "tiny.raw").write_bytes(b"tiny image!" * 9)  # 99 bytes
    (d / "page.html").write_bytes(b"<!DOCTYPE html><html><body>Session expired</body></html>\n")
    return Images(d, raw)


NGINX_CONF = """
{user}
worker_processes 1;
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {w}/access.log;
    client_body_temp_path {w}/tmp/body; proxy_temp_path {w}/tmp/proxy;
    fastcgi_temp_path {w}/tmp/fastcgi; uwsgi_temp_path {w}/tmp/uwsgi; scgi_temp_path {w}/tmp/scgi;
    sendfile on;
    default_type application/octet-stream;
    types {{ text/html html; }}
{servers}
}}
"""


@contextlib.contextmanager
def nginx_process(work: Path, servers: str, *ports: int) -> Iterator[None]:
    """A real nginx with the given server blocks, its files under `work`, running until the
    block ends; `ports` are waited for."""
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (run scripts/setup.sh)")
    (work / "tmp").mkdir(exist_ok=True)
    # as root nginx would drop its workers to nobody, who cannot read pytest's 0700 temp dirs
    user = "user root root;" if os.geteuid() == 0 else ""
    (work / "nginx.conf").write_text(NGINX_CONF.format(w=work, user=user, servers=servers))
    conf = ["-c", str(work / "nginx.conf"), "-p", str(work), "-e", str(work / "error.log")]
    run("nginx", *conf)
    try:
        for port in ports:
            wait_port(port)
        yield
    finally:
        subprocess.run(["nginx", *conf, "-s", "stop"], check=False, capture_output=True)


NGINX_SERVERS = """
    server {{
        listen 127.0.0.1:{port};
        root {www};
        location /norange/ {{ alias {www}/; max_ranges 0; }}
        location /private/ {{ alias {www}/; auth_basic "disks"; auth_basic_user_file {w}/htpasswd; }}
        location /slow/ {{ alias {www}/; limit_rate 4m; }}
        location /crawl/ {{ alias {www}/; limit_rate 256k; }}
        location /redirect/ {{ rewrite ^/redirect/(.*)$ /$1 redirect; }}
        location /gcs-bucket/ {{ alias {www}/; }}  # CDI's functional tests serve GCS this way
    }}
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {w}/server.pem;
        ssl_certificate_key {w}/server.key;
        root {www};
    }}
"""


@dataclasses.dataclass
class Nginx:
    port: int
    tls_port: int
    ca_dir: Path
    www: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def tls_url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.tls_port}/{path}"


@pytest.fixture(scope="session")
def nginx(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    import trustme

    w = tmp_path_factory.mktemp("nginx")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(w / "server.pem"))
    cert.private_key_pem.write_to_path(str(w / "server.key"))
    ca_dir = w / "ca"
    ca_dir.mkdir()
    ca.cert_pem.write_to_path(str(ca_dir / "test-ca.pem"))
    (ca_dir / "README").write_text("not a certificate\n")
    run("htpasswd", "-Bbc", w / "htpasswd", "tester", "s3cret")
    port, tls_port = free_port(), free_port()
    servers = NGINX_SERVERS.format(w=w, www=images.dir, port=port, tls_port=tls_port)
    with nginx_process(w, servers, port, tls_port):
        yield Nginx(port, tls_port, ca_dir, images.dir)


@pytest.fixture(scope="session")
def httpserver_listen_address() -> tuple[str, int]:
    return ("127.0.0.1", 0)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proxy and TLS variables of the machine must not leak into tests (httpx's idiom)."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name in ("SSL_CERT_FILE", "SSL_CERT_DIR",
                                                         "IMPORTER_PASSWORD"):
            monkeypatch.delenv(name, raising=False)
    # an in-process pod or populator run switches the messages to the pod's words for the
    # whole process: each test starts with the CLI's
    from importer import advice

    advice.use("cli")


def importer_cli(*args: str | Path, timeout: float = 300, **kw: object
                 ) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a child process: exit codes, stdout and stderr as a user
    sees them."""
    return subprocess.run([sys.executable, "-m", "importer", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, **kw)  # type: ignore[call-overload,no-any-return]


CDI_PROGRESS = r'(kubevirt_cdi_import_progress_total)\{ownerUID\="%s"\} (\d{1,3}\.?\d*)'


def scrape_progress(proc: subprocess.Popen[str], port: int, owner_uid: str,
                    timeout: float = 120, metric: str = "kubevirt_cdi_import_progress_total"
                    ) -> tuple[list[float], str]:
    """Scrape the pod's metrics endpoint as CDI's controller does (TLS unverified, CDI's
    regex, on `metric`) until the process exits; the values seen, and the last whole body."""
    import re

    import httpx

    values: list[float] = []
    body = ""
    with httpx.Client(verify=False, timeout=2) as client:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                text = client.get(f"https://127.0.0.1:{port}/metrics").text
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            m = re.search(CDI_PROGRESS.replace("kubevirt_cdi_import_progress_total", metric)
                          % owner_uid, text)
            assert m, text
            values.append(float(m.group(2)))
            body = text
            time.sleep(0.2)
    return values, body


@contextlib.contextmanager
def loop_device(backing: Path, size: int, fill: bytes) -> Iterator[Path]:
    """A loop device over a new file of `size` bytes of `fill` (root only: skips otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    if subprocess.run(["losetup", "-f"], capture_output=True).returncode != 0:
        pytest.skip("no free loop device (losetup -f failed)")
    with open(backing, "wb") as f:
        chunk = fill * (1 << 20)
        for _ in range(size >> 20):
            f.write(chunk)
    dev = subprocess.run(["losetup", "-f", "--show", str(backing)], check=True,
                         capture_output=True, text=True).stdout.strip()
    try:
        yield Path(dev)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


class DroppingProxy:
    """A TCP proxy that cuts the server's answer after `cut` bytes on the connections it is
    told to (by number), to test resume against a real server; optionally slow."""

    def __init__(self, target_port: int, cut: int, victims: set[int], *,
                 rate: int | None = None, rate_up: int | None = None) -> None:
        """`rate`: bytes per second each connection's answers are held to (a slow server);
        `rate_up`: the same for what clients send (a slow uplink)."""
        self.rate = rate
        self.rate_up = rate_up
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.target = target_port
        self.cut = cut
        self.victims = victims
        self.count = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            n = self.count
            self.count += 1
            server = socket.create_connection(("127.0.0.1", self.target))
            limit = self.cut if n in self.victims else None
            threading.Thread(target=self._pipe, args=(client, server, None, self.rate_up),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, limit, self.rate),
                             daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket, limit: int | None,
              rate: int | None = None) -> None:
        sent = 0
        started = time.monotonic()
        try:
            while data := a.recv(16384 if rate else 65536):
                if limit is not None and sent + len(data) > limit:
                    b.sendall(data[: limit - sent])
                    break
                b.sendall(data)
                sent += len(data)
                if rate:
                    time.sleep(max(0.0, started + sent / rate - time.monotonic()))
        except OSError:
            pass
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.sock.close()


def same_disk(a: Path, b: Path) -> bool:
    r = subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", str(a), str(b)],
                       capture_output=True, check=False)
    return r.returncode == 0
