"""A real OpenStack image service for the tests: Debian's Keystone (Identity v3, fernet tokens,
SQLite) and Glance (its API with a filesystem store, SQLite, Keystone's auth_token middleware),
started per session on loopback, with nginx terminating TLS in front of both.

The catalog is Keystone's templated driver (a file) rather than rows created over the API:
Keystone 22 on SQLite answered 500 ("database is locked") to a second endpoint created right
after the first, and a file also lets the catalog name the TLS ports before anything runs.
It lists the image service three ways: public over https (nginx), internal over plain http,
and a public endpoint in a second region (RegionTwo) on a port where nothing listens."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ...conftest import free_port, nginx_process
from ..ovirt.servers import Pki, make_pki

ADMIN_PASSWORD = "keystone-admin-pw"

KEYSTONE_CONF = """\
[DEFAULT]
use_stderr = true
public_endpoint = https://127.0.0.1:{tls_port}/
[database]
connection = sqlite:///{w}/keystone.db
[token]
provider = fernet
[fernet_tokens]
key_repository = {w}/fernet-keys
[fernet_receipts]
key_repository = {w}/fernet-receipts
[credential]
key_repository = {w}/credential-keys
[catalog]
driver = templated
template_file = {w}/catalog.templates
"""

CATALOG = """\
catalog.RegionOne.identity.publicURL = https://127.0.0.1:{ks_tls}/v3
catalog.RegionOne.identity.internalURL = http://127.0.0.1:{ks}/v3
catalog.RegionOne.identity.adminURL = http://127.0.0.1:{ks}/v3
catalog.RegionOne.identity.name = Identity Service
catalog.RegionOne.image.publicURL = https://127.0.0.1:{gl_tls}
catalog.RegionOne.image.internalURL = http://127.0.0.1:{gl}
catalog.RegionOne.image.adminURL = http://127.0.0.1:{gl}/v2
catalog.RegionOne.image.name = Image Service
catalog.RegionTwo.image.publicURL = http://127.0.0.1:{dead}
catalog.RegionTwo.image.name = Image Service
"""

GLANCE_CONF = """\
[DEFAULT]
bind_host = 127.0.0.1
bind_port = {port}
workers = 0
use_stderr = true
enabled_backends = fs:file
[database]
connection = sqlite:///{w}/glance.db
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = {w}/images/
[os_glance_staging_store]
filesystem_store_datadir = {w}/staging/
[os_glance_tasks_store]
filesystem_store_datadir = {w}/tasks/
[keystone_authtoken]
www_authenticate_uri = http://127.0.0.1:{ks}
auth_url = http://127.0.0.1:{ks}
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = admin
username = admin
password = {admin_password}
[paste_deploy]
flavor = keystone
config_file = /etc/glance/glance-api-paste.ini
[oslo_policy]
enforce_new_defaults = false
"""

TLS_SERVERS = """
    server {{
        listen 127.0.0.1:{ks_tls} ssl;
        ssl_certificate {pki}/server.pem;
        ssl_certificate_key {pki}/server.key;
        location / {{ proxy_pass http://127.0.0.1:{ks}; proxy_set_header Host $host:$server_port; }}
    }}
    server {{
        listen 127.0.0.1:{gl_tls} ssl;
        ssl_certificate {pki}/server.pem;
        ssl_certificate_key {pki}/server.key;
        client_max_body_size 0;
        proxy_request_buffering off;
        location / {{ proxy_pass http://127.0.0.1:{gl}; proxy_set_header Host $host:$server_port; }}
    }}
"""


@dataclasses.dataclass
class OpenStack:
    keystone: str  # http://127.0.0.1:PORT/v3
    keystone_tls: str  # https://127.0.0.1:PORT (nginx), for version discovery
    glance: str  # http://127.0.0.1:PORT
    store: Path  # the filesystem store: one file per image, named by its id
    pki: Pki
    project_id: str
    user_id: str

    def token(self) -> str:
        r = httpx.post(f"{self.keystone}/auth/tokens", json={"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "admin", "domain": {"id": "default"}, "password": ADMIN_PASSWORD}}},
            "scope": {"project": {"id": self.project_id}}}}, timeout=30)
        r.raise_for_status()
        return r.headers["X-Subject-Token"]

    def _call(self, method: str, url: str, **kw: Any) -> httpx.Response:
        r = httpx.request(method, url, headers={"X-Auth-Token": self.token(),
                                                **kw.pop("headers", {})}, timeout=120, **kw)
        r.raise_for_status()
        return r

    def create_image(self, name: str, disk_format: str = "raw") -> str:
        """An image record with no data (status queued)."""
        r = self._call("POST", f"{self.glance}/v2/images", json={
            "name": name, "disk_format": disk_format, "container_format": "bare"})
        return str(r.json()["id"])

    def upload(self, path: Path, disk_format: str = "raw") -> str:
        image_id = self.create_image(path.name, disk_format)
        with open(path, "rb") as f:
            self._call("PUT", f"{self.glance}/v2/images/{image_id}/file", content=f.read(),
                       headers={"Content-Type": "application/octet-stream"})
        return image_id

    def record(self, image_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"{self.glance}/v2/images/{image_id}").json())

    def deactivate(self, image_id: str) -> None:
        self._call("POST", f"{self.glance}/v2/images/{image_id}/actions/deactivate")

    def app_credential(self, name: str) -> tuple[str, str]:
        r = self._call("POST", f"{self.keystone}/users/{self.user_id}/application_credentials",
                       json={"application_credential": {"name": name}})
        cred = r.json()["application_credential"]
        return str(cred["id"]), str(cred["secret"])

    def secret(self, **overrides: str) -> dict[str, str]:
        """The keys of CDI's OpenStack secret for the admin user (password auth), as the
        populator's environment holds them; the https endpoints trust the tests' CA."""
        keys = {"username": "admin", "password": ADMIN_PASSWORD, "projectName": "admin",
                "userDomainName": "Default", "projectDomainName": "Default",
                "regionName": "RegionOne", "cacert": self.pki.ca_file.read_text()}
        keys.update(overrides)
        return {k: v for k, v in keys.items() if v}


def _run(*argv: str | Path) -> None:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} {argv[1:3]} failed: {done.stderr[-2000:]}")


def _wait_http(url: str, log: Path, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def openstack_world(work: Path) -> Iterator[OpenStack]:
    if not (shutil.which("keystone-wsgi-public") and shutil.which("glance-api")):
        pytest.skip("Keystone and Glance are not installed (scripts/setup.sh installs them)")
    ks, ks_tls, gl, gl_tls, dead = (free_port() for _ in range(5))
    pki = make_pki(work / "pki")
    k, g = work / "keystone", work / "glance"
    k.mkdir()
    g.mkdir()
    (k / "keystone.conf").write_text(KEYSTONE_CONF.format(w=k, tls_port=ks_tls))
    (k / "catalog.templates").write_text(CATALOG.format(ks=ks, ks_tls=ks_tls, gl=gl,
                                                        gl_tls=gl_tls, dead=dead))
    manage = ["keystone-manage", "--config-file", k / "keystone.conf"]
    _run(*manage, "db_sync")
    for what in ("fernet_setup", "credential_setup"):
        _run(*manage, what, "--keystone-user", "root", "--keystone-group", "root")
    _run(*manage, "bootstrap", "--bootstrap-password", ADMIN_PASSWORD)
    (g / "glance-api.conf").write_text(GLANCE_CONF.format(w=g, port=gl, ks=ks,
                                                          admin_password=ADMIN_PASSWORD))
    _run("glance-manage", "--config-file", g / "glance-api.conf", "db_sync")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(k / "log", "wb") as log:
            procs.append(subprocess.Popen(
                ["keystone-wsgi-public", "--host", "127.0.0.1", "--port", str(ks)],
                stdout=log, stderr=subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin", "OS_KEYSTONE_CONFIG_FILES": str(k / "keystone.conf")}))
        with open(g / "log", "wb") as log:
            procs.append(subprocess.Popen(["glance-api", "--config-file", str(g / "glance-api.conf")],
                                          stdout=log, stderr=subprocess.STDOUT,
                                          env={"PATH": "/usr/bin:/bin"}))
        _wait_http(f"http://127.0.0.1:{ks}/v3", k / "log", "Keystone")
        _wait_http(f"http://127.0.0.1:{gl}/", g / "log", "Glance")
        (work / "nginx").mkdir()
        with nginx_process(work / "nginx", TLS_SERVERS.format(
                pki=pki.dir, ks=ks, ks_tls=ks_tls, gl=gl, gl_tls=gl_tls), ks_tls, gl_tls):
            r = httpx.post(f"http://127.0.0.1:{ks}/v3/auth/tokens", timeout=30, json={"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": "admin", "domain": {"id": "default"}, "password": ADMIN_PASSWORD}}},
                "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
            r.raise_for_status()
            token = r.json()["token"]
            yield OpenStack(f"http://127.0.0.1:{ks}/v3", f"https://127.0.0.1:{ks_tls}",
                            f"http://127.0.0.1:{gl}", g / "images", pki,
                            token["project"]["id"], token["user"]["id"])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
