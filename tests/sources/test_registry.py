"""Registry source against a real registry (Debian's docker-registry, distribution v2) started
by the tests: plain HTTP, TLS with a test CA and htpasswd, and Bearer tokens. Every image is
built here (oci_images) and pushed with skopeo --preserve-digests."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from importer.config import build_config
from importer.engine import ImportResult, run_import
from importer.errors import (
    FormatError,
    SourceAuthError,
    SourceNotFoundError,
    SourceTLSError,
    UnsafeImageError,
)
from importer.sources.oci.digest import BlobDigestError

from ..conftest import DroppingProxy, Images, free_port, importer_cli, nginx_process, same_disk
from ..registry_server import PASSWORD, USER, Disks, Registry
from ..test_pod import Pod


def _import(ref: str, dest: Path, **kw: object) -> ImportResult:
    kw.setdefault("insecure", True)
    return run_import(build_config(source=ref, dest=str(dest), **kw))  # type: ignore[arg-type]


# ---------------------------------------------------------------------- plans


def test_raw_in_uncompressed_layer_is_read_in_place(plain: Registry, disks: Disks, images: Images,
                                                    tmp_path: Path) -> None:
    r = _import(plain.ref("cd", "raw"), tmp_path / "out.img")
    assert r.path == "ranges" and r.format == "raw"
    assert same_disk(images.raw, tmp_path / "out.img")


def test_qcow2_in_uncompressed_layer_goes_to_qemu_img_without_scratch(
        plain: Registry, disks: Disks, images: Images, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    r = _import(plain.ref("cd", "qcow2"), tmp_path / "out.img")
    assert (r.path, r.format, r.staged_bytes) == ("extents", "qcow2", 0)
    assert same_disk(images.raw, tmp_path / "out.img")
    assert "layer digest verified" in caplog.text


def test_qcow2_in_gzip_layer_streams_and_says_why(plain: Registry, disks: Disks, images: Images,
                                                   tmp_path: Path) -> None:
    r = _import(plain.ref("cd", "qcow2-gz"), tmp_path / "out.img")
    assert (r.plan, r.converter, r.format, r.staged_bytes) == ("stream", "native", "qcow2", 0)
    assert "the disk is inside a gzip-compressed layer" in r.plan_reason
    assert same_disk(images.raw, tmp_path / "out.img")


def test_raw_in_zstd_layer_streams(plain: Registry, disks: Disks, images: Images,
                                   tmp_path: Path) -> None:
    r = _import(plain.ref("cd", "raw-zst"), tmp_path / "out.img")
    assert r.path == "stream"
    assert same_disk(images.raw, tmp_path / "out.img")


@pytest.mark.parametrize("tag", ["sparse-gnu", "sparse-posix"])
def test_sparse_tar_entries_are_streamed_through_their_map(
        plain: Registry, disks: Disks, images: Images, tmp_path: Path, tag: str) -> None:
    r = _import(plain.ref("cd", tag), tmp_path / "out.img")
    assert r.path == "stream"  # in place would read the packed bytes at the wrong offsets
    assert same_disk(images.raw, tmp_path / "out.img")


def test_compressed_disk_file_is_decompressed(plain: Registry, disks: Disks, images: Images,
                                              tmp_path: Path) -> None:
    # CDI would write the .gz bytes as a raw disk (quirk Q13)
    r = _import(plain.ref("cd", "raw-gz-file"), tmp_path / "out.img")
    assert r.compression == ["gzip"]
    assert same_disk(images.raw, tmp_path / "out.img")


def test_pull_by_digest(plain: Registry, disks: Disks, images: Images, tmp_path: Path) -> None:
    index = json.loads((disks.layout / "index.json").read_text())
    digest = next(m["digest"] for m in index["manifests"]
                  if m["annotations"]["org.opencontainers.image.ref.name"] == "qcow2")
    r = _import(f"docker://{plain.host}/cd@{digest}", tmp_path / "out.img")
    assert r.format == "qcow2"
    assert same_disk(images.raw, tmp_path / "out.img")


# ---------------------------------------------------------------------- platforms


def test_index_resolves_to_the_host_architecture_or_the_one_asked(
        plain: Registry, disks: Disks, images: Images, tmp_path: Path) -> None:
    r = _import(plain.ref("cd", "multi"), tmp_path / "amd.img")
    assert r.format == "qcow2"  # this host is amd64
    assert same_disk(images.raw, tmp_path / "amd.img")
    _import(plain.ref("cd", "multi"), tmp_path / "arm.img", registry_arch="arm64")
    assert (tmp_path / "arm.img").read_bytes() == disks.a.read_bytes()


def test_missing_architecture_lists_what_the_index_has(plain: Registry, disks: Disks,
                                                       tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"no image for linux/s390x .*linux/amd64, "
                                                  r"linux/arm64"):
        _import(plain.ref("cd", "multi"), tmp_path / "out.img", registry_arch="s390x")


def test_architecture_of_a_single_image_is_checked_when_asked(plain: Registry, disks: Disks,
                                                              tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match='manifest image architecture: "amd64" '
                                                  "doesn't match requested architecture: "
                                                  '"arm64"'):
        _import(plain.ref("cd", "raw"), tmp_path / "out.img", registry_arch="arm64")


# ---------------------------------------------------------------------- layers


@pytest.mark.parametrize("tag", ["replaced", "whiteout", "opaque"])
def test_the_topmost_disk_wins_and_whiteouts_count(plain: Registry, disks: Disks, tmp_path: Path,
                                                   tag: str) -> None:
    _import(plain.ref("cd", tag), tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == disks.b.read_bytes()


@pytest.mark.parametrize("tag, message", [
    ("two", r"must hold exactly one regular file, but it holds: disk/a.img \(regular file, "
            r"4.0 MiB, layer 1\); disk/b.img"),
    ("lower-extra", r"disk/disk.img .*layer 2\); disk/extra.img .*layer 1\)"),
    ("lower-extra-gz", r"disk/disk.img .*layer 2\); disk/extra.img .*layer 1\)"),
    ("nodisk", r"failed to find a VM disk image file .* nothing under /disk/"),
    ("subdir", r"disk/sub \(directory, layer 1\)"),
    ("symlink", r"disk/x.img \(symlink to '/etc/passwd'"),
])
def test_disk_directory_must_hold_one_regular_file(plain: Registry, disks: Disks, tmp_path: Path,
                                                   tag: str, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        _import(plain.ref("cd", tag), tmp_path / "out.img")
    assert list(tmp_path.iterdir()) == []  # nothing written, no partial left


def test_entries_climbing_out_are_refused(plain: Registry, disks: Disks, tmp_path: Path) -> None:
    with pytest.raises(UnsafeImageError, match=r"'disk/\.\./\.\./x\.img' climbs out"):
        _import(plain.ref("cd", "climb"), tmp_path / "out.img")


def test_kubevirt_labels_from_the_image_environment(plain: Registry, disks: Disks,
                                                    tmp_path: Path) -> None:
    r = _import(plain.ref("cd", "labels"), tmp_path / "out.img")
    assert r.labels == {"instancetype.kubevirt.io/default-instancetype": "u1.small",
                        "instancetype.kubevirt.io/default-preference": "fedora"}


def test_bootc_images_are_refused_with_cdis_message(plain: Registry, disks: Disks,
                                                    tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"^bootc image detected: this image contains an "
                                          r"ostree-based bootable OS"):
        _import(plain.ref("cd", "bootc"), tmp_path / "out.img")


# ---------------------------------------------------------------------- integrity


def _tamper(plain: Registry, layout: Path, tag: str, at: int) -> None:
    index = json.loads((layout / "index.json").read_text())
    mdigest = next(m["digest"] for m in index["manifests"]
                   if m["annotations"]["org.opencontainers.image.ref.name"] == tag)
    manifest = json.loads((layout / "blobs/sha256" / mdigest.split(":")[1]).read_text())
    blob = plain.blob_file(manifest["layers"][0]["digest"])
    data = bytearray(blob.read_bytes())
    data[at] ^= 0xFF  # same size, one byte changed: only the digest can tell
    blob.write_bytes(bytes(data))


@pytest.mark.parametrize("tag, at", [("tamper", 1 << 20), ("tamper-gz", -100)])
def test_a_tampered_blob_fails_and_nothing_is_imported(plain: Registry, disks: Disks,
                                                       tmp_path: Path, tag: str, at: int) -> None:
    _tamper(plain, disks.layout, tag, at)
    with pytest.raises(BlobDigestError, match=r"does not match its digest sha256:"):
        _import(plain.ref("cd", tag), tmp_path / "out.img")
    assert list(tmp_path.iterdir()) == []


def test_missing_tag_and_repository(plain: Registry, disks: Disks, tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"tag 'v9' not found \(404 MANIFEST_UNKNOWN"):
        _import(plain.ref("cd", "v9"), tmp_path / "out.img")
    with pytest.raises(SourceNotFoundError, match=r"/nothere: tag .v1. not found"):
        _import(plain.ref("nothere", "v1"), tmp_path / "out.img")


def test_resumes_after_dropped_connections(plain: Registry, disks: Disks, images: Images,
                                           tmp_path: Path) -> None:
    for tag in ("qcow2-gz", "qcow2"):
        proxy = DroppingProxy(plain.port, cut=3 << 20, victims={0, 1, 2})
        try:
            r = _import(f"docker://127.0.0.1:{proxy.port}/cd:{tag}", tmp_path / f"{tag}.img",
                        read_timeout=10)
        finally:
            proxy.close()
        assert r.format == "qcow2"
        assert same_disk(images.raw, tmp_path / f"{tag}.img")


def test_registry_redirecting_blobs_to_s3_is_read_there_directly(
        s3_backed: Registry, disks: Disks, images: Images, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    s3_backed.push(disks.layout, "qcow2", "cd")
    caplog.set_level(logging.INFO)
    r = _import(s3_backed.ref("cd", "qcow2"), tmp_path / "out.img")
    assert r.path == "extents"
    assert same_disk(images.raw, tmp_path / "out.img")
    assert "reading it there directly" in caplog.text


@pytest.fixture
def no_range_proxy(plain: Registry, tmp_path: Path) -> Iterator[int]:
    """nginx in front of the registry, dropping Range on the way in and serving no ranges
    itself: a registry behind a proxy that cannot do byte ranges."""
    port = free_port()
    servers = f"""
    server {{
        listen 127.0.0.1:{port};
        max_ranges 0;
        location / {{
            proxy_pass http://127.0.0.1:{plain.port};
            proxy_set_header Range "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
        }}
    }}
