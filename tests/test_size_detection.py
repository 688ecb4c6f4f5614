"""cdi-image-size-detection as the clone size-detection pod runs it: virtual size in the
termination message, CDI's exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, SEED_SIZE, Images, run


def _run(root: Path, *args: str) -> tuple[int, str]:
    r = subprocess.run([sys.executable, "-m", "importer.size_detection", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "IMPORTER_FS_ROOT": str(root)})
    return r.returncode, r.stderr


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "dev").mkdir()
    return tmp_path


@pytest.mark.parametrize("name", ["disk.qcow2", "disk.raw", "disk.vhdx"])
def test_virtual_size_in_the_termination_message(root: Path, images: Images, name: str) -> None:
    code, err = _run(root, "-image-path", str(images[name]))
    assert code == 0, err
    assert (root / "dev" / "termination-log").read_text() == str(SEED_SIZE)


def test_scheme_flag_and_go_flag_forms(root: Path, images: Images) -> None:
    code, err = _run(root, f"--image-path={images['disk.qcow2']}", "-scheme", "file://")
    assert code == 0, err


def test_exit_codes(root: Path, images: Images, tmp_path: Path) -> None:
    assert _run(root)[0] == 1
    assert _run(root, "-bogus", "x")[0] == 1
    assert _run(root, "-image-path", "/nonexistent/disk.img")[0] == 3
    assert _run(root, "-image-path", "x", "-scheme", "http://")[0] == 3
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(images.raw), "-F", "raw",
        tmp_path / "overlay.qcow2")
    code, err = _run(root, "-image-path", str(tmp_path / "overlay.qcow2"))
    assert code == 2 and "backing file" in err
    (root / "dev" / "termination-log").mkdir()  # cannot be written
    assert _run(root, "-image-path", str(images.raw))[0] == 4
