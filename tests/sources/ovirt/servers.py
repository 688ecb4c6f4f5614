"""A real ovirt-imageio daemon, and a fake oVirt engine that drives it.

The daemon is the PyPI `ovirt-imageio` (the one oVirt hosts run), with TLS and its control
socket; images are served through tickets, raw guest data by qemu-nbd (as oVirt does), qcow2
volumes as their bytes (file backend). The engine is written here (no engine can run on this
machine): the REST calls and XML shapes the SDKs use, with knobs for the
cases the tests need (a locked disk, slow initialization, expired tokens) and a log of every
call, so tests can assert that a transfer was finalized or cancelled exactly once.
`test_fake_engine.py` drives it with the real ovirtsdk4, so it speaks what the SDK speaks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import free_port, wait_port


@dataclasses.dataclass
class Pki:
    dir: Path
    ca_dir: Path  # holds the CA only, as a cert config map would
    ca_file: Path
    server_pem: Path
    server_key: Path


def make_pki(work: Path) -> Pki:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    work.mkdir(parents=True, exist_ok=True)
    cert.private_key_and_cert_chain_pem.write_to_path(str(work / "server.pem"))
    cert.private_key_pem.write_to_path(str(work / "server.key"))
    ca_dir = work / "ca"
    ca_dir.mkdir(exist_ok=True)
    ca.cert_pem.write_to_path(str(ca_dir / "engine-ca.pem"))
    return Pki(work, ca_dir, ca_dir / "engine-ca.pem", work / "server.pem", work / "server.key")


DAEMON_CONF = """\
[daemon]
drop_privileges = false
systemd_enable = false
run_dir = {run}
[tls]
enable = true
key_file = {key}
cert_file = {cert}
ca_file = {ca}
[remote]
host = 127.0.0.1
port = {port}
[local]
enable = false
[control]
transport = unix
socket = {run}/sock
[handlers]
keys = stderr
[logger_root]
level = INFO
handlers = stderr
"""


class ImageioDaemon:
    def __init__(self, work: Path, pki: Pki) -> None:
        exe = Path(sys.executable).with_name("ovirt-imageio")
        if not exe.exists():
            import pytest

            pytest.skip("ovirt-imageio is not installed (run scripts/setup.sh)")
        self.run_dir = work / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        conf = work / "conf" / "conf.d"
        conf.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (conf / "daemon.conf").write_text(DAEMON_CONF.format(
            run=self.run_dir, key=pki.server_key, cert=pki.server_pem, ca=pki.ca_file,
            port=self.port))
        self.log = work / "daemon.log"
        self.proc = subprocess.Popen([str(exe), "-c", str(work / "conf")],
                                     stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        wait_port(self.port, timeout=20)
        self.control = self.run_dir / "sock"
        self._nbd: dict[tuple[str, str], tuple[subprocess.Popen[bytes], Path]] = {}

    def url(self, ticket: str) -> str:
        return f"https://127.0.0.1:{self.port}/images/{ticket}"

    def control_call(self, method: str, path: str, body: dict[str, object] | None = None
                     ) -> tuple[int, bytes]:
        sock_path = str(self.control)

        class Conn(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(sock_path)

        c = Conn("localhost", timeout=10)
        try:
            c.request(method, path, body=json.dumps(body) if body is not None else None)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def nbd_socket(self, image: Path, fmt: str) -> Path:
        """qemu-nbd serving `image` as guest data (read-only, shared), started once."""
        key = (str(image), fmt)
        if key not in self._nbd:
            sock = self.run_dir / f"nbd-{len(self._nbd)}.sock"
            proc = subprocess.Popen(["qemu-nbd", "--read-only", "--persistent", "--shared=16",
                                     f"--format={fmt}", f"--socket={sock}", str(image)])
            for _ in range(200):
                if sock.exists():
                    break
                threading.Event().wait(0.025)
            self._nbd[key] = (proc, sock)
        return self._nbd[key][1]

    def stop(self) -> None:
        for proc, _ in self._nbd.values():
            proc.terminate()
        self.proc.terminate()
        for proc, _ in self._nbd.values():
            proc.wait(timeout=10)
        self.proc.wait(timeout=10)


# ---------------------------------------------------------------------------------- engine


@dataclasses.dataclass
class Volume:
    id: str
    path: Path
    fmt: str  # raw or qcow2 (of the file itself)


@dataclasses.dataclass
class Disk:
    id: str
    size: int  # provisioned (virtual) size
    volumes: list[Volume]  # base first; the last is the active volume
    status: str = "ok"
    storage_domain: str = "sd-1"
    name: str = "vm-disk"

    @property
    def active(self) -> Volume:
        return self.volumes[-1]


@dataclasses.dataclass
class Transfer:
    id: str
    ticket: str
    disk: str
    snapshot: str | None
    fmt: str
    phase: str = "initializing"
    polls: int = 0
    actions: list[str] = dataclasses.field(default_factory=list)


class FakeEngine:
    USER, PASSWORD = "admin@internal", "secret"

    def __init__(self, daemon: ImageioDaemon, pki: Pki) -> None:
        self.daemon = daemon
        self.disks: dict[str, Disk] = {}
        self.transfers: dict[str, Transfer] = {}
        self.calls: list[str] = []
        self.lock = threading.Lock()
        # knobs
        self.locked_posts = 0  # answer this many transfer POSTs with "Disk is locked"
        self.init_polls = 2  # GETs of a new transfer before it is transferring
        self.ticket_timeout = 300  # seconds a ticket lives without a completed operation
        self.expire_tokens = 0  # this many tokens are answered 401 (expired) at their first use
        self.transfer_base: str | None = None  # serve transfer URLs from elsewhere (a proxy)
        self.final_phase: str | None = None  # a transfer that goes to this phase by itself
        self._tokens: set[str] = set()
        self._expired_once: set[str] = set()
        engine = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                engine._handle(self, "GET")

            def do_POST(self) -> None:
                engine._handle(self, "POST")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(pki.server_pem), str(pki.server_key))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}/ovirt-engine/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        for t in list(self.transfers.values()):
            self.daemon.control_call("DELETE", f"/tickets/{t.ticket}")
        self.server.shutdown()
        self.server.server_close()

    def add_disk(self, disk: Disk) -> Disk:
        self.disks[disk.id] = disk
        return disk

    def actions(self, action: str) -> list[str]:
        """Transfer ids that received `action` (finalize, cancel, extend), once per call."""
        return [t.id for t in self.transfers.values() for a in t.actions if a == action]

    # ------------------------------------------------------------------ dispatch

    def _handle(self, h: http.server.BaseHTTPRequestHandler, method: str) -> None:
        path = urllib.parse.urlparse(h.path).path
        n = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(n).decode() if n else ""
        with self.lock:
            self.calls.append(f"{method} {path}")
        try:
            code, text, ctype = self._route(h, method, path, body)
        except KeyError:
            code, text, ctype = 404, "<fault><reason>Not Found</reason></fault>", "application/xml"
        data = text.encode()
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _route(self, h: http.server.BaseHTTPRequestHandler, method: str, path: str, body: str
               ) -> tuple[int, str, str]:
        xml = "application/xml"
        if path == "/ovirt-engine/sso/oauth/token" and method == "POST":
            form = urllib.parse.parse_qs(body)
            if form.get("username") == [self.USER] and form.get("password") == [self.PASSWORD]:
                token = "tok-" + uuid.uuid4().hex
                self._tokens.add(token)
                return 200, json.dumps({"access_token": token, "token_type": "bearer",
                                        "exp": "9999999999"}), "application/json"
            return 200, json.dumps({"error": "access_denied",
                                    "error_description": "Cannot authenticate user"}), \
                "application/json"
        if path == "/ovirt-engine/services/sso-logout":
            return 200, "{}", "application/json"
        token = h.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self._tokens:
            return 401, "<fault><reason>Unauthorized</reason></fault>", xml
        if self.expire_tokens > 0 and token not in self._expired_once:
            self.expire_tokens -= 1
            self._expired_once.add(token)
            self._tokens.discard(token)
            return 401, "<fault><reason>Unauthorized</reason></fault>", xml
        parts = path.split("/")[3:]  # after /ovirt-engine/api
        if method == "GET" and parts == []:
            return 200, "<api><product_info><name>fake engine</name></product_info></api>", xml
        if method == "GET" and len(parts) == 2 and parts[0] == "disks":
            return 200, self._disk_xml(self.disks[parts[1]]), xml
        if method == "GET" and parts == ["hosts", "host-1"]:
            return 200, '<host id="host-1"><name>host-1</name><status>up</status></host>', xml
        if method == "GET" and len(parts) == 2 and parts[0] == "storagedomains":
            return 200, (f'<storage_domain id="{parts[1]}"><name>{parts[1]}</name>'
                         "<type>data</type></storage_domain>"), xml
        if method == "GET" and len(parts) == 3 and parts[0] == "storagedomains" and \
                parts[2] == "disksnapshots":
            return 200, self._snapshots_xml(parts[1]), xml
        if method == "POST" and parts == ["imagetransfers"]:
            return self._create(body)
        if len(parts) >= 2 and parts[0] == "imagetransfers":
            t = self.transfers[parts[1]]
            if method == "GET" and len(parts) == 2:
                return self._poll(t)
            if method == "POST" and len(parts) == 3:
                return self._act(t, parts[2])
        raise KeyError(path)

    # ------------------------------------------------------------------ resources

    def _disk_xml(self, d: Disk) -> str:
        total = sum(v.path.stat().st_size for v in d.volumes)
        return (f'<disk href="/ovirt-engine/api/disks/{d.id}" id="{d.id}"><name>{d.name}</name>'
                f"<provisioned_size>{d.size}</provisioned_size>"
                f"<actual_size>{d.active.path.stat().st_size}</actual_size>"
                f"<total_size>{total}</total_size>"
                f"<format>{'cow' if d.active.fmt == 'qcow2' else 'raw'}</format>"
                f"<image_id>{d.active.id}</image_id><status>{d.status}</status>"
                f"<content_type>data</content_type><sparse>true</sparse>"
                f'<storage_domains><storage_domain href="/ovirt-engine/api/storagedomains/'
                f'{d.storage_domain}" id="{d.storage_domain}"/></storage_domains></disk>')

    def _snapshots_xml(self, sd: str) -> str:
        items = []
        for d in self.disks.values():
            if d.storage_domain != sd:
                continue
            for v in d.volumes[:-1]:  # the snapshots: every volume but the active one
                items.append(
                    f'<disk_snapshot id="{v.id}"><actual_size>{v.path.stat().st_size}'
                    f"</actual_size><format>{'cow' if v.fmt == 'qcow2' else 'raw'}</format>"
                    f'<disk id="{d.id}"/></disk_snapshot>')
        return f"<disk_snapshots>{''.join(items)}</disk_snapshots>"

    def _volume(self, snapshot: str) -> tuple[Disk, Volume]:
        for d in self.disks.values():
            for v in d.volumes:
                if v.id == snapshot:
                    return d, v
        raise KeyError(snapshot)

    def _create(self, body: str) -> tuple[int, str, str]:
        x = ET.fromstring(body)
        fmt = x.findtext("format") or "cow"
        assert x.findtext("direction") == "download", body
        if x.find("snapshot") is not None:
            snapshot: str | None = x.find("snapshot").get("id")  # type: ignore[union-attr]
            disk, volume = self._volume(snapshot or "")
        else:  # <disk id> (CDI, the SDK's examples) or <image id> (ovirt-img)
            snapshot = None
            subject = x.find("disk") if x.find("disk") is not None else x.find("image")
            disk = self.disks[subject.get("id")]  # type: ignore[union-attr,index]
            volume = disk.active
        if self.locked_posts > 0 or disk.status == "locked":
            self.locked_posts -= 1
            return 409, ("<fault><reason>Operation Failed</reason><detail>[Cannot transfer "
                         "Virtual Disk: Disk is locked. Please try again later.]</detail></fault>"), \
                "application/xml"
        if fmt == "raw":
            nbd = self.daemon.nbd_socket(volume.path, volume.fmt)
            url, size = f"nbd:unix:{nbd}", disk.size
        else:
            url, size = f"file://{volume.path}", volume.path.stat().st_size
        ticket = uuid.uuid4().hex
        status, text = self.daemon.control_call("PUT", f"/tickets/{ticket}", {
            "uuid": ticket, "url": url, "size": size, "timeout": self.ticket_timeout,
            "inactivity_timeout": 60, "ops": ["read"], "sparse": True, "transfer_id": ticket})
        assert status == 200, text
        t = Transfer(uuid.uuid4().hex, ticket, disk.id, snapshot, fmt)
        with self.lock:
            self.transfers[t.id] = t
        return 201, self._transfer_xml(t), "application/xml"

    def _transfer_xml(self, t: Transfer) -> str:
        base = self.transfer_base or f"https://127.0.0.1:{self.daemon.port}"
        url = f"{base}/images/{t.ticket}"
        return (f'<image_transfer href="/ovirt-engine/api/imagetransfers/{t.id}" id="{t.id}">'
                f"<phase>{t.phase}</phase><direction>download</direction><format>{t.fmt}"
                f"</format><transfer_url>{url}</transfer_url><proxy_url>{url}</proxy_url>"
                f'<disk id="{t.disk}"/><host href="/ovirt-engine/api/hosts/host-1" id="host-1"/>'
                "</image_transfer>")

    def _poll(self, t: Transfer) -> tuple[int, str, str]:
        if t.phase == "gone":
            return 404, "<fault><reason>Not Found</reason></fault>", "application/xml"
        t.polls += 1
        if t.phase == "initializing" and t.polls >= self.init_polls:
            t.phase = self.final_phase or "transferring"
        text = self._transfer_xml(t)
        if t.phase in ("finished_success", "finished_failure"):
            t.phase = "gone"  # read once more, then 404 as the real engine does
        return 200, text, "application/xml"

    def _act(self, t: Transfer, action: str) -> tuple[int, str, str]:
        with self.lock:
            t.actions.append(action)
        if action == "extend":
            self.daemon.control_call("PATCH", f"/tickets/{t.ticket}",
                                     {"timeout": self.ticket_timeout})
        elif action in ("finalize", "cancel"):
            self.daemon.control_call("DELETE", f"/tickets/{t.ticket}")
            t.phase = "finished_success" if action == "finalize" else "finished_failure"
        else:
            raise KeyError(action)
        return 200, "<action><status>complete</status></action>", "application/xml"


# ---------------------------------------------------------------------------------- images


def qemu(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def qemu_io(image: Path, fmt: str, *cmds: str) -> None:
    argv = ["qemu-io", "-f", fmt]
    for c in cmds:
        argv += ["-c", c]
    subprocess.run([*argv, str(image)], check=True, capture_output=True)


def new_id() -> str:
    return str(uuid.uuid4())


@dataclasses.dataclass
class WarmChain:
    """A disk with snapshots as oVirt keeps them: a raw base volume, then one qcow2 volume per
    snapshot, each backed by the one before (its backing file name is that volume's id)."""

    disk: Disk
    snapshots: list[str]  # checkpoint ids in order: volumes 1..n (the last is the active one)
    expected: list[Path]  # the guest disk at each checkpoint, as raw

    @property
    def dir(self) -> Path:
        return self.disk.volumes[0].path.parent


def make_cold_disk(work: Path, size: int = 64 << 20) -> tuple[Disk, Path]:
    """A raw disk with data, holes and a stretch of explicit zeros, served through NBD."""
    work.mkdir(parents=True, exist_ok=True)
    vol = Volume(new_id(), work / "cold.raw", "raw")
    qemu("create", "-f", "raw", vol.path, str(size))
    qemu_io(vol.path, "raw", "write -P 0xab 1M 3M", "write -P 0x5c 20M 1M",
            "write -P 0 30M 2M", f"write -P 0x11 {size - (1 << 20)} 1M")
    with open(vol.path, "r+b") as f:  # some bytes that are not a pattern
        f.seek(8 << 20)
        f.write(os.urandom(2 << 20))
    return Disk(new_id(), size, [vol], name="cold"), vol.path


def make_warm_chain(work: Path, size: int = 64 << 20) -> WarmChain:
    work.mkdir(parents=True, exist_ok=True)
    base = Volume(new_id(), work, "raw")
    base.path = work / base.id
    qemu("create", "-f", "raw", base.path, str(size))
    qemu_io(base.path, "raw", "write -P 0xa1 0 4M", "write -P 0xa2 16M 4M", "write -P 0xa3 40M 8M")
    volumes = [base]
    writes = [
        # stage 1's snapshot: new data, data over base data, zeros over base data
        ["write -P 0xb1 2M 1M", "write -P 0xb2 24M 2M", "write -z 41M 1M"],
        # stage 2: zeros with unmap, data at the end, data inside a region zeroed before
        ["write -z -u 16M 2M", f"write -P 0xc1 {size - (2 << 20)} 1M", "write -P 0xc2 41M 64k"],
        # stage 3: compressed cluster, a partial write, zeros over stage 2's data
        ["write -c -P 0xd1 0 64k", "write -P 0xd2 30M 100k",
         f"write -z {size - (2 << 20)} 512k"],
    ]
    expected = []
    for cmds in writes:
        vid = new_id()
        path = work / vid
        prev = volumes[-1]
        qemu("create", "-f", "qcow2", "-b", prev.id, "-F", prev.fmt, path)  # relative name
        qemu_io(path, "qcow2", *cmds)
        vol = Volume(vid, path, "qcow2")
        volumes.append(vol)
        out = work / f"expected-{len(expected) + 1}.raw"
        qemu("convert", "-f", "qcow2", "-O", "raw", path, out)
        expected.append(out)
    disk = Disk(new_id(), size, volumes, name="warm")
    return WarmChain(disk, [v.id for v in volumes[1:]], expected)


@contextlib.contextmanager
def ovirt_world(work: Path) -> Iterator[tuple[ImageioDaemon, FakeEngine, Pki]]:
    pki = make_pki(work / "pki")
    daemon = ImageioDaemon(work / "imageio", pki)
    engine = FakeEngine(daemon, pki)
    try:
        yield daemon, engine, pki
    finally:
        engine.close()
        daemon.stop()
