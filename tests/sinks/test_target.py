"""The destination as a hostile neighbour or an unlucky operator leaves it: planted symlinks,
two imports at once, leftovers of a killed import (issue 9, items 2, 3 and 14)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from importer.config import build_config
from importer.engine import run_import
from importer.errors import TargetError
from importer.sinks.target import Target, dest_kind
from tests.conftest import ROOT, Images, Nginx, importer_cli, same_disk


def test_planted_partial_symlink_is_never_followed(images: Images, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    dest = tmp_path / "disk.img"
    (tmp_path / "disk.img.partial").symlink_to(victim)
    with pytest.raises(TargetError, match="symbolic link, which is never followed"):
        run_import(build_config(source=str(images["disk.qcow2"]), dest=str(dest)))
    assert victim.read_bytes() == b"precious"  # not truncated, not written, not removed
    assert (tmp_path / "disk.img.partial").is_symlink() and not dest.exists()


def test_planted_symlink_at_dest_is_neither_replaced_nor_followed(images: Images,
                                                                  tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    dest = tmp_path / "disk.img"
    dest.symlink_to(victim)
    with pytest.raises(TargetError, match="is a symbolic link to"):
        run_import(build_config(source=str(images["disk.raw"]), dest=str(dest)))
    assert victim.read_bytes() == b"precious"
    assert dest.is_symlink() and not (tmp_path / "disk.img.partial").exists()


def test_a_link_to_a_character_device_is_never_a_file_target(tmp_path: Path) -> None:
    link = tmp_path / "disk.img"
    link.symlink_to("/dev/null")  # only classified: nothing is opened or written
    assert dest_kind(link) == "stream"
    with pytest.raises(TargetError, match="character device or FIFO"):
        Target(link)


def test_stale_partial_of_a_killed_import_is_removed(images: Images, tmp_path: Path) -> None:
    dest = tmp_path / "disk.img"
    (tmp_path / "disk.img.partial").write_bytes(b"left by a SIGKILL" * 1000)
    run_import(build_config(source=str(images["disk.qcow2"]), dest=str(dest)))
    assert same_disk(dest, images.raw) and not (tmp_path / "disk.img.partial").exists()


def test_a_locked_partial_is_another_import(images: Images, tmp_path: Path) -> None:
    dest = tmp_path / "disk.img"
    holder = Target(dest)
    holder.open()
    try:
        with pytest.raises(TargetError, match="another import is writing"):
            run_import(build_config(source=str(images["disk.raw"]), dest=str(dest)))
        assert (tmp_path / "disk.img.partial").exists()  # the other import's file is kept
    finally:
        holder.abort()
    assert not (tmp_path / "disk.img.partial").exists()


def _slow_import(url: str, dest: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "importer", "import", url, str(dest),
                             "--connections", "1"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_second_import_to_the_same_destination_fails_at_once(nginx: Nginx, images: Images,
                                                             tmp_path: Path) -> None:
    dest = tmp_path / "disk.img"
    first = _slow_import(nginx.url("crawl/disk.raw.gz"), dest)
    try:
        _wait_for(tmp_path / "disk.img.partial")
        started = time.monotonic()
        second = importer_cli("import", nginx.url("disk.raw"), dest, timeout=60)
        assert time.monotonic() - started < 10
        assert second.returncode == 1
        assert "another import is writing" in second.stderr and "Traceback" not in second.stderr
        _out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.kill()
    assert same_disk(dest, images.raw)


def test_sigkill_during_conversion_leaves_nothing_that_blocks_the_next_run(
        nginx: Nginx, images: Images, tmp_path: Path) -> None:
    dest = tmp_path / "disk.img"
    sockets_before = set(Path(tempfile.gettempdir()).glob("importer-nbd-*"))
    proc = _slow_import(nginx.url("crawl/disk.qcow2"), dest)  # converted over NBD, slowly
    try:
        _wait_for(tmp_path / "disk.img.partial", timeout=60)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert (tmp_path / "disk.img.partial").exists()  # what SIGKILL leaves; the next run cleans
    # the NBD export lives on socketpairs: no socket directory outlives the process
    assert set(Path(tempfile.gettempdir()).glob("importer-nbd-*")) == sockets_before
    again = importer_cli("import", nginx.url("disk.qcow2"), dest, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "interrupted import" in again.stderr
    assert same_disk(dest, images.raw) and not (tmp_path / "disk.img.partial").exists()


def test_preallocation_without_fallocate_fills_only_the_holes(
        nginx: Nginx, images: Images, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Some file systems (NFS, older FUSE) refuse fallocate; this stands in for one. The
    # fallback ran again after the data and wrote zeros from byte 0, wiping the image.
    import errno

    def no_fallocate(*_a: object) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", no_fallocate)
    for name in ("disk.raw.gz", "disk.qcow2"):
        dest = tmp_path / f"{name}.img"
        run_import(build_config(source=nginx.url(name), dest=str(dest), preallocation=True,
                                image_size="32Mi"))
        data = dest.read_bytes()
        assert len(data) == 32 << 20 and data[: images.raw.stat().st_size] == images.raw.read_bytes()
        assert dest.stat().st_blocks * 512 >= 32 << 20  # every block allocated


# ------------------------------------------------------------------ modes (issue 10)

def test_apply_mode_writes_onto_an_existing_disk_without_truncating(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"A" * 8192)
    target = Target(disk, mode="apply")
    with target.writing():
        os.pwrite(target.fd, b"B" * 512, 4096)
    assert disk.read_bytes() == b"A" * 4096 + b"B" * 512 + b"A" * 3584
    assert not (tmp_path / "disk.img.partial").exists()


def test_apply_mode_keeps_the_disk_when_the_stage_fails(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"A" * 4096)
    target = Target(disk, mode="apply")
    with pytest.raises(RuntimeError), target.writing():
        os.pwrite(target.fd, b"B" * 512, 0)
        raise RuntimeError("the stage broke")
    assert disk.read_bytes() == b"B" * 512 + b"A" * 3584  # not removed: the base of a retry


def test_apply_mode_needs_the_disk(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="does not exist"), \
            Target(tmp_path / "missing.img", mode="apply").writing():
        pass


def test_create_mode_aborts_in_one_place(tmp_path: Path) -> None:
    dest = tmp_path / "disk.img"
    target = Target(dest)
    with pytest.raises(RuntimeError), target.writing():
        os.pwrite(target.fd, b"data", 0)
        raise RuntimeError("failed")
    assert list(tmp_path.iterdir()) == []
    with Target(dest).writing() as t:
        os.pwrite(t.fd, b"data", 0)
    assert dest.read_bytes() == b"data"
