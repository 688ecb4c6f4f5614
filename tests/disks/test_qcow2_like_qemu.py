"""The native qcow2 readers refuse what qemu refuses and expose what qemu exposes (issue 19,
items 3 and 4). Each crafted image is first shown to qemu-img itself: the test asserts qemu's
verdict, then ours, through the real CLI, on every path (local file, ranged HTTP, gzip stream,
standard input)."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT, Nginx, importer_cli


def _image(tmp_path: Path, name: str, size: str = "4M", *opts: str) -> Path:
    path = tmp_path / name
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", *(["-o", ",".join(opts)] if opts else []),
            str(path), size]
    subprocess.run(argv, check=True)
    return path


def _with_data(tmp_path: Path, name: str, *opts: str) -> Path:
    raw = tmp_path / f"{name}.raw"
    raw.write_bytes(bytes(range(256)) * 4096)  # 1 MiB of data
    out = tmp_path / name
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2",
                    *(["-o", ",".join(opts)] if opts else []), str(raw), str(out)], check=True)
    return out


def _patch(path: Path, offset: int, fmt: str, *values: int) -> Path:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, *values)
    path.write_bytes(bytes(data))
    return path


def _qemu_refuses(path: Path, tmp_path: Path) -> str:
    r = subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(path),
                        str(tmp_path / "qemu.raw")], capture_output=True, text=True)
    assert r.returncode != 0, f"qemu-img accepts {path.name}: the test's premise is wrong"
    return r.stderr


def _paths(path: Path, nginx: Nginx, tmp_path: Path) -> dict[str, str]:
    served = nginx.www / f"like-qemu-{tmp_path.name}-{path.name}"
    shutil.copyfile(path, served)
    gz = tmp_path / f"{path.name}.gz"
    gz.write_bytes(gzip.compress(path.read_bytes(), 1))
    return {"file": str(path), "http": nginx.url(served.name), "gzip": str(gz)}


def _ours(source: str, dest: Path, stdin: Path | None = None) -> subprocess.CompletedProcess[str]:
    if stdin is None:
        return importer_cli("import", source, dest, "-o", "json")
    with open(stdin, "rb") as f:
        return subprocess.run([sys.executable, "-m", "importer", "import", "-", str(dest), "-o",
                               "json"], stdin=f, capture_output=True, text=True, cwd=ROOT,
                              timeout=120)


# ------------------------------------------------------------------ item 3: sizes, flags


@pytest.mark.parametrize("virtual", [1000, 65537])
def test_a_size_not_of_whole_sectors_is_rounded_down_as_qemu_does(
        virtual: int, nginx: Nginx, tmp_path: Path) -> None:
    img = _patch(_with_data(tmp_path, "odd.qcow2"), 24, ">Q", virtual)
    qemu = tmp_path / "qemu.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(img), str(qemu)],
                   check=True)
    assert qemu.stat().st_size == virtual - virtual % 512
    for where, source in {**_paths(img, nginx, tmp_path), "stdin": "-"}.items():
        dest = tmp_path / f"{where}.raw"
        r = _ours(source, dest, img if where == "stdin" else None)
        assert r.returncode == 0, (where, r.stderr)
        assert dest.read_bytes() == qemu.read_bytes(), where
        assert json.loads(r.stdout)["virtual_size"] == virtual - virtual % 512, where
    r = importer_cli("inspect", img, "-o", "json")
    assert json.loads(r.stdout)["virtual_size"] == virtual - virtual % 512, r.stdout


def _first_l2_entry(path: Path) -> int:
    data = path.read_bytes()
    l1_offset = struct.unpack_from(">Q", data, 40)[0]
    l2 = struct.unpack_from(">Q", data, l1_offset)[0] & 0x00FF_FFFF_FFFF_FE00
    return l2


def test_a_v2_image_with_the_zero_flag_is_an_error_as_in_qemu(nginx: Nginx,
                                                              tmp_path: Path) -> None:
    img = _with_data(tmp_path, "v2.qcow2", "compat=0.10")
    l2 = _first_l2_entry(img)
    entry = struct.unpack_from(">Q", img.read_bytes(), l2)[0]
    _patch(img, l2, ">Q", entry | 1)
    assert "Zero cluster entry found in pre-v3 image" in _qemu_refuses(img, tmp_path)
    for where, source in _paths(img, nginx, tmp_path).items():
        r = _ours(source, tmp_path / f"{where}.raw")
        assert r.returncode == 1 and "zero cluster entry found in a version 2 image" in \
            r.stderr, (where, r.stderr)


def test_a_zstd_frame_that_expands_beyond_a_cluster_is_refused(nginx: Nginx,
                                                               tmp_path: Path) -> None:
    import zstandard

    img = _with_data(tmp_path, "z.qcow2", "compression_type=zstd", "cluster_size=65536")
    subprocess.run(["qemu-img", "convert", "-q", "-c", "-f", "qcow2", "-O", "qcow2", "-o",
                    "compression_type=zstd", str(img), str(tmp_path / "zc.qcow2")], check=True)
    img = tmp_path / "zc.qcow2"
    data = bytearray(img.read_bytes())
    l2 = _first_l2_entry(img)
    entry = struct.unpack_from(">Q", data, l2)[0]
    assert entry & (1 << 62)
    shift = 62 - (16 - 8)
    host = entry & ((1 << shift) - 1)
    frame = zstandard.ZstdCompressor().compress(b"\x07" * (2 << 16))  # two clusters' worth
    sectors = -(-(len(frame) + (host & 511)) // 512)
    data[host : host + len(frame)] = frame
    entry = (entry & ~(((1 << 8) - 1) << shift)) | ((sectors - 1) << shift)
    struct.pack_into(">Q", data, l2, entry)
    img.write_bytes(bytes(data))
    _qemu_refuses(img, tmp_path)
    for where, source in _paths(img, nginx, tmp_path).items():
        r = _ours(source, tmp_path / f"{where}.raw")
        assert r.returncode == 1 and "beyond one cluster" in r.stderr, (where, r.stderr)


# ------------------------------------------------------------------ item 4: qcow2_do_open

# (what, patch offset, struct format, value, qemu's words)
OPEN_REFUSALS = [
    ("header_length beyond the cluster size", 100, ">I", 70000, "exceeds cluster size"),
    ("an unaligned refcount table", 48, ">Q", 65536 + 512, "reference count table offset"),
    ("no refcount table", 56, ">I", 0, "does not contain a reference count table"),
    ("a huge refcount table", 56, ">I", 1 << 20, "reference count table too large"),
    ("refcount_order above 6", 96, ">I", 7, "entry width too large"),
    ("too many snapshots", 60, ">I", 65537, "snapshot table too large"),
]


@pytest.mark.parametrize(("what", "offset", "fmt", "value", "words"), OPEN_REFUSALS,
                         ids=[r[0] for r in OPEN_REFUSALS])
def test_open_checks_as_qemu(what: str, offset: int, fmt: str, value: int, words: str,
                             nginx: Nginx, tmp_path: Path) -> None:
    img = _patch(_with_data(tmp_path, "h.qcow2"), offset, fmt, value)
    assert words.lower() in _qemu_refuses(img, tmp_path).lower()
    for where, source in _paths(img, nginx, tmp_path).items():
        dest = tmp_path / f"{where}.raw"
        r = _ours(source, dest)
        assert r.returncode == 1, (where, r.stderr)
        assert words.lower() in r.stderr.lower() and "Traceback" not in r.stderr, where
        assert not dest.exists()


def test_a_snapshot_table_at_a_bad_offset(nginx: Nginx, tmp_path: Path) -> None:
    img = _patch(_with_data(tmp_path, "s.qcow2"), 60, ">IQ", 1, 65536 + 100)
    assert "snapshot table offset invalid" in _qemu_refuses(img, tmp_path).lower()
    for where, source in _paths(img, nginx, tmp_path).items():
        r = _ours(source, tmp_path / f"{where}.raw")
        assert r.returncode == 1 and "snapshot table offset invalid" in r.stderr, (where,
                                                                                   r.stderr)


def test_tables_overlapping_are_read_as_qemu_reads_them(tmp_path: Path) -> None:
    """qemu-img convert accepts a snapshot table over the L1 table: so do we (refusing what
    qemu reads would be a regression of its own)."""
    img = _with_data(tmp_path, "o.qcow2")
    l1 = struct.unpack_from(">Q", img.read_bytes(), 40)[0]
    _patch(img, 60, ">IQ", 1, l1)
    qemu = tmp_path / "qemu.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(img), str(qemu)],
                   check=True)
    r = _ours(str(img), tmp_path / "d.raw")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d.raw").read_bytes() == qemu.read_bytes()


def test_512_byte_clusters_with_an_l1_table_larger_than_the_read_window(
        tmp_path: Path) -> None:
    """An L1 table of 5 MiB, beyond the streaming reader's window, was refused as corrupt."""
    img = _image(tmp_path, "small-clusters.qcow2", "20G", "cluster_size=512")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 19G 4k", str(img)],
                   check=True, capture_output=True)
    l1_size = struct.unpack_from(">I", img.read_bytes(), 36)[0]
    assert l1_size * 8 > 4 << 20
    gz = tmp_path / "s.qcow2.gz"
    gz.write_bytes(gzip.compress(img.read_bytes(), 1))
    dest = tmp_path / "d.raw"
    r = importer_cli("import", gz, dest, "-o", "json")
    assert r.returncode == 0, r.stderr
    with open(dest, "rb") as f:
        f.seek(19 << 30)
        assert f.read(4096) == b"\x5a" * 4096
