"""`importer verify SOURCE DEST` (issue 24): exit 0 when DEST holds what importing SOURCE would
write, 1 with the first byte that differs; the source read as an import reads it."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import Images, Nginx, importer_cli, loop_device


def _verify(*args: str | Path) -> tuple[int, dict[str, object], str]:
    r = importer_cli("verify", "-o", "json", *args)
    return r.returncode, json.loads(r.stdout) if r.stdout else {}, r.stderr


def test_an_imported_disk_verifies_and_a_changed_byte_is_found(nginx: Nginx, images: Images,
                                                               tmp_path: Path) -> None:
    dest = tmp_path / "d.img"
    assert importer_cli("import", "-q", nginx.url("disk.qcow2"), dest).returncode == 0
    code, result, err = _verify(nginx.url("disk.qcow2"), dest)
    assert code == 0 and result["identical"] is True, err
    assert result["plan"] == "extents"  # clusters read at random: only what the disk holds
    assert int(result["bytes_read"]) <= images["disk.qcow2"].stat().st_size  # type: ignore[call-overload]
    raw = bytearray(dest.read_bytes())
    at = raw.index(next(b for b in raw if b)) + 5  # inside the first data
    raw[at] ^= 0x5A
    dest.write_bytes(bytes(raw))
    code, result, _err = _verify(nginx.url("disk.qcow2"), dest)
    assert code == 1 and result["first_difference"] == at and result["identical"] is False


def test_data_in_a_hole_a_short_dest_and_a_format_qemu_img_converts(images: Images,
                                                                    tmp_path: Path) -> None:
    dest = tmp_path / "d.img"
    assert importer_cli("import", "-q", images["disk.vdi"], dest).returncode == 0
    code, result, err = _verify(images["disk.vdi"], dest)  # a sparse copy, then compared
    assert code == 0 and result["identical"] is True, err
    size = dest.stat().st_size
    with open(dest, "r+b") as f:  # a byte where the disk is zeros (its last sector)
        f.seek(size - 7)
        f.write(b"\x01")
    code, result, _err = _verify(images["disk.vdi"], dest)
    assert code == 1 and result["first_difference"] == size - 7
    with open(dest, "r+b") as f:
        f.truncate(size // 2)
    code, result, _err = _verify(images["disk.vdi"], dest)
    assert code == 1 and "DEST ends there" in str(result["reason"])


def test_a_block_device_and_the_text_output(images: Images, tmp_path: Path) -> None:
    with loop_device(tmp_path / "backing", 32 << 20, b"\xa5") as dev:
        assert importer_cli("import", "-q", "--force", images["disk-so.vmdk"], dev).returncode == 0
        r = importer_cli("verify", images["disk-so.vmdk"], dev)
        assert r.returncode == 0 and "identical to what" in r.stdout, r.stderr
        # one byte changed on the device: named, and nothing on stdout with -q
        with open(images.raw, "rb") as f:
            f.seek(51200)
            byte = f.read(1)[0]
        with open(dev, "r+b") as d:
            d.seek(51200)
            d.write(bytes([byte ^ 0xFF]))
        r = importer_cli("verify", "-q", images["disk-so.vmdk"], dev)
        assert r.returncode == 1 and r.stdout == "" and "at byte 51200" in r.stderr
