"""Inputs that once ended in a Python traceback or a busy loop (issue 19, items 14 and 16), each
through the real CLI: a one-line error naming what is wrong, and the right exit code."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from .conftest import ROOT, Images, importer_cli, same_disk


def _one_line_error(r: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert r.returncode == code, r.stderr
    assert text in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr


def test_standard_input_closed(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "importer", "import", "-", str(tmp_path / "d")],
                       capture_output=True, text=True, cwd=ROOT, timeout=60,
                       stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(0))
    _one_line_error(r, 1, "standard input is closed")
    assert not (tmp_path / "d").exists()


def test_source_a_directory(tmp_path: Path) -> None:
    _one_line_error(importer_cli("import", tmp_path, tmp_path / "d"), 1, "is a directory")


def test_source_a_character_device(tmp_path: Path) -> None:
    # /dev/zero is only read (and refused before a byte is): it would never end
    _one_line_error(importer_cli("import", "/dev/zero", tmp_path / "d"), 1,
                    "character device")


def test_source_a_named_pipe_is_read_once_in_order(images: Images, tmp_path: Path) -> None:
    fifo = tmp_path / "in"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "wb") as f:
            f.write(images["disk.qcow2"].read_bytes())

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    r = importer_cli("import", fifo, tmp_path / "d.img", timeout=120)
    writer.join(30)
    assert r.returncode == 0, r.stderr
    assert same_disk(tmp_path / "d.img", images.raw)


def test_dest_an_empty_string(images: Images) -> None:
    _one_line_error(importer_cli("import", images["disk.raw"], ""), 2, "DEST is empty")


@pytest.mark.parametrize("url", ["http://[::1", "https://user:secret@[::1/x"])
def test_a_malformed_url(url: str, tmp_path: Path) -> None:
    r = importer_cli("import", url, tmp_path / "d")
    _one_line_error(r, 2, "is not a valid URL")
    assert "secret" not in r.stderr


@pytest.mark.parametrize("value", ["0", "-1", "0.001", "nan", "inf", "soon"])
def test_progress_interval_must_be_a_sane_number(value: str, images: Images,
                                                 tmp_path: Path) -> None:
    r = importer_cli("import", images["disk.raw"], tmp_path / "d", "--progress-interval", value)
    _one_line_error(r, 2, "--progress-interval")
    assert not (tmp_path / "d").exists()
