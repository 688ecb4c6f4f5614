"""What qemu-img reads is what the inspector judged (issue 9, item 1): a server answering small
reads with a clean qcow2 and large ones with a qcow2 whose external data file names a host file
must not get that host file into the target."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest

from importer.config import build_config
from importer.engine import inspect_source, run_import
from importer.errors import ImporterError, UnsafeImageError
from importer.sinks.qemu import QemuInput, qemu_info
from tests.hostile_server import HostileServer, Reply, Request, hostile, ranged

__all__ = ["hostile"]

SECRET = b"TOP-SECRET-TOKEN "


def _images(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    secret = tmp_path / "host-secret"
    evil, clean = tmp_path / "evil.qcow2", tmp_path / "clean.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                    f"data_file={secret},data_file_raw=on", str(evil), "1M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(clean), "1M"], check=True)
    secret.write_bytes(SECRET * (1 << 16))  # after create, which zeroes the data file
    e, c = evil.read_bytes(), clean.read_bytes()
    n = max(len(e), len(c))
    return evil, c.ljust(n, b"\0"), e.ljust(n, b"\0")


def _two_faced(clean: bytes, evil: bytes) -> object:
    def route(req: Request) -> Reply:
        rng = req.range
        big = rng is not None and (rng[1] is None or rng[1] - rng[0] + 1 > 64 << 10)
        return ranged(evil if big else clean, req)  # the same ETag for both

    return route


@pytest.mark.parametrize("converter", ["qemu-img", "auto"])
def test_two_faced_server_cannot_smuggle_a_host_file(hostile: HostileServer, tmp_path: Path,
                                                     converter: str) -> None:
    _evil, clean, evil = _images(tmp_path)
    hostile.routes["/disk.qcow2"] = _two_faced(clean, evil)  # type: ignore[assignment]
    url = hostile.url("/disk.qcow2")
    dest = tmp_path / "disk.img"
    assert inspect_source(build_config(source=url, dest=str(dest)))["format"] == "qcow2"
    with contextlib.suppress(ImporterError):  # refusing is fine; copying a host file is not
        run_import(build_config(source=url, dest=str(dest), max_retries=1, converter=converter))
    if converter == "qemu-img":
        assert any(r.range and r.range[1] is not None and r.range[1] - r.range[0] > 64 << 10
                   for r in hostile.requests), "the large reads were not made: the test is moot"
    # the native reader parses the pinned header once and never opens a host path at all
    if dest.exists():
        assert SECRET not in dest.read_bytes()


def test_qemu_info_refuses_an_external_data_file_on_its_own(tmp_path: Path) -> None:
    evil, _c, _e = _images(tmp_path)
    with pytest.raises(UnsafeImageError, match="external data file"):
        qemu_info(QemuInput.local_file("qcow2", str(evil)))


def test_qemu_info_refuses_a_backing_file_it_never_opens(tmp_path: Path) -> None:
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                    str(top)], check=True)
    base.unlink()  # "backing": null: qemu-img does not even try to open it
    with pytest.raises(UnsafeImageError, match="backing file"):
        qemu_info(QemuInput.local_file("qcow2", str(top)))
