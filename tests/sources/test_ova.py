"""OVA appliances (issue 23): the disk read straight out of the tar, from a file (at random),
from standard input and from nginx without ranges (in order), with the manifest checked, a
gzip-compressed reference, several disks, inspect's listing, and hostile appliances."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ..conftest import Images, Nginx, importer_cli, run
from ..ova_images import OvaDisk, make_ova

CAPACITY = 24 << 20  # the seed disk's virtual size


def _raw_of(vmdk: Path, out: Path) -> Path:
    run("qemu-img", "convert", "-f", "vmdk", "-O", "raw", vmdk, out)
    return out


@pytest.fixture(scope="module")
def appliances(images: Images, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """OVAs in the directory nginx serves: VMware's shape (one streamOptimized disk), and
    VirtualBox's (a streamOptimized and a gzip-compressed monolithicSparse disk)."""
    work = tmp_path_factory.mktemp("ova")
    so, ms = images["disk-so.vmdk"], images["disk-ms.vmdk"]
    made = {}
    for name, disks, kw in [
        ("appliance-one", [OvaDisk(so, CAPACITY)], {}),
        ("appliance-two", [OvaDisk(so, CAPACITY), OvaDisk(ms, CAPACITY, gzip=True)],
         {"style": "vbox"}),
        ("appliance-pax", [OvaDisk(so, CAPACITY)], {"pax": True, "manifest": False}),
        ("appliance-bad-disk", [OvaDisk(so, CAPACITY)],
         {"bad_digest_for": "appliance-bad-disk-disk1.vmdk"}),
        ("appliance-bad-ovf", [OvaDisk(so, CAPACITY)],
         {"bad_digest_for": "appliance-bad-ovf.ovf"}),
    ]:
        out = work / f"{name}.ova"
        make_ova(out, name, disks, **kw)  # type: ignore[arg-type]
        made[name] = out
        os.link(out, images.dir / out.name)  # nginx serves the images directory
    made["so.raw"] = _raw_of(so, work / "so.raw")
    made["ms.raw"] = _raw_of(ms, work / "ms.raw")
    return made


