"""Truncated vmdk and vdi images are refused (issue 19, item 2): qemu reads past their end as
zeros, so every grain or block their tables name is checked to lie inside the file. Through the
real CLI, on a local file, over ranged HTTP (nginx) and gzip-compressed (the staged copy)."""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from ..conftest import Images, Nginx, importer_cli, same_disk

FORMATS = {"ms.vmdk": ["-O", "vmdk", "-o", "subformat=monolithicSparse"],
           "dyn.vdi": ["-O", "vdi"],
           "fixed.vdi": ["-O", "vdi", "-o", "static=on"]}


def _make(images: Images, out: Path, name: str) -> Path:
    subprocess.run(["qemu-img", "convert", "-f", "raw", *FORMATS[name], str(images.raw),
                    str(out / name)], check=True)
    return out / name


def _cut(src: Path, dst: Path, keep: int) -> Path:
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("where", ["file", "http", "gzip"])
def test_an_image_cut_in_half_is_refused(images: Images, nginx: Nginx, tmp_path: Path,
                                         name: str, where: str) -> None:
    whole = _make(images, tmp_path, name)
    cut = _cut(whole, tmp_path / f"cut-{name}", whole.stat().st_size // 2)
    if where == "gzip":
        gz = tmp_path / f"{cut.name}.gz"
        gz.write_bytes(gzip.compress(cut.read_bytes(), 1))
        source: str | Path = gz
    elif where == "http":
        served = nginx.www / f"truncated-{tmp_path.name}-{cut.name}"
        shutil.copyfile(cut, served)
        source = nginx.url(served.name)
    else:
        source = cut
    dest = tmp_path / "d.img"
    r = importer_cli("import", source, dest)
    assert r.returncode == 1, r.stderr
    assert "the image is truncated" in r.stderr and "Traceback" not in r.stderr
    assert not dest.exists() and not (tmp_path / "d.img.partial").exists()
    # the whole image imports
    r = importer_cli("import", whole, dest)
    assert r.returncode == 0, r.stderr
    assert same_disk(dest, images.raw)


def test_the_last_grain_missing_is_enough(images: Images, tmp_path: Path) -> None:
    """Cut by one sector: only the last grain's data is missing."""
    whole = _make(images, tmp_path, "ms.vmdk")
    cut = _cut(whole, tmp_path / "cut.vmdk", whole.stat().st_size - 512)
    r = importer_cli("import", cut, tmp_path / "d.img")
    assert r.returncode == 1 and "the image is truncated" in r.stderr, r.stderr


def test_a_grain_directory_past_the_end_is_refused(images: Images, tmp_path: Path) -> None:
    whole = _make(images, tmp_path, "ms.vmdk")
    data = bytearray(whole.read_bytes())
    struct.pack_into("<Q", data, 56, len(data) // 512 + 100)  # gd_offset beyond the file
    bad = tmp_path / "bad.vmdk"
    bad.write_bytes(bytes(data))
    r = importer_cli("import", bad, tmp_path / "d.img")
    assert r.returncode == 1 and "the image is truncated" in r.stderr, r.stderr


def test_an_empty_vdi_and_vmdk_import_as_zeros(tmp_path: Path) -> None:
    """Nothing allocated: nothing to be missing."""
    for name, opts in (("e.vmdk", ["-o", "subformat=monolithicSparse"]), ("e.vdi", [])):
        img = tmp_path / name
        subprocess.run(["qemu-img", "create", "-q", "-f", name.split(".")[1], *opts, str(img),
                        "8M"], check=True)
        dest = tmp_path / f"{name}.img"
        r = importer_cli("import", img, dest)
        assert r.returncode == 0, r.stderr
        assert dest.read_bytes() == bytes(8 << 20)