"""
    with nginx_process(tmp_path, servers, port):
        yield port


def test_registry_without_range_support_streams_and_verifies(
        no_range_proxy: int, disks: Disks, images: Images, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    r = _import(f"docker://127.0.0.1:{no_range_proxy}/cd:qcow2", tmp_path / "q.img",
                scratch_dir=str(tmp_path))
    assert (r.plan, r.converter, r.staged_bytes) == ("stream", "native", 0)
    assert "the registry does not serve byte ranges" in r.plan_reason
    r = _import(f"docker://127.0.0.1:{no_range_proxy}/cd:qcow2", tmp_path / "q2.img",
                scratch_dir=str(tmp_path), converter="qemu-img")
    assert r.plan == "staged"
    assert "because the registry does not serve byte ranges" in caplog.text
    assert same_disk(images.raw, tmp_path / "q2.img")
    assert same_disk(images.raw, tmp_path / "q.img")
    r = _import(f"docker://127.0.0.1:{no_range_proxy}/cd:raw", tmp_path / "r.img")
    assert r.path == "stream"
    assert same_disk(images.raw, tmp_path / "r.img")


def test_plain_http_needs_insecure(plain: Registry, disks: Disks, tmp_path: Path) -> None:
    with pytest.raises(SourceTLSError, match=r"WRONG_VERSION_NUMBER.*serves plain HTTP"):
        _import(plain.ref("cd", "raw"), tmp_path / "out.img", insecure=False)


# ---------------------------------------------------------------------- TLS and auth


@pytest.fixture(scope="session")
def secure_image(secure: Registry, disks: Disks) -> str:
    secure.push(disks.layout, "qcow2", "cd")
    return secure.ref("cd", "qcow2")


def _password(tmp_path: Path, text: str = PASSWORD) -> str:
    (tmp_path / "pw").write_text(text + "\n")
    return str(tmp_path / "pw")


def test_tls_registry_with_ca_dir_and_basic_auth(secure: Registry, secure_image: str,
                                                 images: Images, tmp_path: Path) -> None:
    assert secure.ca_dir is not None
    r = _import(secure_image, tmp_path / "out.img", insecure=False, ca_dir=str(secure.ca_dir),
                username=USER, password_file=_password(tmp_path))
    assert r.format == "qcow2"
    assert same_disk(images.raw, tmp_path / "out.img")


def test_tls_registry_without_ca_fails_clearly(secure: Registry, secure_image: str,
                                               tmp_path: Path) -> None:
    with pytest.raises(SourceTLSError, match=r"CERTIFICATE_VERIFY_FAILED.*--ca-dir"):
        _import(secure_image, tmp_path / "out.img", insecure=False, username=USER,
                password_file=_password(tmp_path))


def test_tls_registry_insecure_skips_verification(secure: Registry, secure_image: str,
                                                  tmp_path: Path) -> None:
    r = _import(secure_image, tmp_path / "out.img", username=USER,
                password_file=_password(tmp_path))
    assert r.format == "qcow2"


def test_wrong_or_missing_password(secure: Registry, secure_image: str, tmp_path: Path) -> None:
    with pytest.raises(SourceAuthError, match=r"refused the credentials from the given user "
                                              r"name and password \(401 UNAUTHORIZED"):
        _import(secure_image, tmp_path / "out.img", username=USER,
                password_file=_password(tmp_path, "wrong"))
    with pytest.raises(SourceAuthError, match="requires a user name and password"):
        _import(secure_image, tmp_path / "out.img")


def test_credentials_from_a_docker_config_file(secure: Registry, secure_image: str,
                                               images: Images, tmp_path: Path) -> None:
    import base64

    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {secure.host: {"auth": auth}}}))
    r = _import(secure_image, tmp_path / "a.img", registry_auth_file=str(cfg))
    assert r.format == "qcow2"
    # podman's auth.json, found through REGISTRY_AUTH_FILE like podman and skopeo do
    pod = tmp_path / "auth.json"
    pod.write_text(json.dumps({"auths": {f"https://{secure.host}": {
        "username": USER, "password": PASSWORD}}}))
    r = run_import(build_config(source=secure_image, dest=str(tmp_path / "b.img"), insecure=True,
                                environ={"REGISTRY_AUTH_FILE": str(pod)}))
    assert same_disk(images.raw, tmp_path / "b.img")


def test_bearer_token_registry(token: Registry, disks: Disks, images: Images,
                               tmp_path: Path) -> None:
    from ..registry_server import TokenServer  # noqa: F401 - documents where tokens come from

    token.push(disks.layout, "qcow2", "cd")
    r = _import(token.ref("cd", "qcow2"), tmp_path / "out.img", username=USER,
                password_file=_password(tmp_path))
    assert r.path == "extents"
    assert same_disk(images.raw, tmp_path / "out.img")
    with pytest.raises(SourceAuthError, match="401"):
        _import(token.ref("cd", "qcow2"), tmp_path / "bad.img", username=USER,
                password_file=_password(tmp_path, "wrong"))
    with pytest.raises(SourceAuthError, match="anonymous access"):
        _import(token.ref("cd", "qcow2"), tmp_path / "anon.img")


def test_token_service_answering_html_is_an_auth_error(token: Registry, tmp_path: Path) -> None:
    with pytest.raises(SourceAuthError, match=r"token service .* gave no usable token"):
        _import(token.ref("broken/cd", "v1"), tmp_path / "out.img", username=USER,
                password_file=_password(tmp_path))


def test_bearer_token_registry_anonymous_pull_of_a_public_image(token: Registry, disks: Disks,
                                                                images: Images,
                                                                tmp_path: Path) -> None:
    """The common case of public registries: no credentials, an anonymous pull token."""
    token.push(disks.layout, "qcow2", "public/cd")
    r = _import(token.ref("public/cd", "qcow2"), tmp_path / "out.img")
    assert r.path == "extents"
    assert same_disk(images.raw, tmp_path / "out.img")


# ---------------------------------------------------------------------- oci-archive and CLI


@pytest.fixture(scope="session")
def archive(disks: Disks, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("archive") / "images.tar"
    with tarfile.open(out, "w") as tf:
        for p in sorted(disks.layout.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(disks.layout)), recursive=False)
    return out


def test_oci_archive(archive: Path, images: Images, disks: Disks, tmp_path: Path) -> None:
    r = _import(f"oci-archive:{archive}:qcow2", tmp_path / "q.img")
    assert (r.path, r.format) == ("extents", "qcow2")
    assert same_disk(images.raw, tmp_path / "q.img")
    _import(f"oci-archive:{archive}:whiteout", tmp_path / "w.img")
    assert (tmp_path / "w.img").read_bytes() == disks.b.read_bytes()
    with pytest.raises(SourceNotFoundError, match=r"no image named 'v9' in the archive \(it has: "
                                                  r"bootc, climb"):
        _import(f"oci-archive:{archive}:v9", tmp_path / "x.img")
    with pytest.raises(SourceNotFoundError, match=r"the archive holds \d+ images \(bootc, climb"):
        _import(f"oci-archive:{archive}", tmp_path / "y.img")
    # a multi-arch index inside the archive: the name picks the index, the host its image
    _import(f"oci-archive:{archive}:multi", tmp_path / "m.img", registry_arch="arm64")
    assert (tmp_path / "m.img").read_bytes() == disks.a.read_bytes()


def test_cli_import_and_errors(plain: Registry, disks: Disks, tmp_path: Path) -> None:
    out = tmp_path / "out.img"
    r = importer_cli("import", plain.ref("cd", "labels"), out, "--insecure", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["labels"]["instancetype.kubevirt.io/default-instancetype"] == \
        "u1.small"
    r = importer_cli("import", plain.ref("cd", "two"), tmp_path / "x.img", "--insecure")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "exactly one regular file" in r.stderr
    r = importer_cli("import", "docker:/bad", tmp_path / "y.img")
    assert r.returncode == 2 and "docker://host/repo:tag" in r.stderr
    r = importer_cli("import", plain.ref("cd", "raw"), tmp_path / "z", "--content-type", "archive")
    assert r.returncode == 2 and "not possible with a container image" in r.stderr


def test_inspect(plain: Registry, disks: Disks) -> None:
    r = importer_cli("inspect", plain.ref("cd", "qcow2-gz"), "--insecure", "-o", "json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format"] == "qcow2" and info["range_requests"] is False
    r = importer_cli("inspect", plain.ref("cd", "labels"), "--insecure", "-o", "json")
    info = json.loads(r.stdout)
    assert info["labels"] == {"instancetype.kubevirt.io/default-instancetype": "u1.small",
                              "instancetype.kubevirt.io/default-preference": "fedora"}
    assert info["version"].startswith("sha256:")  # the manifest digest, for pinning


def test_skopeo_sees_the_same_image(plain: Registry, disks: Disks) -> None:
    """The pushed manifest is the one the layout names: --preserve-digests kept it."""
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw",
                          f"docker://{plain.host}/cd:qcow2"], capture_output=True, check=True)
    index = json.loads((disks.layout / "index.json").read_text())
    digest = next(m["digest"] for m in index["manifests"]
                  if m["annotations"]["org.opencontainers.image.ref.name"] == "qcow2")
    import hashlib

    assert "sha256:" + hashlib.sha256(out.stdout).hexdigest() == digest


# ---------------------------------------------------------------------- the CDI pod


def _pod(tmp_path: Path) -> Pod:
    (tmp_path / "data").mkdir(parents=True)
    (tmp_path / "dev").mkdir()
    return Pod(tmp_path)


def test_pod_registry_import_with_labels_and_architecture(plain: Registry, disks: Disks,
                                                          tmp_path: Path) -> None:
    pod = _pod(tmp_path / "a")
    code, err = pod.run(IMPORTER_SOURCE="registry", IMPORTER_ENDPOINT=plain.ref("cd", "labels"),
                        INSECURE_TLS="true")
    assert code == 0, err
    assert pod.termination == (
        '{"scratchSpaceRequired":false,"preallocationApplied":false,"labels":{'
        '"instancetype.kubevirt.io/default-instancetype":"u1.small",'
        '"instancetype.kubevirt.io/default-preference":"fedora"},"message":"Import Complete"}')
    assert (pod.data / "disk.img").read_bytes()[: 4 << 20] == disks.a.read_bytes()
    pod = _pod(tmp_path / "b")
    code, err = pod.run(IMPORTER_SOURCE="registry", IMPORTER_ENDPOINT=plain.ref("cd", "multi"),
                        INSECURE_TLS="true", IMPORTER_REGISTRY_IMAGE_ARCHITECTURE="arm64")
    assert code == 0, err
    assert (pod.data / "disk.img").read_bytes()[: 4 << 20] == disks.a.read_bytes()


def test_pod_registry_tls_and_credentials(secure: Registry, secure_image: str, images: Images,
                                          tmp_path: Path) -> None:
    pod = _pod(tmp_path)
    assert secure.ca_dir is not None
    certs = pod.root / "certs"
    certs.mkdir()
    (certs / "ca.pem").write_bytes((secure.ca_dir / "ca.crt").read_bytes())
    code, err = pod.run(IMPORTER_SOURCE="registry", IMPORTER_ENDPOINT=secure_image,
                        IMPORTER_CERT_DIR="/certs", IMPORTER_ACCESS_KEY_ID=USER,
                        IMPORTER_SECRET_KEY=PASSWORD)
    assert code == 0, err
    assert same_disk(images.raw, pod.data / "disk.img")
    assert PASSWORD not in err


def test_pod_pull_failures_say_failed_to_pull_image(secure: Registry, secure_image: str,
                                                    plain: Registry, disks: Disks,
                                                    tmp_path: Path) -> None:
    pod = _pod(tmp_path / "a")
    code, _ = pod.run(IMPORTER_SOURCE="registry", IMPORTER_ENDPOINT=plain.ref("cd", "v9"),
                      INSECURE_TLS="true")
    assert code == 1
    assert pod.termination.startswith("Unable to process data: failed to pull image: ")
    assert "tag 'v9' not found" in pod.termination
    pod = _pod(tmp_path / "b")
    code, _ = pod.run(IMPORTER_SOURCE="registry", IMPORTER_ENDPOINT=secure_image,
                      INSECURE_TLS="true", IMPORTER_ACCESS_KEY_ID=USER)  # no secret: anonymous
    assert code == 1
    assert "failed to pull image" in pod.termination and "requires a user name" in \
        pod.termination
    pod = _pod(tmp_path / "c")
    code, _ = pod.run(IMPORTER_SOURCE="registry", IMPORTER_ENDPOINT=plain.ref("cd", "two"),
                      INSECURE_TLS="true")
    assert code == 1 and pod.termination.startswith("Unable to process data: ")
    assert list((pod.data).iterdir()) == []


@pytest.mark.parametrize("tag", ["qcow2", "qcow2-gz"])
def test_pod_sigterm_during_a_registry_import(plain: Registry, disks: Disks, tmp_path: Path,
                                              tag: str) -> None:
    """Stopped while reading in place (nbd) or while staging a gzip layer: exit 143, no
    success, nothing left in /data or /scratch."""
    import signal
    import time

    pod = _pod(tmp_path)
    (pod.root / "scratch").mkdir()
    proxy = DroppingProxy(plain.port, cut=0, victims=set(), rate=256 << 10)
    try:
        p = pod.start(IMPORTER_SOURCE="registry", INSECURE_TLS="true",
                      IMPORTER_ENDPOINT=f"docker://127.0.0.1:{proxy.port}/cd:{tag}")
        time.sleep(2)  # the layers are 1.5 to 5 MiB; each connection gets 256 KiB/s
        assert p.poll() is None
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        proxy.close()
    assert p.returncode == 143, err
    assert "SIGTERM" in pod.termination and "Import Complete" not in pod.termination
    assert list(pod.data.iterdir()) == [] and list((pod.root / "scratch").iterdir()) == []


@pytest.mark.root
def test_pod_registry_raw_to_block_device(plain: Registry, disks: Disks, images: Images,
                                          tmp_path: Path) -> None:
    from ..conftest import loop_device

    pod = _pod(tmp_path)
    with loop_device(tmp_path / "backing", images.raw.stat().st_size, b"\xaa") as dev:
        (pod.root / "dev" / "cdi-block-volume").symlink_to(dev)
        code, err = pod.run(IMPORTER_SOURCE="registry", IMPORTER_ENDPOINT=plain.ref("cd", "raw-zst"),
                            INSECURE_TLS="true", FILESYSTEM_OVERHEAD="0")
        assert code == 0, err
        assert same_disk(images.raw, dev)


def test_image_pushed_with_oras(plain: Registry, images: Images, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """oras writes its own manifest shape (title annotations, an empty annotations map)."""
    import hashlib

    import oras.client

    from .. import oci_images as oci

    layer = tmp_path / "layer.tar"
    oci.write_tar(oci.disk_layer(images["disk.qcow2"]), layer)
    diff_id = "sha256:" + hashlib.sha256(layer.read_bytes()).hexdigest()
    (tmp_path / "config.json").write_text(json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Env": ["KUBEVIRT_IO_OS=fedora"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}}))
    monkeypatch.chdir(tmp_path)  # oras takes paths under the working directory
    client = oras.client.OrasClient(hostname=plain.host, insecure=True)
    client.push(target=f"{plain.host}/cd/oras:v1",
                files=["layer.tar:application/vnd.oci.image.layer.v1.tar"],
                manifest_config="config.json:application/vnd.oci.image.config.v1+json")
    r = _import(f"docker://{plain.host}/cd/oras:v1", tmp_path / "out.img")
    assert (r.path, r.labels) == ("extents", {"kubevirt.io/os": "fedora"})
    assert same_disk(images.raw, tmp_path / "out.img")


def test_oci_layout_directory(disks: Disks, images: Images, tmp_path: Path) -> None:
    """skopeo's `oci:DIR[:REF]` transport: the layout as a directory, read in place."""
    r = _import(f"oci:{disks.layout}:qcow2", tmp_path / "q.img")
    assert (r.path, r.format) == ("extents", "qcow2")
    assert same_disk(images.raw, tmp_path / "q.img")
    with pytest.raises(SourceNotFoundError, match=r"no index\.json"):
        _import(f"oci:{tmp_path}:qcow2", tmp_path / "x.img")
    cli = importer_cli("import", f"oci:{disks.layout}:whiteout", tmp_path / "w.img")
    assert cli.returncode == 0, cli.stderr
    assert (tmp_path / "w.img").read_bytes() == disks.b.read_bytes()


