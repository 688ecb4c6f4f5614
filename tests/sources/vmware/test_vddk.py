"""VMware VDDK imports against a vCenter simulator (vcsim, extended with changed block tracking)
and the real nbdkit running a stand-in for its vddk plugin (VDDK cannot be redistributed): cold
copies by block status to a file and a loop device, three warm stages (snapshot to snapshot,
then by change ID) with paged changed areas, and the failures: wrong password, wrong thumbprint,
an unknown VM or disk, nbdkit dying mid-copy, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, importer_cli, loop_device, same_disk

from .fixtures import SIZE, VMware

pytestmark = pytest.mark.timeout(180)


def _nbdkit_running() -> list[str]:
    r = subprocess.run(["pgrep", "-af", "importer-vddk-"], capture_output=True, text=True)
    return [ln for ln in r.stdout.splitlines() if "nbdkit" in ln]


def test_cold_copy_by_block_status_keeps_holes(vmware: VMware, tmp_path: Path) -> None:
    dest = tmp_path / "disk.img"
    r = importer_cli("import", *vmware.cli_args(), str(dest), "-o", "json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert same_disk(dest, vmware.stages[3])
    assert result["plan"] == "ranges" and "map of data and zero extents" in result["plan_reason"]
    data = os.stat(vmware.stages[3]).st_blocks * 512
    assert result["bytes_read"] <= data  # the holes were never read
    assert os.stat(dest).st_blocks * 512 <= data + (1 << 20)  # file system metadata aside
    assert result["details"]["vddkInfo"] == {"Version": "7.0.3",
                                              "Host": "esx-standin.example.test"}
    assert vmware.vc.password not in r.stderr + r.stdout
    assert not _nbdkit_running()


def test_cold_copy_onto_a_block_device(vmware: VMware, tmp_path: Path) -> None:
    with loop_device(tmp_path / "backing", SIZE, b"\xa5") as dev:
        r = importer_cli("import", *vmware.cli_args(), str(dev))
        assert r.returncode == 0, r.stderr
        assert same_disk(dev, vmware.stages[3])  # every zero run zeroed over the 0xa5


def test_three_warm_stages_equal_each_snapshot(vmware: VMware, tmp_path: Path) -> None:
    inv = vmware.inv
    dest = tmp_path / "disk.img"
    # stage 1: the disk at snapshot stage-1, whole; with VDDK's extra configuration, the
    # stand-in sees all ten keys CDI can pass
    config = tmp_path / "vddk-config-file"
    config.write_text("VixDiskLib.nfcAio.Session.BufSizeIn64KB=16\n")
    r = importer_cli("import", *vmware.cli_args("--checkpoint", "stage-1", "--vddk-config",
                                                 str(config)), str(dest), "-o", "json")
    assert r.returncode == 0, r.stderr
    assert same_disk(dest, vmware.stages[0])
    # stage 2: snapshot to snapshot (the change ID stage-1's disk recorded), by moref
    r = importer_cli("import", *vmware.cli_args("--checkpoint", inv.snapshots[1],
                                                 "--previous-checkpoint", "stage-1"),
                     str(dest), "-o", "json", "-v")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["plan"] == "delta"
    assert same_disk(dest, vmware.stages[1])
    # nine areas, three per answer: all three pages were asked for
    assert "changed areas: 3 page(s) of areas" in r.stderr
    changed = sum(n for _, n in json.loads(vmware.vc.areas.read_text())[
        f"{inv.snapshots[1]}|{inv.change_ids[0]}"])
    assert result["bytes_read"] <= changed
    # stage 3: by a change ID in CDI's format
    r = importer_cli("import", *vmware.cli_args("--checkpoint", "stage-3",
                                                 "--previous-checkpoint", inv.change_ids[1]),
                     str(dest), "-o", "json")
    assert r.returncode == 0, r.stderr
    assert same_disk(dest, vmware.stages[2])  # incl. a hole punched where there was data
    assert dest.stat().st_size == SIZE


def test_a_delta_needs_the_previous_stage_s_disk(vmware: VMware, tmp_path: Path) -> None:
    r = importer_cli("import", *vmware.cli_args("--checkpoint", "stage-2",
                                                 "--previous-checkpoint", "stage-1"),
                     str(tmp_path / "missing.img"))
    assert r.returncode == 1
    assert "Disk image does not exist, cannot apply deltas for warm migration" in r.stderr
    assert not (tmp_path / "missing.img").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"--password-file": "wrong"}, "refused the login of 'vmuser'"),
    ({"--thumbprint": "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33"},
     "thumbprint is"),
    ({"--vm-uuid": "4203e1a0-0000-0000-0000-000000000000"}, "unable to locate VM in any "
                                                             "datacenter"),
    ({"--backing-file": "[LocalDS_0] nowhere/disk9.vmdk"}, "disk [LocalDS_0] nowhere/disk9.vmdk "
                                                            "not found"),
    ({"--checkpoint": "stage-9"}, "snapshot stage-9 not found"),
])
def test_failures_are_named(vmware: VMware, tmp_path: Path, change: dict[str, str],
                            message: str) -> None:
    args = vmware.cli_args()
    for flag, value in change.items():
        if flag == "--password-file":
            (tmp_path / "pw").write_text(value)
            value = str(tmp_path / "pw")
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    r = importer_cli("import", *args, str(tmp_path / "d.img"))
    assert r.returncode == 1, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "d.img").exists() and not _nbdkit_running()


def test_nbdkit_dying_mid_copy_is_a_clear_error(vmware: VMware, tmp_path: Path) -> None:
    (vmware.libdir / "die-after-bytes").write_text(str(1 << 20))
    r = importer_cli("import", *vmware.cli_args(), str(tmp_path / "d.img"))
    assert r.returncode == 1
    assert "nbdkit stopped serving the VMware disk" in r.stderr, r.stderr
    assert "dying after" in r.stderr  # nbdkit's own last words are in the message
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "d.img").exists() and not (tmp_path / "d.img.partial").exists()


def test_sigterm_stops_nbdkit_and_exits_143(vmware: VMware, tmp_path: Path) -> None:
    (vmware.libdir / "delay-ms").write_text("300")
    dest = tmp_path / "d.img"
    p = subprocess.Popen([sys.executable, "-m", "importer", "import", *vmware.cli_args(),
                          str(dest)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _nbdkit_running():
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.05)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert not dest.exists() and not Path(str(dest) + ".partial").exists()
    time.sleep(0.5)
    assert not _nbdkit_running()


def test_the_pod_imports_a_vmware_disk(vmware: VMware, tmp_path: Path) -> None:
    """CDI's pod shape: the VDDK library under /opt/vmware-vix-disklib-distrib (here the
    stand-in's data), the stand-in plugin at CDI's test hook /opt/testing, the termination
    message with vddkInfo."""
    from tests.test_pod import Pod

    for d in ("data", "dev", "opt/testing", "certs"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "opt" / "vmware-vix-disklib-distrib").symlink_to(vmware.libdir)
    (tmp_path / "opt" / "testing" / "libvddk-test-plugin.so").symlink_to(vmware.plugin)
    (tmp_path / "certs" / "ca.pem").write_bytes(vmware.pki.ca_file.read_bytes())
    pod = Pod(tmp_path)
    env = {"IMPORTER_SOURCE": "vddk", "IMPORTER_ENDPOINT": vmware.vc.url,
           "IMPORTER_ACCESS_KEY_ID": vmware.vc.user, "IMPORTER_SECRET_KEY": vmware.vc.password,
           "IMPORTER_UUID": vmware.inv.uuid, "IMPORTER_BACKING_FILE": vmware.inv.backing_file,
           "IMPORTER_THUMBPRINT": vmware.vc.thumbprint, "IMPORTER_CERT_DIR": "/certs",
           "IMPORTER_IMAGE_SIZE": "64Mi"}
    code, err = pod.run(**env, IMPORTER_CURRENT_CHECKPOINT="stage-1")
    assert code == 0, err
    assert json.loads(pod.termination) == {
        "scratchSpaceRequired": False, "preallocationApplied": False,
        "vddkInfo": {"Version": "7.0.3", "Host": "esx-standin.example.test"},
        "message": "Import Complete"}
    assert same_disk(pod.data / "disk.img", vmware.stages[0])
    code, err = pod.run(**env, IMPORTER_CURRENT_CHECKPOINT="stage-2",
                        IMPORTER_PREVIOUS_CHECKPOINT="stage-1", IMPORTER_FINAL_CHECKPOINT="true")
    assert code == 0, err
    assert same_disk(pod.data / "disk.img", vmware.stages[1])
    assert vmware.vc.password not in err


def test_an_expired_session_is_logged_in_again(vmware: VMware) -> None:
    from importer.sources.vmware.inventory import VSphere

    sphere = VSphere(vmware.vc.url, vmware.vc.user, vmware.vc.password,
                     thumbprint=vmware.vc.thumbprint, ca_dirs=[], insecure=False)
    try:
        sphere._si.content.sessionManager.Logout()  # as an expired session looks
        assert sphere.find_vm(vmware.inv.uuid)._moId == vmware.vc.vm_moref
    finally:
        sphere.close()


def test_arm64_is_refused_as_cdi_does(vmware: VMware, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
    import platform

    from importer.config import build_config
    from importer.errors import SourceError
    from importer.sources.vddk import VddkSource

    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    cfg = build_config(source=vmware.vc.url, dest=str(tmp_path / "d.img"), source_kind="vddk",
                       username="u", password="p", vm_uuid="x", backing_file="[ds] x.vmdk")
    with pytest.raises(SourceError, match="the arm64 architecture does not support VDDK"):
        VddkSource(cfg)
