"""Header inspection: sizes agree with qemu-img, and every hostile image is refused before
qemu-img sees it, with nothing written and no host file read."""

from __future__ import annotations

import json
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from importer.config import build_config
from importer.engine import run_import
from importer.errors import FormatError, SourceContentError, UnsafeImageError
from importer.formats.headers import inspect_image, sniff_format

from ..conftest import Images, run

SECRET = b"HOST-SECRET-" * 100


def qemu_size(path: Path) -> int:
    info = json.loads(run("qemu-img", "info", "--output=json", path).stdout)
    return int(info["virtual-size"])


def inspect_file(path: Path):  # type: ignore[no-untyped-def]
    data = path.read_bytes()
    fmt = sniff_format(data[: 64 << 10])
    return inspect_image(fmt, lambda off, n: data[off : off + n], len(data))


@pytest.mark.parametrize("name", ["disk.qcow2", "disk-v2.qcow2", "disk-zstd.qcow2", "disk-so.vmdk",
                                  "disk-ms.vmdk", "disk.vdi", "disk-dynamic.vhd", "disk.vhdx"])
def test_virtual_size_matches_qemu_img(images: Images, name: str) -> None:
    info = inspect_file(images[name])
    assert info.needs_conversion
    assert info.virtual_size == qemu_size(images[name])


def test_sniffing_ignores_file_names(images: Images, tmp_path: Path) -> None:
    disguised = tmp_path / "ubuntu.iso"
    disguised.write_bytes(images["disk.qcow2"].read_bytes())
    assert inspect_file(disguised).format == "qcow2"


@pytest.fixture
def host_secret(tmp_path: Path) -> Path:
    p = tmp_path / "host-secret.raw"
    p.write_bytes(SECRET)
    return p


def assert_refused(image: Path, tmp_path: Path, error: type[Exception], match: str) -> None:
    dest = tmp_path / "out" / "disk.img"
    dest.parent.mkdir()
    with pytest.raises(error, match=match):
        run_import(build_config(source=str(image), dest=str(dest)))
    assert list(dest.parent.iterdir()) == []  # nothing written, not even a partial file


