"""S3 against OpenStack Swift with s3api (Debian's swift packages, started by the tests): the
server that really checks SigV4 signatures and presigned URLs, where moto checks nothing.
Wrong credentials, tampered presigned URLs and multipart (large) objects."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from importer.config import build_config
from importer.engine import run_import
from importer.errors import SourceAuthError

from ..conftest import Images, free_port, same_disk, wait_port

ACCESS, SECRET = "test:tester", "testing"

SERVER_CONF = """[DEFAULT]
devices = {w}/node
mount_check = false
disable_fallocate = true
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
swift_dir = {w}/etc
[pipeline:main]
pipeline = {name}-server
[app:{name}-server]
use = egg:swift#{name}
"""

PROXY_CONF = """[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
swift_dir = {w}/etc
[pipeline:main]
pipeline = {pipeline}
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:s3api]
use = egg:swift#s3api
location = us-east-1
storage_domain = localhost
[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:1
"""
PIPELINE = ("catch_errors gatekeeper healthcheck proxy-logging cache s3api tempauth copy slo dlo "
            "proxy-logging proxy-server")
# section name in the pipeline -> egg entry point
FILTERS = {"catch_errors": "catch_errors", "gatekeeper": "gatekeeper", "healthcheck": "healthcheck",
           "proxy-logging": "proxy_logging", "copy": "copy", "slo": "slo", "dlo": "dlo"}


@dataclass
class Swift:
    endpoint: str

    def client(self, secret: str = SECRET):  # type: ignore[no-untyped-def]
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=ACCESS, aws_secret_access_key=secret)


@pytest.fixture(scope="session")
def swift(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swift]:
    if not shutil.which("swift-proxy-server"):
        pytest.skip("OpenStack Swift is not installed (scripts/setup.sh installs it)")
    w = tmp_path_factory.mktemp("swift")
    for d in ("etc", "node/d1", "log"):
        (w / d).mkdir(parents=True)
    (w / "etc" / "swift.conf").write_text(
        "[swift-hash]\nswift_hash_path_suffix = importer-tests\nswift_hash_path_prefix = importer\n"
        "[storage-policy:0]\nname = Policy-0\ndefault = yes\n"
        "[swift-constraints]\nmax_file_size = 5368709122\n")
    ports = {n: free_port() for n in ("account", "container", "object", "proxy")}
    for name in ("account", "container", "object"):
        (w / "etc" / f"{name}-server.conf").write_text(
            SERVER_CONF.format(w=w, port=ports[name], name=name))
        builder = str(w / "etc" / f"{name}.builder")
        for args in (["create", "8", "1", "1"], ["add", f"r1z1-127.0.0.1:{ports[name]}/d1", "1"],
                     ["rebalance"]):
            subprocess.run(["swift-ring-builder", builder, *args], check=False, capture_output=True)
    (w / "etc" / "proxy-server.conf").write_text(
        PROXY_CONF.format(w=w, port=ports["proxy"], pipeline=PIPELINE)
        + "".join(f"[filter:{name}]\nuse = egg:swift#{egg}\n" for name, egg in FILTERS.items()))
    procs = []
    for n in ("account", "container", "object", "proxy"):
        with open(w / "log" / f"{n}.log", "wb") as log:  # the child keeps its own copy
            procs.append(subprocess.Popen([f"swift-{n}-server", str(w / "etc" / f"{n}-server.conf")],
                                          stdout=log, stderr=subprocess.STDOUT))
    endpoint = f"http://127.0.0.1:{ports['proxy']}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{endpoint}/healthcheck", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("swift did not start: " + (w / "log" / "proxy.log").read_text()[-2000:])
        for name in ("account", "container", "object"):
            wait_port(ports[name], 60)
        s = Swift(endpoint)
        c = s.client()
        # the proxy is healthy before the account and container servers answer it: s3api says
        # 503 "reduce your request rate" until they do (seen in CI under load)
        deadline = time.monotonic() + 60
        while True:
            try:
                c.create_bucket(Bucket="disks")
                break
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ServiceUnavailable" or \
                        time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        c.upload_file(str(images["disk.qcow2"]), "disks", "disk.qcow2")
        # a multipart upload: the ETag ends in -N, as for every large object
        c.upload_file(str(images.raw), "disks", "multipart.raw",
                      Config=TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20))
        yield s
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


def _import(swift: Swift, key: str, dest: Path, secret: str | None = SECRET):  # type: ignore[no-untyped-def]
    kw = {}
    if secret is not None:
        pw = dest.parent / "secret"
        pw.write_text(secret)
        kw = {"username": ACCESS, "password_file": str(pw)}
    return run_import(build_config(source=f"s3://disks/{key}", dest=str(dest),
                                   s3_endpoint=swift.endpoint, **kw))  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _no_machine_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")


def test_signed_import(swift: Swift, images: Images, tmp_path: Path) -> None:
    assert _import(swift, "disk.qcow2", tmp_path / "d.img").path == "extents"
    assert same_disk(images.raw, tmp_path / "d.img")


def test_multipart_object(swift: Swift, images: Images, tmp_path: Path) -> None:
    head = swift.client().head_object(Bucket="disks", Key="multipart.raw")
    assert "-" in head["ETag"]
    assert _import(swift, "multipart.raw", tmp_path / "d.img").path == "ranges"
    assert same_disk(images.raw, tmp_path / "d.img")


def test_wrong_secret_and_anonymous_are_refused(swift: Swift, tmp_path: Path) -> None:
    with pytest.raises(SourceAuthError, match=r"s3://disks/disk.qcow2.*access key"):
        _import(swift, "disk.qcow2", tmp_path / "d.img", secret="wrong")
    with pytest.raises(SourceAuthError):
        _import(swift, "disk.qcow2", tmp_path / "d.img", secret=None)
    assert not (tmp_path / "d.img").exists()


def test_presigned_urls_signed_and_tampered(swift: Swift, images: Images, tmp_path: Path) -> None:
    url = swift.client().generate_presigned_url(
        "get_object", Params={"Bucket": "disks", "Key": "disk.qcow2"}, ExpiresIn=600)
    assert run_import(build_config(source=url, dest=str(tmp_path / "d.img"))).path == "extents"
    assert same_disk(images.raw, tmp_path / "d.img")
    # flip one character of the signature, whichever signature version botocore chose
    m = re.search(r"((?:X-Amz-)?Signature=)([^&]+)", url)
    assert m
    sig = m.group(2)
    bad = ("A" if sig[0] != "A" else "B") + sig[1:]
    tampered = url.replace(m.group(0), m.group(1) + bad)
    assert tampered != url
    with pytest.raises(SourceAuthError, match="403"):
        run_import(build_config(source=tampered, dest=str(tmp_path / "e.img")))
