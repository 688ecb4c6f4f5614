"""The streaming qcow2 reader stays bounded on hostile input (issue 19, item 4): images crafted
here byte by byte, compressed, and imported through the real CLI; the child's peak memory is
read from the kernel (ru_maxrss of a wrapper whose only child is the import)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import zstandard

from ..conftest import ROOT

OFLAG_COPIED = 1 << 63


def _qcow2(path: Path, *, cluster_bits: int, size: int, l1_offset: int, l1: list[int],
           blobs: dict[int, bytes], file_size: int) -> Path:
    """A version 3 qcow2 with the given L1 entries and bytes at offsets; a refcount table at
    cluster 1 (its content does not matter to a reader)."""
    cs = 1 << cluster_bits
    header = struct.pack(">4sIQIIQIIQQIIQQQQII", b"QFI\xfb", 3, 0, 0, cluster_bits, size, 0,
                         len(l1), l1_offset, cs, 1, 0, 0, 0, 0, 0, 4, 104)
    with open(path, "wb") as f:
        f.truncate(file_size)
        f.write(header)
        f.seek(l1_offset)
        f.write(b"".join(struct.pack(">Q", e) for e in l1))
        for off, data in blobs.items():
            f.seek(off)
            f.write(data)
    return path


def _zst(path: Path) -> Path:
    out = path.with_name(path.name + ".zst")
    cctx = zstandard.ZstdCompressor(level=1)
    with open(path, "rb") as src, open(out, "wb") as dst:
        cctx.copy_stream(src, dst)
    return out


def _import_measured(source: Path, dest: Path, *extra: str) -> tuple[int, str, dict[str, object],
                                                                      int]:
    """rc, stderr, the JSON result, and the import's peak RSS in bytes."""
    wrapper = ("import resource, subprocess, sys; "
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
               "sys.exit(r.returncode)")
    r = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "importer",
                        "import", str(source), str(dest), "-o", "json", *extra],
                       capture_output=True, text=True, cwd=ROOT, timeout=240)
    lines = r.stderr.strip().splitlines()
    peak = int(lines[-1]) * 1024
    result = json.loads(r.stdout) if r.stdout.strip() else {}
    return r.returncode, "\n".join(lines[:-1]), result, peak


def test_aliased_tables_over_a_large_disk_stay_small(tmp_path: Path) -> None:
    """Every L1 entry names one L2 table whose every entry names one data cluster: 2 M guest
    clusters from a 260 KiB file. One pending entry per guest cluster took gigabytes."""
    cb, cs = 9, 512
    size = 1 << 30
    l1_entries = size // (cs * (cs // 8))  # 32768
    l1_offset = 2 * cs
    l2 = l1_offset + l1_entries * 8
    data = l2 + cs
    img = _qcow2(tmp_path / "alias.qcow2", cluster_bits=cb, size=size, l1_offset=l1_offset,
                 l1=[OFLAG_COPIED | l2] * l1_entries,
                 blobs={l2: struct.pack(">Q", OFLAG_COPIED | data) * (cs // 8),
                        data: b"\xab" * cs},
                 file_size=data + cs)
    dest = tmp_path / "d.raw"
    rc, err, result, peak = _import_measured(_zst(img), dest)
    assert rc == 0, err
    assert result["plan"] == "stream" and result["virtual_size"] == size
    with open(dest, "rb") as f:
        f.seek(size - cs)
        assert f.read(cs) == b"\xab" * cs
    assert peak < 200 << 20, f"peak RSS {peak >> 20} MiB"


def test_tables_far_into_the_file_after_zeros_hold_nothing(tmp_path: Path) -> None:
    """1 MiB disk, its tables 2 GiB into the file, zeros before them: zeros are never held,
    so nothing spills (2 GB spilled before)."""
    cb, cs = 16, 1 << 16
    far = 2 << 30
    l2, data = far + cs, far + 2 * cs
    img = _qcow2(tmp_path / "far.qcow2", cluster_bits=cb, size=1 << 20, l1_offset=far,
                 l1=[OFLAG_COPIED | l2],
                 blobs={l2: struct.pack(">Q", OFLAG_COPIED | data), data: b"\x5a" * cs},
                 file_size=data + cs)
    zst = _zst(img)
    assert zst.stat().st_size < 1 << 20
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    dest = tmp_path / "d.raw"
    rc, err, result, peak = _import_measured(zst, dest, "--scratch-dir", scratch)
    assert rc == 0, err
    assert result["staged_bytes"] == 0
    assert dest.read_bytes()[:cs] == b"\x5a" * cs and dest.stat().st_size == 1 << 20
    assert peak < 200 << 20, f"peak RSS {peak >> 20} MiB"


def test_junk_before_the_tables_beyond_the_disk_is_refused(tmp_path: Path) -> None:
    """A 1 MiB disk with 48 MiB of data before its tables: no table could place more than the
    disk, so holding (and spilling) stops there with a clear refusal."""
    cb, cs = 16, 1 << 16
    far = 48 << 20
    l2, data = far + cs, far + 2 * cs
    junk = {off: b"junk" * (cs // 4) for off in range(2 * cs, far, cs)}
    img = _qcow2(tmp_path / "junk.qcow2", cluster_bits=cb, size=1 << 20, l1_offset=far,
                 l1=[OFLAG_COPIED | l2],
                 blobs={**junk, l2: struct.pack(">Q", OFLAG_COPIED | data), data: b"\x5a" * cs},
                 file_size=data + cs)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    dest = tmp_path / "d.raw"
    rc, err, _result, _peak = _import_measured(_zst(img), dest, "--scratch-dir", scratch)
    assert rc == 1, err
    assert "holds more data before its tables than its tables could ever place" in err
    assert "--converter qemu-img" in err
    assert not dest.exists() and list(scratch.iterdir()) == []


def test_the_spill_goes_beside_the_destination_not_to_tmpdir(tmp_path: Path) -> None:
    """Data before its tables, beyond the memory bound: the spill is in the destination's
    directory when no --scratch-dir is given (it was in $TMPDIR)."""
    import os

    cb, cs = 16, 1 << 16
    n = 1200  # 75 MiB of data before the tables: more than the 64 MiB held in memory
    far = (2 + n) * cs
    l2 = far + cs
    blobs = {(2 + k) * cs: bytes([k % 251 + 1]) * cs for k in range(n)}
    l2_table = b"".join(struct.pack(">Q", OFLAG_COPIED | (2 + k) * cs) for k in range(n))
    img = _qcow2(tmp_path / "late.qcow2", cluster_bits=cb, size=n * cs, l1_offset=far,
                 l1=[OFLAG_COPIED | l2], blobs={**blobs, l2: l2_table}, file_size=l2 + cs)
    out = tmp_path / "out"
    out.mkdir()
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    r = subprocess.run([sys.executable, "-m", "importer", "import", str(_zst(img)),
                        str(out / "d.raw"), "-o", "json"], capture_output=True, text=True,
                       cwd=ROOT, timeout=240, env=env)
    assert r.returncode == 0, r.stderr
    assert f"spills to {out}" in r.stderr, r.stderr
    assert json.loads(r.stdout)["staged_bytes"] > 0
    with open(out / "d.raw", "rb") as f:
        f.seek((n - 1) * cs)
        assert f.read(cs) == bytes([(n - 1) % 251 + 1]) * cs
    assert list(tmpdir.iterdir()) == []