def test_a_layout_blob_that_is_a_fifo_is_refused_not_waited_on(disks: Disks,
                                                                tmp_path: Path) -> None:
    """A planted FIFO as a layer blob: opened without blocking and refused (it hung)."""
    import shutil

    layout = tmp_path / "layout"
    shutil.copytree(disks.layout, layout)
    index = json.loads((layout / "index.json").read_text())
    mdigest = next(m["digest"] for m in index["manifests"]
                   if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "qcow2")
    manifest = json.loads((layout / "blobs/sha256" / mdigest.split(":")[1]).read_text())
    blob = layout / "blobs/sha256" / manifest["layers"][0]["digest"].split(":")[1]
    blob.unlink()
    os.mkfifo(blob)
    cli = importer_cli("import", f"oci:{layout}:qcow2", tmp_path / "q.img", timeout=60)
    assert cli.returncode == 1, cli.stderr
    assert "not a regular file" in cli.stderr and "Traceback" not in cli.stderr
    assert not (tmp_path / "q.img").exists()


def test_a_docker_credential_helper_is_run(secure: Registry, secure_image: str,
                                           images: Images, tmp_path: Path) -> None:
    """credHelpers as docker and skopeo use them: `docker-credential-NAME get`, the server on
    stdin, JSON back; through the CLI's --authfile (skopeo's name for the option)."""
    import os

    bindir = tmp_path / "bin"
    bindir.mkdir()
    asked = tmp_path / "asked"
    helper = bindir / "docker-credential-testkeychain"
    helper.write_text(f"""#!/bin/sh
[ "$1" = get ] || exit 1
read server
echo "$server" >> {asked}
[ "$server" = "{secure.host}" ] || {{ echo "credentials not found in native keychain"; exit 1; }}
printf '{{"ServerURL":"%s","Username":"{USER}","Secret":"{PASSWORD}"}}' "$server"
""")
    helper.chmod(0o755)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"credHelpers": {secure.host: "testkeychain"}}))
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    r = importer_cli("import", secure_image, tmp_path / "h.img", "--authfile", cfg,
                     "--insecure", env=env)
    assert r.returncode == 0, r.stderr
    assert same_disk(images.raw, tmp_path / "h.img")
    assert asked.read_text().splitlines()[0] == secure.host
    assert PASSWORD not in r.stderr


