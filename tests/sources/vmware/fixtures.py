"""The VMware world of these tests, one per session: vcsim with changed block tracking, the
stand-in vddk plugin for the real nbdkit, the disk at each snapshot, the changed areas."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..ovirt.servers import Pki, make_pki
from .servers import (
    Vcsim,
    VmInventory,
    build_standin,
    build_vcsim,
    changed_areas,
    make_stages,
    read_inventory,
    start_vcsim,
)

SIZE = 64 << 20


@dataclasses.dataclass
class VMware:
    vc: Vcsim
    inv: VmInventory
    pki: Pki
    plugin: Path
    libdir: Path
    stages: list[Path]  # the disk at stage-1, stage-2, stage-3, and now
    password_file: Path

    def cli_args(self, *extra: str, thumbprint: str | None = None) -> list[str]:
        return ["--source", "vddk", self.vc.url, "--vm-uuid", self.inv.uuid, "--backing-file",
                self.inv.backing_file, "--thumbprint", thumbprint or self.vc.thumbprint,
                "--username", self.vc.user, "--password-file", str(self.password_file),
                "--vddk-libdir", str(self.libdir), "--vddk-plugin", str(self.plugin), *extra]


@pytest.fixture(scope="session")
def vmware_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VMware]:
    work = tmp_path_factory.mktemp("vmware")
    pki = make_pki(work / "pki")
    plugin = build_standin(work)
    vc = start_vcsim(build_vcsim(work), work, cert=pki.server_pem, key=pki.server_key,
                     capacity=SIZE)
    try:
        inv = read_inventory(vc)
        libdir = work / "libdir"
        libdir.mkdir()
        (libdir / "password").write_text(vc.password)
        stages = make_stages(libdir / "disks", inv.backing_file, inv, SIZE)
        areas = {f"{inv.snapshots[k]}|{inv.change_ids[k - 1]}": changed_areas(stages[k - 1],
                                                                                stages[k])
                 for k in (1, 2)}
        vc.areas.write_text(json.dumps(areas))
        # readable by the pod's uid 107 when mounted into the container (tests/container)
        for path in (libdir, libdir / "disks", *libdir.rglob("*"), plugin):
            path.chmod(0o755 if path.is_dir() or path.suffix == ".so" else 0o644)
        pw = work / "password"
        pw.write_text(vc.password + "\n")
        yield VMware(vc, inv, pki, plugin, libdir, stages, pw)
    finally:
        vc.stop()


@pytest.fixture
def vmware(vmware_session: VMware) -> VMware:
    for knob in ("die-after-bytes", "delay-ms"):
        (vmware_session.libdir / knob).unlink(missing_ok=True)
    return vmware_session
