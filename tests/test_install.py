"""A plain `pip install` (no extras) into a fresh virtualenv, as a user does it: an HTTP qcow2
imports, and a source kind whose SDK is missing names the extra to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, Images, Nginx, same_disk

pytestmark = pytest.mark.timeout(600)


def test_a_plain_install_imports_http_and_names_missing_extras(nginx: Nginx, images: Images,
                                                               tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(ROOT)],
                       capture_output=True, text=True, timeout=500)
    assert r.returncode == 0, r.stderr[-2000:]
    installed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=freeze"],
                               capture_output=True, text=True, check=True).stdout.lower()
    for sdk in ("boto3", "google-cloud-storage", "oras", "pyvmomi"):
        assert f"{sdk}==" not in installed
    importer = str(venv / "bin" / "importer")
    r = subprocess.run([importer, "import", nginx.url("disk.qcow2"), str(tmp_path / "d.img")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert same_disk(tmp_path / "d.img", images.raw)
    r = subprocess.run([importer, "import", "s3://bucket/key", str(tmp_path / "s.img")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    assert "pip install 'importer[s3]'" in r.stderr and "Traceback" not in r.stderr