def _json(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_one_disk_from_a_file_is_read_in_place_and_checked(appliances: dict[str, Path],
                                                           tmp_path: Path) -> None:
    result = _json(importer_cli("import", "-o", "json", appliances["appliance-one"],
                                tmp_path / "d.img"))
    assert (tmp_path / "d.img").read_bytes() == appliances["so.raw"].read_bytes()
    assert result["format"] == "vmdk" and result["plan"] == "stream"
    assert str(result["checksum"]).startswith("sha256:")  # the manifest's digest, verified
    ova = result["details"]["ova"]  # type: ignore[index]
    assert ova["vm"] == "appliance-one" and ova["disk"] == "appliance-one-disk1.vmdk"
    assert ova["cpus"] == 2 and ova["memory"] == 2 << 30 and ova["capacity"] == CAPACITY
    assert result["staged_bytes"] == 0


def test_standard_input_and_a_server_without_ranges_stream_it(
        appliances: dict[str, Path], nginx: Nginx, tmp_path: Path) -> None:
    with open(appliances["appliance-one"], "rb") as f:
        done = importer_cli("import", "-o", "json", "-", tmp_path / "a.img", stdin=f)
    assert _json(done)["staged_bytes"] == 0
    assert (tmp_path / "a.img").read_bytes() == appliances["so.raw"].read_bytes()
    for url in (nginx.url("norange/appliance-one.ova"), nginx.url("appliance-one.ova")):
        result = _json(importer_cli("import", "-o", "json", url, tmp_path / "b.img", "--force"))
        assert result["staged_bytes"] == 0
        assert (tmp_path / "b.img").read_bytes() == appliances["so.raw"].read_bytes()


def test_several_disks_are_listed_and_one_is_picked(appliances: dict[str, Path],
                                                    tmp_path: Path) -> None:
    ova = appliances["appliance-two"]
    done = importer_cli("import", ova, tmp_path / "x.img")
    assert done.returncode != 0 and "holds 2 disks: 1 appliance-two-disk1.vmdk" in done.stderr
    assert "pick one with --disk N" in done.stderr and not (tmp_path / "x.img").exists()
    for choice, raw in (("2", "ms.raw"), ("appliance-two-disk1.vmdk", "so.raw"),
                        ("vmdisk2", "ms.raw")):
        dest = tmp_path / f"{choice}.img"
        result = _json(importer_cli("import", "-o", "json", "--disk", choice, ova, dest))
        assert dest.read_bytes() == appliances[raw].read_bytes(), choice
        if raw == "ms.raw":  # the gzip-compressed reference: inflated on the way
            assert result["compression"] == ["gzip"]
            assert str(result["checksum"]).startswith("sha1:")  # VirtualBox's manifest
    done = importer_cli("import", "--disk", "3", ova, tmp_path / "y.img")
    assert done.returncode != 0 and "has no disk '3'" in done.stderr


def test_inspect_lists_the_appliance(appliances: dict[str, Path]) -> None:
    info = _json(importer_cli("inspect", "-o", "json", appliances["appliance-two"]))
    appliance = info["appliance"]
    assert appliance["vm"] == "appliance-two" and appliance["cpus"] == 2  # type: ignore[index]
    disks = appliance["disks"]  # type: ignore[index]
    assert [d["file"] for d in disks] == ["appliance-two-disk1.vmdk",
                                          "appliance-two-disk2.vmdk.gz"]
    assert [d["capacity"] for d in disks] == [CAPACITY, CAPACITY]
    assert disks[1]["compression"] == "gzip" and info["format"] == "vmdk"


def test_a_manifest_that_disagrees_fails_and_writes_nothing(appliances: dict[str, Path],
                                                            tmp_path: Path) -> None:
    done = importer_cli("import", appliances["appliance-bad-disk"], tmp_path / "a.img")
    assert done.returncode != 0 and "checksum mismatch" in done.stderr
    done = importer_cli("import", appliances["appliance-bad-ovf"], tmp_path / "b.img")
    assert done.returncode != 0 and "appliance-bad-ovf.ovf does not match the manifest" \
        in done.stderr
    assert not list(tmp_path.iterdir())


def test_pax_headers_and_no_manifest(appliances: dict[str, Path], tmp_path: Path) -> None:
    done = importer_cli("import", appliances["appliance-pax"], tmp_path / "d.img")
    assert done.returncode == 0, done.stderr
    assert "has no manifest" in done.stderr
    assert (tmp_path / "d.img").read_bytes() == appliances["so.raw"].read_bytes()


def test_no_qemu_img_runs_on_the_ova_path(appliances: dict[str, Path], tmp_path: Path) -> None:
    """A qemu-img first on PATH that records being run: the appliance's VMDK is read by the
    native reader, on both paths (at random and in order)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    trap = bin_dir / "qemu-img"
    trap.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/qemu-img-ran\nexit 1\n")
    trap.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for args in (["--disk", "1"], ["--disk", "2"]):
        done = importer_cli("import", *args, appliances["appliance-two"],
                            tmp_path / f"d{args[1]}.img", env=env)
        assert done.returncode == 0, done.stderr
    assert not (tmp_path / "qemu-img-ran").exists()


def test_hostile_appliances_are_refused(appliances: dict[str, Path], tmp_path: Path) -> None:
    # a truncated OVA: the disk's member ends early, which is an error, never zeros
    whole = appliances["appliance-one"].read_bytes()
    cut = tmp_path / "cut.ova"
    cut.write_bytes(whole[: len(whole) - 40000])
    with open(cut, "rb") as f:
        done = importer_cli("import", "-", tmp_path / "a.img", stdin=f)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert not (tmp_path / "a.img").exists()
    # an entity in the descriptor: the XML parser refuses it, nothing is fetched or expanded
    work = tmp_path / "evil"
    work.mkdir()
    (work / "evil.ovf").write_text(
        '<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        '<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1">&x;</Envelope>')
    run("tar", "-cf", tmp_path / "evil.ova", "-C", work, "evil.ovf")
    done = importer_cli("import", tmp_path / "evil.ova", tmp_path / "b.img")
    assert done.returncode != 0 and "forbidden XML feature" in done.stderr, done.stderr
    # a checksum given for the whole file cannot be verified by reading one disk
    done = importer_cli("import", "--checksum", "sha256:" + "0" * 64,
                        appliances["appliance-one"], tmp_path / "c.img")
    assert done.returncode != 0 and "check the OVA itself" in done.stderr
    # --format ova on something else
    done = importer_cli("import", "--format", "ova", appliances["so.raw"], tmp_path / "d.img")
    assert done.returncode != 0 and "is not an OVA" in done.stderr
