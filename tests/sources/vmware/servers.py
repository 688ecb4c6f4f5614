"""The VMware world of the VDDK tests, all real programs built here:
* vcsim (govmomi's vCenter simulator, built from Debian's Go sources) extended with changed
  block tracking and a paged QueryChangedDiskAreas (vcsim/main.go);
* nbdkit with a stand-in for its vddk plugin (plugin/vddk-standin.c), which checks CDI's
  argument contract and serves a disk file per (file, snapshot);
* the disk at each snapshot as files, and the changed areas between them."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
GO_CACHE = Path("/var/tmp/importer-test-gocache")
GOPATH_DEBIAN = Path("/usr/share/gocode")
BLOCK = 64 << 10


def build_standin(out: Path) -> Path:
    if not Path("/usr/include/nbdkit-plugin.h").exists():
        pytest.skip("nbdkit-plugin-dev is not installed (run scripts/setup.sh)")
    so = out / "libvddk-test-plugin.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(so),
                    str(HERE / "plugin" / "vddk-standin.c")], check=True, capture_output=True)
    return so


def build_vcsim(out: Path) -> Path:
    if not shutil.which("go") or not (GOPATH_DEBIAN / "src/github.com/vmware/govmomi").is_dir():
        pytest.skip("golang-go and golang-github-vmware-govmomi-dev are not installed "
                    "(run scripts/setup.sh)")
    src = out / "gopath" / "src" / "vcsimcbt"
    src.mkdir(parents=True)
    shutil.copy(HERE / "vcsim" / "main.go", src / "main.go")
    exe = out / "vcsimcbt"
    GO_CACHE.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(out), "GOPATH": f"{out / 'gopath'}:"
           f"{GOPATH_DEBIAN}", "GO111MODULE": "off", "GOPROXY": "off", "GOCACHE": str(GO_CACHE)}
    subprocess.run(["go", "build", "-o", str(exe), "vcsimcbt"], check=True, capture_output=True,
                   env=env, cwd=out, timeout=600)
    return exe


@dataclasses.dataclass
class Vcsim:
    proc: subprocess.Popen[str]
    url: str  # https://127.0.0.1:PORT/sdk
    vm_moref: str
    areas: Path
    thumbprint: str  # SHA-1 of its certificate, AA:BB:...
    user: str = "vmuser"
    password: str = "vm-s3cret"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def start_vcsim(exe: Path, work: Path, *, cert: Path, key: Path, capacity: int,
                page: int = 3) -> Vcsim:
    """`page`: changed areas per answer (vSphere gives up to ~2000; the tests use 3 so a few
    areas make several pages)."""
    areas = work / "areas.json"
    areas.write_text("{}")
    proc = subprocess.Popen([str(exe), "-l", "127.0.0.1:0", "-username", "vmuser", "-password",
                             "vm-s3cret", "-cert", str(cert), "-key", str(key), "-capacity",
                             str(capacity), "-areas", str(areas), "-page", str(page)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    found: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while len(found) < 2 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        k, _, v = line.strip().partition("=")
        found[k] = v
    if "URL" not in found:
        proc.kill()
        raise RuntimeError("vcsim did not start")
    url = found["URL"].replace("vmuser:vm-s3cret@", "")
    host, port = url.split("//")[1].split("/")[0].split(":")
    der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((host, int(port))))
    digest = hashlib.sha1(der).hexdigest().upper()
    thumb = ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))
    return Vcsim(proc, url, found["VM"], areas, thumb)


@dataclasses.dataclass
class VmInventory:
    uuid: str  # BIOS UUID
    instance_uuid: str
    backing_file: str
    snapshots: list[str]  # stage-1.. morefs
    change_ids: list[str]  # what each snapshot's disk recorded


def read_inventory(vc: Vcsim) -> VmInventory:
    from pyVim.connect import Disconnect, SmartConnect
    from pyVmomi import vim

    host, port = vc.url.split("//")[1].split("/")[0].split(":")
    si = SmartConnect(host=host, port=int(port), user=vc.user, pwd=vc.password,
                      sslContext=ssl._create_unverified_context())
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine],
                                                       True)
        vm = next(v for v in view.view if v._moId == vc.vm_moref)
        disk = next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))

        def walk(trees: list[object]) -> Iterator[object]:
            for t in trees:
                yield t
                yield from walk(t.childSnapshotList)  # type: ignore[attr-defined]

        snaps = sorted(walk(vm.snapshot.rootSnapshotList), key=lambda t: t.name)  # type: ignore[attr-defined]
        changes = []
        for t in snaps:
            d = next(x for x in t.snapshot.config.hardware.device  # type: ignore[attr-defined]
                     if isinstance(x, vim.vm.device.VirtualDisk))
            changes.append(d.backing.changeId)
        return VmInventory(vm.config.uuid, vm.config.instanceUuid, disk.backing.fileName,
                           [t.snapshot._moId for t in snaps], changes)  # type: ignore[attr-defined]
    finally:
        Disconnect(si)


def mangle(file: str) -> str:
    """The stand-in plugin's file name for a VMware disk path."""
    return "".join("_" if c in "/ []" else c for c in file)


def changed_areas(a: Path, b: Path) -> list[list[int]]:
    """64 KiB blocks that differ between two disk files, merged into areas."""
    out: list[list[int]] = []
    with open(a, "rb") as fa, open(b, "rb") as fb:
        pos = 0
        while True:
            x, y = fa.read(BLOCK), fb.read(BLOCK)
            if not x and not y:
                break
            if x != y:
                if out and out[-1][0] + out[-1][1] == pos:
                    out[-1][1] += BLOCK
                else:
                    out.append([pos, BLOCK])
            pos += BLOCK
    return out


def write(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def punch(path: Path, offset: int, length: int) -> None:
    subprocess.run(["fallocate", "-p", "-o", str(offset), "-l", str(length), str(path)],
                   check=True)


def sparse_copy(a: Path, b: Path) -> None:
    subprocess.run(["cp", "--sparse=always", str(a), str(b)], check=True)


def make_stages(disks: Path, backing: str, inv: VmInventory, size: int) -> list[Path]:
    """The disk at stage-1..3 and now, as the stand-in serves them; returns [s1, s2, s3, now]."""
    disks.mkdir(parents=True, exist_ok=True)
    name = mangle(backing)
    s1 = disks / f"{name}@{inv.snapshots[0]}.raw"
    with open(s1, "wb") as f:
        f.truncate(size)
    write(s1, 1 << 20, os.urandom(3 << 20))
    write(s1, 20 << 20, b"\x5c" * (1 << 20))
    write(s1, 40 << 20, os.urandom(2 << 20))
    s2 = disks / f"{name}@{inv.snapshots[1]}.raw"
    sparse_copy(s1, s2)
    for i in range(8):  # eight scattered changes: three pages of areas
        write(s2, (5 + 4 * i) << 20, os.urandom(100 << 10))
    write(s2, 20 << 20, bytes(1 << 20))  # zeros written over data
    s3 = disks / f"{name}@{inv.snapshots[2]}.raw"
    sparse_copy(s2, s3)
    punch(s3, 40 << 20, 1 << 20)  # a hole where there was data
    write(s3, size - (1 << 20), os.urandom(1 << 20))
    now = disks / f"{name}.raw"
    sparse_copy(s3, now)
    write(now, 0, os.urandom(64 << 10))
    return [s1, s2, s3, now]
