"""The built image run with podman exactly as CDI's controller runs the importer pod: uid 107,
all capabilities dropped, no-new-privileges, read-only root, CDI's environment, /data or a
block device at /dev/cdi-block-volume, /dev/termination-log bind-mounted. Needs root, podman and
the image from scripts/container.sh (scripts/test.sh builds it); skipped with the reason
otherwise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..conftest import (
    ROOT,
    SEED_SIZE,
    Images,
    Nginx,
    free_port,
    loop_device,
    same_disk,
    scrape_progress,
    wait_port,
)
from ..registry_server import Disks, Registry
from ..sources.openstack.fixtures import Glance
from ..sources.ovirt.fixtures import Ovirt
from ..sources.ovirt.servers import FakeEngine
from ..sources.vmware.fixtures import VMware

IMAGE = os.environ.get("IMPORTER_IMAGE", "localhost/importer:ci")


def _podman_env() -> dict[str, str] | None:
    if os.geteuid() != 0 or not shutil.which("podman"):
        return None
    out = subprocess.run(["bash", str(ROOT / "scripts" / "container.sh"), "--env"],
                         capture_output=True, text=True, check=True).stdout
    env = dict(os.environ)
    for assignment in out.replace("export ", "").split():
        k, _, v = assignment.partition("=")
        env[k] = v
    if subprocess.run(["podman", "image", "exists", IMAGE], env=env).returncode != 0:
        return None
    return env


PODMAN_ENV = _podman_env()
pytestmark = pytest.mark.skipif(PODMAN_ENV is None,
                                reason=f"needs root, podman and {IMAGE} (scripts/container.sh)")


@dataclass
class PodRun:
    root: Path
    device: Path | None = None
    scratch: bool = False
    volumes: list[str] = field(default_factory=list)
    name: str = field(default_factory=lambda: f"importer-{uuid.uuid4().hex[:8]}")

    def __post_init__(self) -> None:
        self.data = self.root / "data"
        self.data.mkdir()
        self.term = self.root / "termination-log"
        self.term.touch()
        os.chown(self.data, 107, 107)
        os.chown(self.term, 107, 107)

    def argv(self, env: dict[str, str]) -> list[str]:
        a = ["podman", "run", "--rm", "--pull", "never", "--name", self.name, "--user", "107",
             "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--network", "host",
             "--read-only", "--tmpfs", "/tmp", "-v", f"{self.term}:/dev/termination-log:rw"]
        if self.device is not None:
            a += ["--device", f"{self.device}:/dev/cdi-block-volume:rwm"]
        else:
            a += ["-v", f"{self.data}:/data:rw"]
        for v in self.volumes:
            a += ["-v", v]
        if self.scratch:
            scratch = self.root / "scratch"
            scratch.mkdir(exist_ok=True)
            os.chown(scratch, 107, 107)
            a += ["-v", f"{scratch}:/scratch:rw"]
        cdi = {"IMPORTER_SOURCE": "http", "IMPORTER_CONTENTTYPE": "kubevirt", "OWNER_UID": "uid-1",
               "IMPORTER_IMAGE_SIZE": "64Mi", "FILESYSTEM_OVERHEAD": "0", "PREALLOCATION": "false",
               "INSECURE_TLS": "false", "IMPORTER_METRICS_PORT": str(free_port()), **env}
        for k, v in cdi.items():
            a += ["-e", f"{k}={v}"]
        return [*a, IMAGE, "-v=1"]

    def run(self, **env: str) -> tuple[int, str]:
        r = subprocess.run(self.argv(env), capture_output=True, text=True, timeout=300,
                           env=PODMAN_ENV)
        return r.returncode, r.stderr

    @property
    def message(self) -> str:
        return self.term.read_text()


@pytest.fixture
def pod(tmp_path: Path) -> PodRun:
    return PodRun(tmp_path)


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Path]:
    with loop_device(tmp_path / "block.img", 40 << 20, b"\x33") as dev:
        os.chown(dev, 107, 107)  # kubelet gives the pod user the device
        try:
            yield dev
        finally:
            os.chown(dev, 0, 6)


def test_http_qcow2_to_file(pod: PodRun, nginx: Nginx, images: Images) -> None:
    code, err = pod.run(IMPORTER_ENDPOINT=nginx.url("disk.qcow2"))
    assert code == 0, err
    assert pod.message == ('{"scratchSpaceRequired":false,"preallocationApplied":false,'
                           '"message":"Import Complete"}')
    disk = pod.data / "disk.img"
    assert disk.stat().st_mode & 0o777 == 0o660 and disk.stat().st_size == 64 << 20
    assert same_disk(images.raw, disk)


def test_vmdk_without_ranges_streams_natively_in_the_pod(tmp_path: Path, nginx: Nginx,
                                                         images: Images) -> None:
    """A streamOptimized vmdk from a server without ranges, and a monolithicSparse one with
    ranges: converted by the native readers in the pod (no scratch volume is mounted, and a
    staged or qemu-img conversion would need one or show in the log)."""
    for name, path, plan in (("disk-so.vmdk", "norange/disk-so.vmdk", "stream"),
                             ("disk-ms.vmdk", "disk-ms.vmdk", "extents")):
        (tmp_path / name).mkdir()
        pod = PodRun(tmp_path / name)
        code, err = pod.run(IMPORTER_ENDPOINT=nginx.url(path))
        assert code == 0, err
        assert json.loads(pod.message)["message"] == "Import Complete"
        assert same_disk(images.raw, pod.data / "disk.img")
        assert '"converter": "native"' in err and f'"plan": "{plan}"' in err, err


def test_http_raw_xz_to_block(tmp_path: Path, nginx: Nginx, images: Images, loop: Path) -> None:
    (tmp_path / "p").mkdir()
    pod = PodRun(tmp_path / "p", device=loop)
    code, err = pod.run(IMPORTER_ENDPOINT=nginx.url("disk.raw.xz"))
    assert code == 0, err
    with open(loop, "rb") as f:
        assert f.read(SEED_SIZE) == images.raw.read_bytes()
    assert "Successfully completed fsync(/dev/cdi-block-volume)" in err


def test_registry_qcow2_with_labels_and_a_tampered_blob(tmp_path: Path, plain: Registry,
                                                        disks: Disks, images: Images) -> None:
    """oras, requests and the whole registry path work inside the image as the pod user."""
    (tmp_path / "a").mkdir()
    pod = PodRun(tmp_path / "a")
    code, err = pod.run(IMPORTER_SOURCE="registry", IMPORTER_ENDPOINT=plain.ref("cd", "qcow2"),
                        INSECURE_TLS="true")
    assert code == 0, err
    assert same_disk(images.raw, pod.data / "disk.img")
    (tmp_path / "b").mkdir()
    pod = PodRun(tmp_path / "b")
    code, err = pod.run(IMPORTER_SOURCE="registry", IMPORTER_ENDPOINT=plain.ref("cd", "labels"),
                        INSECURE_TLS="true")
    assert code == 0, err
    assert '"labels":{"instancetype.kubevirt.io/default-instancetype":"u1.small"' in pod.message


def test_registry_node_pull_with_the_sidecar_in_a_scratch_image(
        tmp_path: Path, plain: Registry, disks: Disks, images: Images) -> None:
    """CDI's node-pull pod shape: the init container copies the static server out of our image,
    the sidecar runs it inside the user's FROM-scratch container disk, the importer reads it."""
    assert PODMAN_ENV is not None
    cdisk = "localhost/importer-test-cdisk:labels"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{disks.layout}:labels",
                    f"containers-storage:{cdisk}"], check=True, env=PODMAN_ENV)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, 107, 107)
    vol = f"{shared}:/shared:rw"
    subprocess.run(["podman", "run", "--rm", "--pull", "never", "--user", "107", "-v", vol,
                    "--entrypoint", "/bin/sh", IMAGE, "-c",
                    "cp /usr/bin/cdi-containerimage-server /shared/server"],
                   check=True, env=PODMAN_ENV, capture_output=True)
    port = free_port()
    sidecar = subprocess.Popen(
        ["podman", "run", "--rm", "--pull", "never", "--user", "107", "--network", "host",
         "--read-only", "-v", vol, cdisk, "/shared/server", "-p", str(port), "-image-dir",
         "/disk", "-ready-file", "/shared/ready", "-done-file", "/shared/done"],
        env=PODMAN_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        (tmp_path / "p").mkdir()
        pod = PodRun(tmp_path / "p", volumes=[vol])
        code, err = pod.run(IMPORTER_SOURCE="http",
                            IMPORTER_ENDPOINT=f"http://localhost:{port}/disk.img",
                            IMPORTER_PULL_METHOD="node", IMPORTER_READY_FILE="/shared/ready",
                            IMPORTER_DONE_FILE="/shared/done")
        assert code == 0, err
        assert '"labels":{"instancetype.kubevirt.io/default-instancetype":"u1.small"' in \
            pod.message
        assert (pod.data / "disk.img").read_bytes()[: 4 << 20] == disks.a.read_bytes()
        _out, serr = sidecar.communicate(timeout=30)
        assert sidecar.returncode == 0, serr
    finally:
        if sidecar.poll() is None:
            sidecar.kill()
        subprocess.run(["podman", "rmi", "-f", cdisk], env=PODMAN_ENV, capture_output=True)


def test_image_size_detection_binary(pod: PodRun, images: Images) -> None:
    import shutil as sh

    sh.copyfile(images["disk.qcow2"], pod.data / "disk.img")
    os.chown(pod.data / "disk.img", 107, 107)
    r = subprocess.run(["podman", "run", "--rm", "--pull", "never", "--user", "107", "--read-only",
                        "-v", f"{pod.data}:/data:rw", "-v", f"{pod.term}:/dev/termination-log:rw",
                        "--entrypoint", "/usr/bin/cdi-image-size-detection", IMAGE,
                        "-image-path", "/data/disk.img"],
                       capture_output=True, text=True, timeout=120, env=PODMAN_ENV)
    assert r.returncode == 0, r.stderr
    assert pod.message == str(SEED_SIZE)


def test_archive_to_data(pod: PodRun, nginx: Nginx, images: Images) -> None:
    import tarfile

    with tarfile.open(images.dir / "contract.tar", "w") as tf:
        tf.add(images["tiny.raw"], arcname="a/tiny.raw")
    code, err = pod.run(IMPORTER_ENDPOINT=nginx.url("contract.tar"), IMPORTER_CONTENTTYPE="archive")
    assert code == 0, err
    assert (pod.data / "a" / "tiny.raw").read_bytes() == images["tiny.raw"].read_bytes()


def test_blank_file_and_block(tmp_path: Path, pod: PodRun, loop: Path) -> None:
    code, err = pod.run(IMPORTER_SOURCE="none", IMPORTER_IMAGE_SIZE="20Mi")
    assert code == 0, err
    assert pod.message == '{"preallocationApplied":false,"message":"Import Complete"}'
    assert (pod.data / "disk.img").stat().st_size == 20 << 20
    (tmp_path / "b").mkdir()
    block = PodRun(tmp_path / "b", device=loop)
    code, err = block.run(IMPORTER_SOURCE="none", PREALLOCATION="true")
    assert code == 0, err
    assert block.message == '{"preallocationApplied":true,"message":"Import Complete"}'
    with open(loop, "rb") as f:
        assert f.read() == bytes(40 << 20)


def test_failures(pod: PodRun, nginx: Nginx) -> None:
    code, _ = pod.run(IMPORTER_ENDPOINT=nginx.url("missing.qcow2"))
    assert code == 1 and pod.message.startswith("Unable to connect to http data source:")
    code, _ = pod.run(IMPORTER_ENDPOINT=nginx.url("disk.raw.gz"),
                      IMPORTER_CHECKSUM="sha256:" + "0" * 64)
    assert code == 0 and "checksum mismatch" in json.loads(pod.message)["message"]
    code, _ = pod.run(IMPORTER_ENDPOINT=nginx.url("disk.qcow2"), IMPORTER_IMAGE_SIZE="4Mi")
    assert code == 1 and "is larger than the reported available" in pod.message
    assert list(pod.data.iterdir()) == []


def test_scratch_required_then_satisfied(pod: PodRun, nginx: Nginx, images: Images) -> None:
    # the native reader converts a qcow2 from a server without ranges as it streams...
    code, err = pod.run(IMPORTER_ENDPOINT=nginx.url("norange/disk.qcow2"))
    assert code == 0 and json.loads(pod.message)["scratchSpaceRequired"] is False, err
    assert same_disk(images.raw, pod.data / "disk.img")
    # ...qemu-img cannot: scratch space is asked for, then used
    code, _ = pod.run(IMPORTER_ENDPOINT=nginx.url("norange/disk.qcow2"),
                      IMPORTER_CONVERTER="qemu-img")
    assert code == 0 and json.loads(pod.message)["scratchSpaceRequired"] is True
    pod.scratch = True
    code, err = pod.run(IMPORTER_ENDPOINT=nginx.url("norange/disk.qcow2"),
                        IMPORTER_CONVERTER="qemu-img")
    assert code == 0, err
    assert json.loads(pod.message)["scratchSpaceRequired"] is False
    assert same_disk(images.raw, pod.data / "disk.img")


def test_progress_scraped_during_a_rate_limited_import(pod: PodRun, nginx: Nginx) -> None:
    port = free_port()
    p = subprocess.Popen(pod.argv({"IMPORTER_ENDPOINT": nginx.url("crawl/disk.raw.gz"),
                                   "IMPORTER_METRICS_PORT": str(port)}),
                         env=PODMAN_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    values, _body = scrape_progress(p, port, "uid-1")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert values == sorted(values) and any(0 < v < 100 for v in values)
    assert values[-1] <= 100.0  # the pod exits at once; CDI's controller sets 100 on success


def test_sigterm_mid_import(pod: PodRun, nginx: Nginx) -> None:
    p = subprocess.Popen(pod.argv({"IMPORTER_ENDPOINT": nginx.url("crawl/disk.raw")}),
                         env=PODMAN_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (pod.data / "disk.img.partial").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    subprocess.run(["podman", "stop", "-t", "20", pod.name], env=PODMAN_ENV, capture_output=True,
                   check=True)
    p.communicate(timeout=60)
    assert p.returncode == 143
    assert "SIGTERM" in pod.message and "Import Complete" not in pod.message
    assert list(pod.data.iterdir()) == []


def test_imageio_cold_then_delta_stage(tmp_path: Path, pod: PodRun, ovirt: Ovirt) -> None:
    """oVirt: the first stage of a warm import as CDI runs it (engine URL, secret, CA config
    map at /certs), then a delta stage applied onto the disk it left in /data."""
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(ovirt.pki.ca_file.read_bytes())
    pod.volumes.append(f"{certs}:/certs:ro")
    chain = ovirt.warm
    env = {"IMPORTER_SOURCE": "imageio", "IMPORTER_ENDPOINT": ovirt.engine.url,
           "IMPORTER_ACCESS_KEY_ID": FakeEngine.USER, "IMPORTER_SECRET_KEY": FakeEngine.PASSWORD,
           "IMPORTER_CERT_DIR": "/certs", "IMPORTER_DISK_ID": chain.disk.id,
           "IMPORTER_CURRENT_CHECKPOINT": chain.snapshots[0], "IMPORTER_PREVIOUS_CHECKPOINT": "",
           "IMPORTER_FINAL_CHECKPOINT": "false"}
    code, err = pod.run(**env)
    assert code == 0, err
    assert json.loads(pod.message)["message"] == "Import Complete"
    assert same_disk(pod.data / "disk.img", chain.expected[0])
    code, err = pod.run(**env | {"IMPORTER_CURRENT_CHECKPOINT": chain.snapshots[1],
                                 "IMPORTER_PREVIOUS_CHECKPOINT": chain.snapshots[0],
                                 "IMPORTER_FINAL_CHECKPOINT": "true"})
    assert code == 0, err
    assert same_disk(pod.data / "disk.img", chain.expected[1])
    assert len(ovirt.engine.actions("finalize")) == 2 and not ovirt.engine.actions("cancel")
    assert FakeEngine.PASSWORD not in err


def test_vddk_cold_copy_with_cdi_s_test_hook(tmp_path: Path, pod: PodRun, vmware: VMware
                                            ) -> None:
    """VMware as CDI's controller runs it: the VDDK library mounted at
    /opt/vmware-vix-disklib-distrib, and (CDI's own test hook) a stand-in plugin at
    /opt/testing/libvddk-test-plugin.so for the image's nbdkit to run."""
    pod.volumes += [f"{vmware.libdir}:/opt/vmware-vix-disklib-distrib:ro",
                    f"{vmware.plugin}:/opt/testing/libvddk-test-plugin.so:ro"]
    code, err = pod.run(
        IMPORTER_SOURCE="vddk", IMPORTER_ENDPOINT=vmware.vc.url,
        IMPORTER_ACCESS_KEY_ID=vmware.vc.user, IMPORTER_SECRET_KEY=vmware.vc.password,
        IMPORTER_UUID=vmware.inv.uuid, IMPORTER_BACKING_FILE=vmware.inv.backing_file,
        IMPORTER_THUMBPRINT=vmware.vc.thumbprint, IMPORTER_CURRENT_CHECKPOINT="",
        IMPORTER_PREVIOUS_CHECKPOINT="", IMPORTER_FINAL_CHECKPOINT="false")
    assert code == 0, err
    assert json.loads(pod.message)["vddkInfo"] == {"Version": "7.0.3",
                                                    "Host": "esx-standin.example.test"}
    assert same_disk(pod.data / "disk.img", vmware.stages[3])
    assert vmware.vc.password not in err


def _podman(name: str, role: str, env: dict[str, str], volumes: list[str]
            ) -> subprocess.Popen[str]:
    """A pod of the image's `role` flavour, started with that image's own entrypoint (as CDI
    starts them: the pod spec gives only -v=N)."""
    image = IMAGE.replace(":", f"-{role}:", 1)
    argv = ["podman", "run", "--rm", "--pull", "never", "--name", name, "--user", "107",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--network", "host",
            "--read-only", "--tmpfs", "/tmp"]
    for v in volumes:
        argv += ["-v", v]
    for k, v in env.items():
        argv += ["-e", f"{k}={v}"]
    return subprocess.Popen([*argv, image, "-v=1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=PODMAN_ENV)


def _upload_pod(tmp_path: Path, name: str, client_name: str) -> tuple[subprocess.Popen[str],
                                                                        int, Path, Path]:
    from ..uploadserver.servers import make_certs

    certs = make_certs(tmp_path / "certs")
    tls = tmp_path / "tls"
    tls.mkdir()
    for f in ("tls.crt", "tls.key", "ca.crt"):
        (tls / f).write_bytes((certs.dir / f).read_bytes())
        (tls / f).chmod(0o644)
    data, term = tmp_path / "data", tmp_path / "termination-log"
    data.mkdir()
    term.touch()
    os.chown(data, 107, 107)
    os.chown(term, 107, 107)
    port = free_port()
    proc = _podman(name, "uploadserver", {
        "TLS_KEY_FILE": "/etc/tls/tls.key", "TLS_CERT_FILE": "/etc/tls/tls.crt",
        "CLIENT_CERT_FILE": "/etc/tls/ca.crt", "CLIENT_NAME": client_name,
        "FILESYSTEM_OVERHEAD": "0", "UPLOAD_IMAGE_SIZE": "64Mi", "PREALLOCATION": "false",
        "LISTEN_ADDRESS": "127.0.0.1", "LISTEN_PORT": str(port)},
        [f"{tls}:/etc/tls:ro", f"{data}:/data:rw", f"{term}:/dev/termination-log:rw"])
    wait_port(port, timeout=60)
    return proc, port, data, term


def test_upload_pod_takes_a_qcow2_from_the_proxy(tmp_path: Path, images: Images) -> None:
    """The upload server's pod as the controller runs it, fed by curl holding the upload
    proxy's client certificate."""
    name = f"upload-{uuid.uuid4().hex[:8]}"
    proc, port, data, term = _upload_pod(tmp_path, name, "client.upload-server.cdi.kubevirt.io")
    try:
        certs = tmp_path / "certs"
        r = subprocess.run(["curl", "-sS", "--fail", "--cacert", str(certs / "ca.crt"),
                            "--cert", str(certs / "proxy.crt"), "--key", str(certs / "proxy.key"),
                            "-X", "POST", "-T", str(images["disk.qcow2"]),
                            f"https://127.0.0.1:{port}/v1beta1/upload"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True, env=PODMAN_ENV)
    assert json.loads(term.read_text()) == {"preallocationApplied": False,
                                            "message": "Upload Complete"}
    assert same_disk(data / "disk.img", images["disk.raw"])


def test_clone_from_a_source_pod_to_a_target_pod(tmp_path: Path, images: Images) -> None:
    """Host-assisted clone, both sides in the image: cloner_startup.sh in the source pod (a
    filesystem volume mounted read-only) sends to the upload server of the target pod."""
    target = f"clone-tgt-{uuid.uuid4().hex[:8]}"
    source = f"clone-src-{uuid.uuid4().hex[:8]}"
    proc, port, data, term = _upload_pod(tmp_path, target, "ns/src-ns/tgt")
    volume = tmp_path / "volume"
    volume.mkdir()
    subprocess.run(["cp", "--sparse=always", str(images["disk.raw"]), str(volume / "disk.img")],
                   check=True)
    (volume / "disk.img").chmod(0o644)
    volume.chmod(0o755)
    src_term = tmp_path / "source-termination-log"
    src_term.touch()
    os.chown(src_term, 107, 107)
    certs = tmp_path / "certs"
    try:
        cloner = _podman(source, "cloner", {
            "CLIENT_CERT": (certs / "cloner.crt").read_text(),
            "CLIENT_KEY": (certs / "cloner.key").read_text(),
            "SERVER_CA_CERT": (certs / "ca.crt").read_text(),
            "UPLOAD_URL": f"https://127.0.0.1:{port}/v1beta1/upload", "OWNER_UID": "uid-9",
            "PREALLOCATION": "false", "VOLUME_MODE": "filesystem",
            "MOUNT_POINT": "/var/run/cdi/clone/source", "CLONER_METRICS_PORT": str(free_port())},
            [f"{volume}:/var/run/cdi/clone/source:ro",
             f"{src_term}:/dev/termination-log:rw"])
        _, cerr = cloner.communicate(timeout=120)
        assert cloner.returncode == 0, cerr
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        for n in (source, target):
            subprocess.run(["podman", "rm", "-f", n], capture_output=True, env=PODMAN_ENV)
    assert src_term.read_text() == "Clone Complete"
    assert json.loads(term.read_text())["message"] == "Clone Complete"
    assert same_disk(data / "disk.img", images["disk.raw"])


def test_source_update_poller_as_a_data_import_cron_runs_it(tmp_path: Path, plain: Registry,
                                                             disks: Disks, ca: object) -> None:
    """CDI's CronJob pod: the importer image, `/usr/bin/cdi-source-update-poller -ns -cron -url`
    as its command, the image's own user (CDI leaves RunAsUser unset), the service account's
    token and CA where Kubernetes mounts them, KUBERNETES_SERVICE_HOST/PORT as the kubelet sets
    them; the API is the stand-in (tests/kube_api.py)."""
    from ..kube_api import kube_api

    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    with kube_api(tmp_path, ca) as api:
        api.add_cron("golden", "centos-cron", {})
        (sa / "token").write_text(api.token)
        shutil.copyfile(api.ca_file, sa / "ca.crt")
        (sa / "namespace").write_text("cdi")
        for f in sa.iterdir():
            f.chmod(0o644)
        term = tmp_path / "termination-log"
        term.touch()
        os.chown(term, 107, 107)
        url = f"docker://{plain.host}/cd:raw"
        argv = ["podman", "run", "--rm", "--pull", "never", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges", "--network", "host", "--read-only",
                "--tmpfs", "/tmp", "-v", f"{sa}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
                "-v", f"{term}:/dev/termination-log:rw",
                "-e", "KUBERNETES_SERVICE_HOST=127.0.0.1",
                "-e", f"KUBERNETES_SERVICE_PORT={api.port}", "-e", "INSECURE_TLS=true",
                "--entrypoint", "/usr/bin/cdi-source-update-poller", IMAGE,
                "-ns", "golden", "-cron", "centos-cron", "-url", url]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=PODMAN_ENV)
        assert r.returncode == 0, r.stderr
        digest = api.annotations("golden", "centos-cron")[
            "cdi.kubevirt.io/storage.import.sourceDesiredDigest"]
        assert digest.startswith("sha256:") and digest in term.read_text()
        # --help answers, as every program of the image does
        r = subprocess.run(["podman", "run", "--rm", "--pull", "never", "--entrypoint",
                            "/usr/bin/cdi-source-update-poller", IMAGE, "--help"],
                           capture_output=True, text=True, timeout=120, env=PODMAN_ENV)
        assert r.returncode == 0 and "-cron NAME" in r.stdout, r.stderr


def test_ovirt_populator_as_the_forklift_controller_runs_it(tmp_path: Path, ovirt: Ovirt) -> None:
    """CDI's populator pod: command `ovirt-populator` (found on PATH), its flags, the secret's
    keys as environment (envFrom), uid 107, the PVC at /mnt, progress on :8443 (here another
    port: host networking)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    os.chown(mnt, 107, 107)
    port = free_port()
    argv = ["podman", "run", "--rm", "--pull", "never", "--user", "107", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--network", "host", "--read-only",
            "--tmpfs", "/tmp", "-v", f"{mnt}:/mnt:rw",
            "-e", f"user={FakeEngine.USER}", "-e", f"password={FakeEngine.PASSWORD}",
            "-e", f"cacert={ovirt.pki.ca_file.read_text()}", "-e", "insecureSkipVerify=false",
            "-e", f"IMPORTER_METRICS_PORT={port}",
            "--entrypoint", "ovirt-populator", IMAGE,
            "--volume-path=/mnt/disk.img", "--secret-name=ovirt-creds",
            f"--disk-id={ovirt.cold.id}", f"--engine-url={ovirt.engine.url}",
            "--owner-uid=pvc-uid", f"--pvc-size={1 << 30}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=PODMAN_ENV)
    assert r.returncode == 0, r.stderr
    assert same_disk(mnt / "disk.img", ovirt.cold_image)
    assert FakeEngine.PASSWORD not in r.stderr
    r = subprocess.run(["podman", "run", "--rm", "--pull", "never", "--entrypoint",
                        "ovirt-populator", IMAGE, "--help"], capture_output=True, text=True,
                       timeout=120, env=PODMAN_ENV)
    assert r.returncode == 0 and "--engine-url" in r.stdout, r.stderr


def test_openstack_populator_as_the_forklift_controller_runs_it(tmp_path: Path, glance: Glance,
                                                                images: Images) -> None:
    """CDI's populator pod for an OpenstackVolumePopulator: command `openstack-populator` from
    the importer image, `--volume-path --endpoint --secret-name --image-id --owner-uid
    --pvc-size`, the secret's keys as environment (envFrom; passed by name here, so no secret
    is in podman's argv), uid 107 with every capability dropped, the PVC at /mnt."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    os.chown(mnt, 107, 107)
    secret = glance.cloud.secret()
    argv = ["podman", "run", "--rm", "--pull", "never", "--user", "107", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--network", "host", "--read-only",
            "--tmpfs", "/tmp", "-v", f"{mnt}:/mnt:rw",
            *[a for key in secret for a in ("-e", key)],
            "-e", f"IMPORTER_METRICS_PORT={free_port()}",
            "--entrypoint", "openstack-populator", IMAGE,
            "--volume-path=/mnt/disk.img", f"--endpoint={glance.cloud.keystone_tls}",
            "--secret-name=openstack-creds", f"--image-id={glance.qcow2_id}",
            "--owner-uid=pvc-uid", f"--pvc-size={1 << 30}"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                       env={**PODMAN_ENV, **secret})
    assert r.returncode == 0, r.stderr
    assert same_disk(mnt / "disk.img", images.raw)
    assert secret["password"] not in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(["podman", "run", "--rm", "--pull", "never", "--entrypoint",
                        "openstack-populator", IMAGE, "--help"], capture_output=True, text=True,
                       timeout=120, env=PODMAN_ENV)
    assert r.returncode == 0 and "--image-id" in r.stdout, r.stderr


@pytest.mark.parametrize("program", ["cdi-importer", "cdi-containerimage-server",
                                     "cdi-image-size-detection", "cdi-source-update-poller",
                                     "openstack-populator", "ovirt-populator"])
def test_every_program_of_cdi_s_importer_image_answers_help(program: str) -> None:
    """The six programs CDI runs from its importer image (cmd/cdi-importer/BUILD.bazel), at
    their paths, each answering -help as Go's flag package does (usage, exit 0)."""
    r = subprocess.run(["podman", "run", "--rm", "--pull", "never", "--entrypoint",
                        f"/usr/bin/{program}", IMAGE, "-help"], capture_output=True, text=True,
                       timeout=120, env=PODMAN_ENV)
    assert r.returncode == 0 and "usage" in r.stdout.lower(), (r.stdout, r.stderr)


def test_the_image_runs_the_cli_too(tmp_path: Path, images: Images) -> None:
    """`podman run IMAGE import SOURCE DEST` (README): the pod stays the entrypoint CDI starts,
    and a command after it runs the CLI, as the image's user."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(images["disk.qcow2"], work / "disk.qcow2")
    os.chown(work, 107, 107)
    r = subprocess.run(["podman", "run", "--rm", "--pull", "never", "--read-only", "-v",
                        f"{work}:/work:rw", IMAGE, "import", "/work/disk.qcow2",
                        "/work/disk.img", "-o", "json"], capture_output=True, text=True,
                       timeout=300, env=PODMAN_ENV)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["format"] == "qcow2"
    assert same_disk(images.raw, work / "disk.img")
