"""`-O/--output-format` and `-c`: a CI conversion job's outputs, through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, Images, Nginx, importer_cli


def _info(path: Path) -> dict[str, object]:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def _same_guest(a: Path, b: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", str(a), str(b)],
                          check=False).returncode == 0


@pytest.mark.parametrize(("fmt", "extra", "expect"), [
    ("qcow2", [], "qcow2"),
    ("qcow2", ["-c"], "qcow2"),
    ("vmdk", [], "vmdk"),
    ("vmdk", ["--compress"], "vmdk"),
    ("vhdx", [], "vhdx"),
    ("vdi", [], "vdi"),
    ("vpc", [], "vpc"),
])
def test_each_output_format_holds_the_same_disk(nginx: Nginx, images: Images, tmp_path: Path,
                                                fmt: str, extra: list[str], expect: str) -> None:
    out = tmp_path / f"d.{'vhd' if fmt == 'vpc' else fmt}"
    r = importer_cli("import", nginx.url("disk.qcow2"), out, "-O", fmt, *extra, "-o", "json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["output_format"] == fmt and result["destination"] == str(out)
    info = _info(out)
    assert info["format"] == expect
    assert _same_guest(out, images.raw)
    assert result["bytes_written"] == out.stat().st_blocks * 512
    if extra and fmt == "qcow2":
        assert info["format-specific"]["data"]["compression-type"] == "zlib"  # type: ignore[index]
        plain = tmp_path / "plain.qcow2"
        assert importer_cli("import", nginx.url("disk.qcow2"), plain, "-O", fmt).returncode == 0
        assert out.stat().st_size < plain.stat().st_size
    if extra and fmt == "vmdk":
        assert info["format-specific"]["data"]["create-type"] == "streamOptimized"  # type: ignore[index]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name] + (["plain.qcow2"] if extra and fmt == "qcow2" else []))  # no work files


def test_a_compressed_source_into_qcow2_with_scratch_dir(nginx: Nginx, images: Images,
                                                         tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "d.qcow2"
    r = importer_cli("import", nginx.url("disk.raw.xz"), out, "-O", "qcow2",
                     "--scratch-dir", scratch, "--image-size", "64Mi")
    assert r.returncode == 0, r.stderr
    assert "as qcow2" in r.stdout
    assert _info(out)["virtual-size"] == 64 << 20
    assert list(scratch.iterdir()) == []
    assert _same_guest(out, images.raw)  # qemu-img compare: a grown tail reads as zeros


def test_output_options_that_cannot_work_are_refused(nginx: Nginx, tmp_path: Path) -> None:
    r = importer_cli("import", nginx.url("disk.qcow2"), tmp_path / "d.vhdx", "-O", "vhdx", "-c")
    assert r.returncode == 2 and "vhdx has no compressed form" in r.stderr
    r = importer_cli("import", nginx.url("disk.qcow2"), "-", "-O", "qcow2")
    assert r.returncode == 2 and "standard output takes raw" in r.stderr
    r = importer_cli("import", nginx.url("disk.qcow2"), tmp_path / "d.qcow2", "-O", "qcow2",
                     "--preallocation")
    assert r.returncode == 2 and "--preallocation applies to raw output" in r.stderr
    r = importer_cli("import", nginx.url("disk.qcow2"), tmp_path / "tree", "-O", "qcow2",
                     "--content-type", "archive")
    assert r.returncode == 2 and "extracts files into a directory" in r.stderr
    pw = tmp_path.parent / "pw"
    pw.write_text("secret\n")
    r = importer_cli("import", "--source", "vddk", "https://127.0.0.1:1/sdk", tmp_path / "w.qcow2",
                     "-O", "qcow2", "--vm-uuid", "u", "--backing-file", "[ds] vm/vm.vmdk",
                     "--checkpoint", "s2", "--previous-checkpoint", "s1", "--username", "u",
                     "--password-file", pw)
    assert r.returncode == 2 and "import warm stages as raw" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_name_that_says_another_format_is_warned(nginx: Nginx, images: Images,
                                                   tmp_path: Path) -> None:
    r = importer_cli("import", nginx.url("disk.qcow2"), tmp_path / "d.raw", "-O", "qcow2")
    assert r.returncode == 0 and "d.raw is named like another format, but qcow2 is written; " \
        "leave -O out for raw" in r.stderr
    r = importer_cli("import", nginx.url("disk.qcow2"), tmp_path / "e.qcow2")
    assert r.returncode == 0 and "but raw is written; add -O qcow2" in r.stderr
    r = importer_cli("import", nginx.url("disk.qcow2"), tmp_path / "f.img", "-O", "qcow2")
    assert r.returncode == 0 and "named like" not in r.stderr  # .img is either


def test_a_failed_conversion_job_leaves_the_old_file_and_no_litter(nginx: Nginx,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "d.qcow2"
    out.write_bytes(b"the previous build")
    r = importer_cli("import", nginx.url("missing.qcow2"), out, "-O", "qcow2", "--force",
                     "--retries", "0")
    assert r.returncode == 1, r.stderr
    assert out.read_bytes() == b"the previous build"
    assert [p.name for p in tmp_path.iterdir()] == ["d.qcow2"]


def test_qemu_img_writes_the_format_at_once_when_it_converts_anyway(
        nginx: Nginx, images: Images, tmp_path: Path) -> None:
    """vdi (the convert plan) -> qcow2 in one qemu-img pass; qcow2 and vmdk (the native
    readers) go through the raw copy; a disk that must grow takes the raw copy too."""
    out = tmp_path / "v.qcow2"
    r = importer_cli("import", nginx.url("disk.vdi"), out, "-O", "qcow2", "-v", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert "qemu-img writes qcow2 at once (no raw copy)" in r.stderr
    assert "from the raw copy" not in r.stderr
    result = json.loads(r.stdout)
    assert (result["plan"], result["output_format"]) == ("convert", "qcow2")
    assert _info(out)["format"] == "qcow2" and _same_guest(out, images.raw)
    assert result["zero_bytes_skipped"] > 0
    assert result["bytes_written"] == out.stat().st_blocks * 512
    r = importer_cli("import", nginx.url("disk.qcow2"), tmp_path / "q.vmdk", "-O", "vmdk", "-v")
    assert r.returncode == 0 and "qemu-img writes vmdk from the raw copy" in r.stderr
    grown = tmp_path / "g.qcow2"
    r = importer_cli("import", nginx.url("disk.vdi"), grown, "-O", "qcow2", "-v",
                     "--image-size", "64Mi")
    assert r.returncode == 0 and "from the raw copy" in r.stderr, r.stderr
    assert _info(grown)["virtual-size"] == 64 << 20 and _same_guest(grown, images.raw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.qcow2", "q.vmdk", "v.qcow2"]


def test_a_local_file_goes_straight_to_qemu_img_and_must_not_change(
        images: Images, tmp_path: Path) -> None:
    """-O from a local file (issue 24 item 5): qemu-img reads it by its path after the same
    inspection (no raw copy), with the driver pinned and no backing file; a file changed while
    it was read is refused and DEST stays as it was."""
    out = tmp_path / "d.vmdk"
    r = importer_cli("import", images["disk.qcow2"], out, "-O", "vmdk", "-v", "-o", "json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert (result["plan"], result["converter"]) == ("convert", "qemu-img")
    assert "from the raw copy" not in r.stderr and '"backing": null' in r.stderr
    assert _same_guest(out, images.raw)
    # a file written to while qemu-img reads it: a slow writer appends behind its back
    src = tmp_path / "busy.qcow2"
    src.write_bytes(images["disk.qcow2"].read_bytes())
    writer = subprocess.Popen([sys.executable, "-c", (
        "import time\nfor _ in range(400):\n"
        f"    open({str(src)!r}, 'ab').write(bytes(512)); time.sleep(0.005)\n")])
    try:
        r = importer_cli("import", src, tmp_path / "busy.vmdk", "-O", "vmdk")
    finally:
        writer.wait(30)
    assert r.returncode != 0 and "changed while it was read" in r.stderr, r.stderr
    assert not (tmp_path / "busy.vmdk").exists()


def _children_named(pid: int, name: str) -> list[int]:
    """Processes whose parent is `pid` and whose command line holds `name`."""
    import os

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if ppid == pid and name.encode() in cmdline:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False


def _slow_output_import(nginx: Nginx, out: Path) -> subprocess.Popen[str]:
    """An -O qcow2 import of a vdi served slowly (qemu-img converts it as it comes)."""
    return subprocess.Popen([sys.executable, "-m", "importer", "import",
                             nginx.url("crawl/disk.vdi"), str(out), "-O", "qcow2"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)


def test_two_output_imports_to_one_dest_exclude_each_other(nginx: Nginx, images: Images,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "d.qcow2"
    first = _slow_output_import(nginx, out)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "d.qcow2.partial").exists():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        second = importer_cli("import", nginx.url("disk.raw"), out, "-O", "qcow2", "--force")
        assert second.returncode == 1 and "another import is writing" in second.stderr, \
            second.stderr
    finally:
        first.kill()
        first.communicate()


def test_sigkill_during_output_import_kills_qemu_img_and_the_next_run_cleans_up(
        nginx: Nginx, images: Images, tmp_path: Path) -> None:
    """qemu-img dies with us (PR_SET_PDEATHSIG), and the work directory a SIGKILL left is
    removed by the next run to the same DEST (it was not)."""
    import signal

    out = tmp_path / "d.qcow2"
    proc = _slow_output_import(nginx, out)
    try:
        deadline = time.monotonic() + 60
        while not (qemu := _children_named(proc.pid, "qemu-img")):
            assert time.monotonic() < deadline and proc.poll() is None, "no qemu-img seen"
            time.sleep(0.05)
        time.sleep(0.5)  # it is writing
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        deadline = time.monotonic() + 10
        while _alive(qemu[0]):
            assert time.monotonic() < deadline, "qemu-img outlived the importer"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert any(n.startswith(".d.qcow2.") and n.endswith(".importer") for n in left), left
    r = importer_cli("import", nginx.url("disk.vdi"), out, "-O", "qcow2")
    assert r.returncode == 0, r.stderr
    assert "left behind by an interrupted import" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.qcow2"]
    assert _same_guest(out, images.raw)
