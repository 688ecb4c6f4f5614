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
    # installed from this clone: the hint names it, so the command works as printed
    assert f"pip install '{ROOT}[s3]'" in r.stderr and "Traceback" not in r.stderr
    # a local container-image archive needs no registry SDK (only a registry does)
    from .oci_images import Entry, Image, Layer, build

    layout = build(tmp_path / "layout", {"disk": Image([Layer([
        Entry("disk", "dir"), Entry("disk/disk.qcow2", source=images["disk.qcow2"])])])})
    r = subprocess.run([importer, "import", f"oci:{layout.root}:disk", str(tmp_path / "o.img")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert same_disk(tmp_path / "o.img", images.raw)
    r = subprocess.run([importer, "import", "docker://127.0.0.1:1/a/b:c", str(tmp_path / "r.img")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and f"pip install '{ROOT}[registry]'" in r.stderr, r.stderr


def test_the_lock_files_pin_every_dependency() -> None:
    """The image installs requirements/container.lock and CI requirements/ci.lock with
    --require-hashes: each names every dependency of its extras, pinned with hashes, so a
    dependency added to pyproject.toml without `bash scripts/lock.sh` fails here, not in a
    build that resolves something else."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def names(reqs: list[str]) -> set[str]:
        out = set()
        for r in reqs:
            name = re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-")
            if name != "importer":  # [all] names the other extras through the package
                out.add(name)
        return out

    runtime = names(project["dependencies"]) | set().union(
        *(names(extras[e]) for e in ("s3", "gcs", "registry", "vmware")))
    for lock, wanted in (("container.lock", runtime), ("ci.lock", runtime | names(extras["test"]))):
        text = (ROOT / "requirements" / lock).read_text()
        pinned = {m.group(1).lower().replace("_", "-")
                  for m in re.finditer(r"^([A-Za-z0-9._-]+)==\S+ \\\n\s+--hash=sha256:", text, re.M)}
        assert wanted <= pinned, f"{lock} lacks {sorted(wanted - pinned)}: run scripts/lock.sh"
        unhashed = [ln for ln in text.splitlines() if re.match(r"^[A-Za-z0-9._-]+==\S+$", ln)]
        assert not unhashed, f"{lock}: pinned without a hash: {unhashed}"