# ---------------------------------------------------------------------- docker-archive


def _docker_save_25(layout: Path, tags: dict[str, str], out: Path) -> Path:
    """The archive Docker 25+ writes: the OCI layout's blobs plus a manifest.json naming each
    image's config and layers by blob path (built here from our layout: no Docker daemon)."""
    index = json.loads((layout / "index.json").read_text())
    listing = []
    for name, repo_tag in tags.items():
        desc = next(m for m in index["manifests"]
                    if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == name)
        manifest = json.loads((layout / "blobs" / "sha256" / desc["digest"][7:]).read_text())
        listing.append({"Config": "blobs/sha256/" + manifest["config"]["digest"][7:],
                        "RepoTags": [repo_tag],
                        "Layers": ["blobs/sha256/" + ly["digest"][7:]
                                   for ly in manifest["layers"]]})
    (out.parent / "manifest.json").write_text(json.dumps(listing))
    with tarfile.open(out, "w") as tf:
        tf.add(out.parent / "manifest.json", arcname="manifest.json")
        for p in sorted((layout / "blobs").rglob("*")):
            tf.add(p, arcname=str(p.relative_to(layout)), recursive=False)
    return out


def test_docker_archive_as_skopeo_and_docker_save_write_it(
        disks: Disks, images: Images, tmp_path: Path) -> None:
    """`docker-archive:PATH[:REF]`: the legacy layout (`<id>/layer.tar`, written by skopeo as
    by docker save before Docker 25) and Docker 25's blob paths; REF by tag or by @N."""
    legacy = tmp_path / "legacy.tar"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{disks.layout}:qcow2",
                    f"docker-archive:{legacy}:example.com/cd/qcow2:v1"], check=True)
    for ref in (f"docker-archive:{legacy}", f"docker-archive:{legacy}:example.com/cd/qcow2:v1",
                f"docker-archive:{legacy}:@0"):
        r = _import(ref, tmp_path / "q.img")
        assert (r.format, r.plan) == ("qcow2", "extents"), ref
        assert same_disk(images.raw, tmp_path / "q.img")
        (tmp_path / "q.img").unlink()
    with pytest.raises(SourceNotFoundError, match=r"no image tagged 'other:v1' in the archive "
                                                  r"\(it has: example.com/cd/qcow2:v1\)"):
        _import(f"docker-archive:{legacy}:other:v1", tmp_path / "x.img")

    work = tmp_path / "d25"
    work.mkdir()
    modern = _docker_save_25(disks.layout, {"qcow2": "cd/qcow2:v1", "whiteout": "cd/w:v2"},
                             work / "saved.tar")
    r = _import(f"docker-archive:{modern}:cd/w:v2", tmp_path / "w.img")
    assert (tmp_path / "w.img").read_bytes() == disks.b.read_bytes()  # layers stacked
    r = _import(f"docker-archive:{modern}:docker.io/cd/qcow2:v1", tmp_path / "m.img")
    assert same_disk(images.raw, tmp_path / "m.img")
    with pytest.raises(SourceNotFoundError, match=r"holds 2 images \(cd/qcow2:v1, cd/w:v2\); "
                                                  r"name one as docker-archive:PATH:REPO:TAG"):
        _import(f"docker-archive:{modern}", tmp_path / "y.img")
    cli = importer_cli("import", f"docker-archive:{tmp_path / 'none.tar'}", tmp_path / "n.img")
    assert cli.returncode == 1 and "docker-archive" in cli.stderr and "no such file" in cli.stderr


def test_a_docker_archive_layer_that_was_altered_is_refused(disks: Disks,
                                                            tmp_path: Path) -> None:
    """docker save's layers carry no digest of their own: each is checked against its diff_id
    in the config, so a changed byte fails the import instead of reaching the disk."""
    legacy = tmp_path / "legacy.tar"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{disks.layout}:raw",
                    f"docker-archive:{legacy}"], check=True)
    with tarfile.open(legacy) as tf:
        layer = next(m for m in tf if m.isfile() and m.name.endswith(".tar"))
    with open(legacy, "r+b") as f:  # inside the disk file's data, past the inner tar header
        f.seek(layer.offset_data + 4096)
        byte = f.read(1)
        f.seek(layer.offset_data + 4096)
        f.write(bytes([byte[0] ^ 0xFF]))
    cli = importer_cli("import", f"docker-archive:{legacy}", tmp_path / "r.img")
    assert cli.returncode == 1, cli.stderr
    assert "digest" in cli.stderr and "Traceback" not in cli.stderr
    assert not (tmp_path / "r.img").exists()
