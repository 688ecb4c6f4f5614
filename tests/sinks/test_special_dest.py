"""DEST that is not a regular file (issue 19, item 1), through the real CLI: a device behind a
symlink is written, a character device or FIFO is written in order, and nothing that is not a
regular file is ever renamed over. Every node lives in the test's own temporary directory."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from ..conftest import SEED_SIZE, Images, Nginx, importer_cli, loop_device


def _mknod_char(path: Path, major: int, minor: int) -> Path:
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    return path


def test_a_block_device_behind_a_symlink_is_written(nginx: Nginx, images: Images,
                                                    tmp_path: Path) -> None:
    with loop_device(tmp_path / "backing", 32 << 20, b"\xa5") as dev:
        link = tmp_path / "vg-lv"  # as /dev/VG/LV or /dev/mapper/* are: a link to the device
        link.symlink_to(dev)
        r = importer_cli("import", nginx.url("disk.raw.gz"), link, "-o", "json")
        assert r.returncode == 0, r.stderr
        assert '"target_kind":"block"' in r.stdout
        assert link.is_symlink() and os.readlink(link) == str(dev)
        with open(dev, "rb") as f:
            assert f.read(SEED_SIZE) == images.raw.read_bytes()
            assert f.read(4096) == b"\xa5" * 4096  # past the image: as it was


def test_a_character_device_is_written_not_replaced(nginx: Nginx, tmp_path: Path) -> None:
    null = _mknod_char(tmp_path / "null", 1, 3)
    r = importer_cli("import", nginx.url("disk.raw.gz"), null)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert not list(tmp_path.glob("null.*"))  # no partial left beside it
    # /dev/full: the write fails, and says so; the node stays what it was
    full = _mknod_char(tmp_path / "full", 1, 7)
    r = importer_cli("import", nginx.url("disk.raw.gz"), full)
    assert r.returncode == 1 and "no space left" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert stat.S_ISCHR(os.lstat(full).st_mode)


def test_a_character_device_behind_a_symlink(nginx: Nginx, tmp_path: Path) -> None:
    null = _mknod_char(tmp_path / "null", 1, 3)
    link = tmp_path / "link"
    link.symlink_to(null)
    r = importer_cli("import", nginx.url("disk.raw.gz"), link)
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and stat.S_ISCHR(os.lstat(null).st_mode)


def _fifo_with_a_reader(tmp_path: Path) -> tuple[Path, bytearray, threading.Thread]:
    """A named pipe and a thread reading everything written to it into a buffer."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = bytearray()

    def read() -> None:
        with open(fifo, "rb") as f:
            while chunk := f.read(1 << 20):
                got.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return fifo, got, reader


def test_a_fifo_with_a_reader_gets_the_disk_in_order(nginx: Nginx, images: Images,
                                                     tmp_path: Path) -> None:
    fifo, got, reader = _fifo_with_a_reader(tmp_path)
    r = importer_cli("import", nginx.url("disk.raw.gz"), fifo, timeout=120)
    reader.join(30)
    assert r.returncode == 0, r.stderr
    assert bytes(got) == images.raw.read_bytes()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_fifo_takes_a_qcow2_read_at_random_in_the_disk_s_order(nginx: Nginx, images: Images,
                                                                 tmp_path: Path) -> None:
    """A qcow2 over ranged HTTP into a FIFO (issue 24): the workers read clusters in
    parallel, the writes go out in the disk's order, zero runs as zeros."""
    fifo, got, reader = _fifo_with_a_reader(tmp_path)
    r = importer_cli("import", nginx.url("disk.qcow2"), fifo, "-o", "json", timeout=120)
    reader.join(30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["plan"] == "extents"
    assert bytes(got) == images.raw.read_bytes()


def test_a_symlink_to_a_file_is_neither_replaced_nor_followed(nginx: Nginx,
                                                              tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_bytes(b"keep me")
    link = tmp_path / "d.img"
    link.symlink_to(precious)
    for extra in ([], ["--force"], ["--force", "-O", "qcow2"]):
        r = importer_cli("import", nginx.url("disk.raw"), link, *extra)
        assert r.returncode != 0, (extra, r.stderr)
        assert "is a symbolic link to" in r.stderr and "Traceback" not in r.stderr
        assert link.is_symlink() and precious.read_bytes() == b"keep me"
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    r = importer_cli("import", nginx.url("disk.raw"), dangling, "--force")
    assert r.returncode != 0 and "cannot be reached" in r.stderr, r.stderr
    assert dangling.is_symlink() and not (tmp_path / "nowhere").exists()


def test_a_directory_dest_fails_before_the_download(nginx: Nginx, tmp_path: Path) -> None:
    r = importer_cli("import", nginx.url("disk.raw"), tmp_path, "--force")
    assert r.returncode != 0 and "is a directory" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_the_old_rule_replaced_dev_null(nginx: Nginx, tmp_path: Path) -> None:
    """The report's case: a node named like /dev/null in a `dev` directory."""
    dev = tmp_path / "dev"
    dev.mkdir()
    null = _mknod_char(dev / "null", 1, 3)
    r = subprocess.run(["ls", "-l", str(null)], capture_output=True, text=True, check=True)
    before = r.stdout.split()[4:6]
    r = importer_cli("import", nginx.url("disk.raw"), null, "--connections", "1")
    assert r.returncode == 0, r.stderr
    after = subprocess.run(["ls", "-l", str(null)], capture_output=True, text=True,
                           check=True).stdout.split()[4:6]
    assert stat.S_ISCHR(os.lstat(null).st_mode) and before == after
