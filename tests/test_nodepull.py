"""Registry node pull (docs/pod-contract.md 4.4.5): the static cdi-containerimage-server sidecar
(native/, built by the tests as the image builds it) serving an image directory on loopback,
and the importer pod waiting for its ready file, importing, reading /info and signalling done."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .conftest import Images, free_port, same_disk
from .test_pod import Pod


@dataclass
class Sidecar:
    proc: subprocess.Popen[bytes]
    port: int
    shared: Path

    @property
    def endpoint(self) -> str:
        return f"http://localhost:{self.port}/disk.img"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"


def _start(server: Path, image_dir: Path, shared: Path, **env: str) -> Sidecar:
    shared.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen([str(server), "-p", str(port), "-image-dir", str(image_dir),
                             "-ready-file", str(shared / "ready"), "-done-file",
                             str(shared / "done")], env={"PATH": "/usr/bin", **env},
                            stderr=subprocess.PIPE)
    return Sidecar(proc, port, shared)


@pytest.fixture
def sidecar(containerimage_server: Path, images: Images, tmp_path: Path) -> Iterator[Sidecar]:
    disk = tmp_path / "image" / "disk"
    disk.mkdir(parents=True)
    os.link(images["disk.qcow2"], disk / "fedora.qcow2")
    s = _start(containerimage_server, disk, tmp_path / "pod" / "shared",
               INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE="fedora", ODD='quote " back \\ nl \n')
    try:
        yield s
    finally:
        s.proc.kill()
        s.proc.wait()


def _wait_ready(s: Sidecar) -> None:
    import time

    for _ in range(200):
        if (s.shared / "ready").exists():
            return
        time.sleep(0.02)
    raise AssertionError(s.proc.stderr.read() if s.proc.stderr else "no ready file")


def test_server_speaks_http_with_ranges(sidecar: Sidecar, images: Images) -> None:
    _wait_ready(sidecar)
    assert (sidecar.shared / "ready").read_text() == "fedora.qcow2"
    data = images["disk.qcow2"].read_bytes()
    with httpx.Client(timeout=10) as c:  # one keep-alive connection for all of these
        assert c.get(sidecar.url("fedora.qcow2")).content == data
        r = c.get(sidecar.url("fedora.qcow2"), headers={"Range": "bytes=100-199"})
        assert r.status_code == 206 and r.content == data[100:200]
        assert r.headers["content-range"] == f"bytes 100-199/{len(data)}"
        assert c.get(sidecar.url("fedora.qcow2"), headers={"Range": "bytes=-10"}).content == \
            data[-10:]
        assert c.get(sidecar.url("fedora.qcow2"),
                     headers={"Range": f"bytes={len(data)}-"}).status_code == 416
        assert c.head(sidecar.url("fedora.qcow2")).headers["content-length"] == str(len(data))
        for bad in ("other.img", "..%2Fimage%2Fdisk%2Ffedora.qcow2", "%2e%2e/etc/passwd"):
            assert c.get(sidecar.url(bad)).status_code == 404, bad
        assert c.post(sidecar.url("fedora.qcow2")).status_code == 405
        env = c.get(sidecar.url("info")).json()["env"]
    assert "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=fedora" in env
    assert 'ODD=quote " back \\ nl \n' in env


@pytest.mark.parametrize("layout, message", [
    ({"a.img": b"a", "b.img": b"b"}, "more than one file"),
    ({}, "directory is empty"),
    ({"sub/": None}, "contains another directory"),
])
def test_server_refuses_bad_image_directories(containerimage_server: Path, tmp_path: Path,
                                              layout: dict[str, bytes | None], message: str) -> None:
    d = tmp_path / "disk"
    d.mkdir()
    for name, data in layout.items():
        if data is None:
            (d / name).mkdir()
        else:
            (d / name).write_bytes(data)
    s = _start(containerimage_server, d, tmp_path / "shared")
    _, err = s.proc.communicate(timeout=10)
    assert s.proc.returncode == 1 and message in err.decode()
    assert not (tmp_path / "shared" / "ready").exists()


def test_pod_node_pull(sidecar: Sidecar, images: Images, tmp_path: Path) -> None:
    pod = Pod(tmp_path / "pod")
    (pod.root / "data").mkdir()
    (pod.root / "dev").mkdir()
    code, err = pod.run(IMPORTER_SOURCE="http", IMPORTER_ENDPOINT=sidecar.endpoint,
                        IMPORTER_PULL_METHOD="node", IMPORTER_READY_FILE="/shared/ready",
                        IMPORTER_DONE_FILE="/shared/done")
    assert code == 0, err
    assert json.loads(pod.termination) == {
        "scratchSpaceRequired": False, "preallocationApplied": False,
        "labels": {"instancetype.kubevirt.io/default-preference": "fedora"},
        "message": "Import Complete"}
    assert same_disk(images.raw, pod.data / "disk.img")
    assert '"path": "extents"' in err  # qemu-img read the sidecar by range: no scratch
    sidecar.proc.wait(timeout=10)  # the done file makes it exit, removing both files
    assert sidecar.proc.returncode == 0
    assert not (sidecar.shared / "ready").exists() and not (sidecar.shared / "done").exists()


def test_pod_node_pull_times_out_without_ready_file(tmp_path: Path) -> None:
    pod = Pod(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "dev").mkdir()
    (tmp_path / "shared").mkdir()
    code, _ = pod.run(IMPORTER_SOURCE="http", IMPORTER_ENDPOINT="http://localhost:1/disk.img",
                      IMPORTER_PULL_METHOD="node", IMPORTER_READY_FILE="/shared/ready",
                      IMPORTER_DONE_FILE="/shared/done", IMPORTER_READY_TIMEOUT="1")
    assert code == 1
    assert pod.termination == "Timeout waiting for file /shared/ready"
    assert (tmp_path / "shared" / "done").exists()  # a sidecar that started late still exits
