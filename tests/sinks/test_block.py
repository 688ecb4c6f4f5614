"""Block-device targets on real loop devices (root only)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from importer.config import build_config
from importer.engine import run_import
from importer.errors import ChecksumMismatchError, TargetTooSmallError

from ..conftest import SEED_SIZE, Images, Nginx, loop_device

pytestmark = pytest.mark.root


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Path]:
    # old content everywhere: a block target must end up exactly like the image, zeros included
    with loop_device(tmp_path / "backing.img", 32 << 20, b"\xa5") as dev:
        yield dev


def device_head(dev: Path, n: int) -> bytes:
    with open(dev, "rb") as f:
        return f.read(n)


@pytest.mark.parametrize("name", ["disk.raw.gz", "disk.raw.xz", "disk.qcow2", "disk.vhdx",
                                  "disk.qcow2.gz"])
def test_import_to_block_device(nginx: Nginx, images: Images, loop: Path, name: str) -> None:
    result = run_import(build_config(source=nginx.url(name), dest=str(loop)))
    assert result.target_kind == "block"
    assert device_head(loop, SEED_SIZE) == images.raw.read_bytes()
    # past the image the device is left as it was
    with open(loop, "rb") as f:
        f.seek(SEED_SIZE)
        assert f.read(4096) == b"\xa5" * 4096


def test_block_preallocation_writes_every_byte(nginx: Nginx, images: Images, loop: Path) -> None:
    result = run_import(build_config(source=nginx.url("disk.raw.zst"), dest=str(loop),
                                     preallocation=True))
    assert result.preallocated
    assert device_head(loop, SEED_SIZE) == images.raw.read_bytes()


def test_block_device_too_small_fails_before_writing(nginx: Nginx, images: Images, tmp_path: Path
                                                     ) -> None:
    with loop_device(tmp_path / "small.img", 8 << 20, b"\x5a") as dev:
        for name in ("disk.qcow2", "disk.raw"):
            with pytest.raises(TargetTooSmallError, match=f"{SEED_SIZE} bytes"):
                run_import(build_config(source=nginx.url(name), dest=str(dev)))
        # a compressed raw image's size is unknown up front: the write past the end is caught
        with pytest.raises(TargetTooSmallError):
            run_import(build_config(source=nginx.url("disk-1block.raw.xz"), dest=str(dev)))
        with open(dev, "rb") as f:
            head = f.read(8 << 20)
        # the refused imports wrote nothing; the one that ran over had its writes zeroed
        assert head == bytes(8 << 20)


def test_block_checksum_mismatch_zeroes_what_was_written(nginx: Nginx, images: Images,
                                                         loop: Path) -> None:
    with pytest.raises(ChecksumMismatchError):
        run_import(build_config(source=nginx.url("disk.raw.gz"), dest=str(loop),
                                checksum="sha256:" + "1" * 64))
    assert device_head(loop, SEED_SIZE) == bytes(SEED_SIZE)
    good = hashlib.sha256(images["disk.raw.gz"].read_bytes()).hexdigest()
    run_import(build_config(source=nginx.url("disk.raw.gz"), dest=str(loop),
                            checksum=f"sha256:{good}"))
    assert device_head(loop, SEED_SIZE) == images.raw.read_bytes()