def test_qcow2_backing_file_refused(tmp_path: Path, host_secret: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    run("qemu-img", "create", "-f", "qcow2", "-b", host_secret, "-F", "raw", evil, "1M")
    assert_refused(evil, tmp_path, UnsafeImageError, "backing file")


def test_qcow2_external_data_file_refused(tmp_path: Path, host_secret: Path) -> None:
    evil = tmp_path / "evil.qcow2"
    run("qemu-img", "create", "-f", "qcow2", "-o",
        f"data_file={host_secret},data_file_raw=on", evil, "1200")
    assert_refused(evil, tmp_path, UnsafeImageError, "external data file")


def _patch(src: Path, dst: Path, offset: int, fmt: str, value: int) -> Path:
    data = bytearray(src.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("method", [1, 2])  # AES, LUKS
def test_qcow2_encrypted_refused(images: Images, tmp_path: Path, method: int) -> None:
    # crafted rather than made with qemu-img: its LUKS key benchmark fails on a busy CPU
    # ("Unable to get accurate CPU usage")
    enc = _patch(images["disk.qcow2"], tmp_path / "enc.qcow2", 32, ">I", method)
    assert_refused(enc, tmp_path, UnsafeImageError, "encrypted")


def test_qcow2_unknown_incompatible_feature_refused(images: Images, tmp_path: Path) -> None:
    evil = _patch(images["disk.qcow2"], tmp_path / "evil.qcow2", 72, ">Q", 1 << 40)
    assert_refused(evil, tmp_path, UnsafeImageError, "unknown incompatible features")


def test_qcow2_corrupt_bit_refused(images: Images, tmp_path: Path) -> None:
    evil = _patch(images["disk.qcow2"], tmp_path / "evil.qcow2", 72, ">Q", 0b10)
    assert_refused(evil, tmp_path, FormatError, "marked corrupt")


def test_qcow2_huge_l1_refused(images: Images, tmp_path: Path) -> None:
    evil = _patch(images["disk.qcow2"], tmp_path / "evil.qcow2", 36, ">I", 0x10000000)
    assert_refused(evil, tmp_path, FormatError, "L1 size too big")


def test_vmdk_descriptor_file_refused(tmp_path: Path, host_secret: Path) -> None:
    desc = tmp_path / "evil.vmdk"
    desc.write_text(
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
        'createType="monolithicFlat"\n'
        f'RW 2 FLAT "{host_secret}" 0\n')
    assert_refused(desc, tmp_path, UnsafeImageError, "descriptor file")


def test_vmdk_split_extent_without_descriptor_refused(tmp_path: Path) -> None:
    run("qemu-img", "create", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse",
        tmp_path / "split.vmdk", "1M")
    extent = tmp_path / "split-s001.vmdk"
    assert_refused(extent, tmp_path, UnsafeImageError, "no embedded descriptor")


def test_vmdk_embedded_descriptor_with_flat_extent_refused(images: Images, tmp_path: Path,
                                                           host_secret: Path) -> None:
    data = bytearray(images["disk-ms.vmdk"].read_bytes())
    desc_off = struct.unpack_from("<Q", data, 28)[0] * 512
    desc_len = struct.unpack_from("<Q", data, 36)[0] * 512
    text = data[desc_off : desc_off + desc_len].split(b"\0")[0].decode()
    evil_text = "\n".join(
        f'RW 2 FLAT "{host_secret}" 0' if line.startswith("RW ") else line
        for line in text.splitlines()).encode()
    data[desc_off : desc_off + desc_len] = evil_text.ljust(desc_len, b"\0")
    evil = tmp_path / "evil.vmdk"
    evil.write_bytes(bytes(data))
    assert_refused(evil, tmp_path, UnsafeImageError, "exactly one embedded SPARSE extent")


def test_vhd_differencing_refused(images: Images, tmp_path: Path) -> None:
    evil = _patch(images["disk-dynamic.vhd"], tmp_path / "evil.vhd", 60, ">I", 4)
    assert_refused(evil, tmp_path, UnsafeImageError, "differencing")


def test_vdi_differencing_refused(images: Images, tmp_path: Path) -> None:
    evil = _patch(images["disk.vdi"], tmp_path / "evil.vdi", 0x4C, "<I", 4)
    assert_refused(evil, tmp_path, UnsafeImageError, "differencing")
    data = bytearray(images["disk.vdi"].read_bytes())
    data[0x1A8:0x1B8] = uuid.uuid4().bytes  # a link to a parent image
    (tmp_path / "linked.vdi").write_bytes(bytes(data))
    with pytest.raises(UnsafeImageError):
        inspect_file(tmp_path / "linked.vdi")


def test_vhdx_with_parent_refused(images: Images, tmp_path: Path) -> None:
    data = bytearray(images["disk.vhdx"].read_bytes())
    meta_guid = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
    params_guid = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
    rt = 0x30000
    meta = next(struct.unpack_from("<Q", data, rt + 16 + 32 * i + 16)[0]
                for i in range(struct.unpack_from("<I", data, rt + 8)[0])
                if data[rt + 16 + 32 * i : rt + 32 + 32 * i] == meta_guid)
    for i in range(struct.unpack_from("<H", data, meta + 10)[0]):
        e = meta + 32 + 32 * i
        if data[e : e + 16] == params_guid:
            off = meta + struct.unpack_from("<I", data, e + 16)[0]
            struct.pack_into("<I", data, off + 4, struct.unpack_from("<I", data, off + 4)[0] | 2)
    (tmp_path / "evil.vhdx").write_bytes(bytes(data))
    assert_refused(tmp_path / "evil.vhdx", tmp_path, UnsafeImageError, "parent")


def test_qed_and_markup_refused(tmp_path: Path) -> None:
    qed = tmp_path / "x.qed"
    run("qemu-img", "create", "-f", "qed", qed, "1M")
    assert_refused(qed, tmp_path, FormatError, "QED")
    page = tmp_path / "page"
    page.write_bytes(b'<?xml version="1.0"?><Error><Code>AccessDenied</Code></Error>')
    with pytest.raises(SourceContentError, match="HTML/XML"):
        inspect_file(page)


def test_qemu_img_is_always_told_the_format(images: Images, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from importer.sinks import qemu

    calls: list[list[str]] = []
    real_popen = subprocess.Popen

    envs: list[object] = []

    def spy_popen(argv: list[str], *a: object, **kw: object):  # type: ignore[no-untyped-def]
        calls.append(list(argv))
        envs.append(kw.get("env"))
        return real_popen(argv, *a, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(qemu.subprocess, "Popen", spy_popen)
    run_import(build_config(source=str(images["disk.vdi"]), dest=str(tmp_path / "d.img")))
    qemu_calls = [c for c in calls if any(x.endswith("qemu-img") for x in c)]
    def subcommand(c: list[str]) -> str:
        return c[next(i for i, x in enumerate(c) if x.endswith("qemu-img")) + 1]

    assert [subcommand(c) for c in qemu_calls] == ["info", "convert"]
    for c, env in zip(qemu_calls, envs, strict=True):
        # killed with us (setpriv), under limits (prlimit)
        assert c[:4] == [c[0], "--pdeathsig", "KILL", "--"] and c[0].endswith("setpriv")
        assert c[4].endswith("prlimit") and ("--as=1073741824" in c or "--as=4294967296" in c)
        spec = json.loads(next(x for x in c if x.startswith("json:"))[5:])
        # the driver named, never probed; a backing file never opened; bytes from an fd
        assert spec["driver"] == "vdi" and spec["backing"] is None
        assert spec["file"]["driver"] == "nbd" and spec["file"]["server"]["type"] == "fd"
        # a minimal environment: the secrets of the importer's own never reach qemu-img
        assert isinstance(env, dict) and set(env) == {"PATH", "LC_ALL"}


def test_vmdk_with_a_huge_grain_directory_is_refused_before_qemu(tmp_path: Path) -> None:
    # issue 9 item 13: 2^57 bytes of virtual size in one-entry grain tables
    src = tmp_path / "v.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicSparse",
                    str(src), "64M"], check=True)
    b = bytearray(src.read_bytes())
    struct.pack_into("<Q", b, 12, 1 << 48)
    struct.pack_into("<I", b, 44, 1)
    with pytest.raises(FormatError, match="L1 size too big"):
        inspect_image("vmdk", lambda o, n: bytes(b[o : o + n]), len(b))
    # the untouched image still passes
    good = src.read_bytes()
    assert inspect_image("vmdk", lambda o, n: good[o : o + n], len(good)).virtual_size == 64 << 20


def test_vhdx_with_a_truncated_region_table_is_a_format_error(tmp_path: Path) -> None:
    # found by atheris: a region count past the end of a truncated file raised struct.error
    src = tmp_path / "d.vhdx"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vhdx", str(src), "64M"], check=True)
    data = bytearray(src.read_bytes()[: 0x30000 + 1939])
    struct.pack_into("<I", data, 0x30008, 64)
    with pytest.raises(FormatError, match="truncated vhdx region table"):
        inspect_image("vhdx", lambda o, n: bytes(data[o : o + n]), len(data))
