"""The native VMDK readers (disks/vmdk.py at random, disks/vmdk_stream.py in file order), through
the real CLI, judged against qemu-img's reading of the same file: images written by qemu-img
and in VMware's stream layout (vmdk_images.py), from a file, ranged nginx, nginx without ranges,
gzip and stdin. qemu-img is never started on these paths: a qemu-img first on PATH that only
records being run proves it."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ..conftest import Images, Nginx, importer_cli, make_seed, run
from .vmdk_images import Tamper, descriptor, header, vmware_stream_optimized

GRAIN = 64 << 10
WAYS = ["file", "http", "norange", "gzip", "stdin"]


def _odd_raw(path: Path) -> Path:
    """A disk whose size is not whole grains, with data in its last, partial grain."""
    make_seed(path, size=(6 << 20) + 1536, seed=11)
    with open(path, "r+b") as f:
        f.seek((6 << 20) + 1000)
        f.write(b"the end of the disk" * 20)
    return path


def _qemu(raw: Path, out: Path, subformat: str, *extra: str) -> Path:
    run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o",
        ",".join([f"subformat={subformat}", *extra]), raw, out)
    return out


def _set_gte(path: Path, grain: int, value: int, *, zero_flag: bool) -> None:
    """Patch the grain table entry of grain number `grain` (a monolithicSparse file)."""
    data = bytearray(path.read_bytes())
    flags = struct.unpack_from("<I", data, 8)[0]
    struct.pack_into("<I", data, 8, flags | 4 if zero_flag else flags & ~4)
    gd = struct.unpack_from("<Q", data, 56)[0] * 512
    gt = struct.unpack_from("<I", data, gd + grain // 512 * 4)[0] * 512
    struct.pack_into("<I", data, gt + grain % 512 * 4, value)
    path.write_bytes(bytes(data))


def _build(kind: str, d: Path, seed: Path, odd: Path) -> Path:
    out = d / f"{kind}.vmdk"
    if kind == "ms":
        return _qemu(seed, out, "monolithicSparse")
    if kind == "so":
        return _qemu(seed, out, "streamOptimized")
    if kind == "ms-odd":
        return _qemu(odd, out, "monolithicSparse")
    if kind == "so-odd":
        return _qemu(odd, out, "streamOptimized")
    if kind == "vmware":
        out.write_bytes(vmware_stream_optimized(seed.read_bytes()))
        return out
    if kind == "vmware-odd":
        out.write_bytes(vmware_stream_optimized(odd.read_bytes(), gtes=64))
        return out
    if kind == "ms-zeroed":  # a zeroed grain (entry 1, zero-grain flag) over data
        _qemu(seed, out, "monolithicSparse", "zeroed_grain=on")
        _set_gte(out, 0, 1, zero_flag=True)
        return out
    if kind == "ms-gte1":  # entry 1 without the flag: qemu reads sector 1 (the descriptor)
        _qemu(seed, out, "monolithicSparse")
        _set_gte(out, 2, 1, zero_flag=False)
        return out
    raise AssertionError(kind)


KINDS = ["ms", "so", "ms-odd", "so-odd", "vmware", "vmware-odd", "ms-zeroed", "ms-gte1"]


@pytest.fixture(scope="module")
def vmdks(images: Images, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("vmdks")
    odd = _odd_raw(d / "odd.raw")
    return {kind: _build(kind, d, images.raw, odd) for kind in KINDS}


@pytest.fixture
def no_qemu_img(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose qemu-img only records that it ran."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ran = tmp_path / "qemu-img-ran"
    fake = bin_dir / "qemu-img"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {ran}\nexit 99\n")
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, ran


def _qemu_raw(path: Path, out: Path) -> Path:
    run("qemu-img", "convert", "-f", "vmdk", "-O", "raw", path, out)
    return out


def _source(way: str, path: Path, nginx: Nginx, tmp_path: Path) -> tuple[str, bytes | None]:
    if way == "file":
        return str(path), None
    if way == "stdin":
        return "-", path.read_bytes()
    if way == "gzip":
        gz = tmp_path / f"{path.name}.gz"
        gz.write_bytes(gzip.compress(path.read_bytes(), 1))
        return str(gz), None
    served = nginx.www / f"vmdk-{tmp_path.name}-{path.name}"
    shutil.copyfile(path, served)
    return (nginx.url(served.name) if way == "http" else nginx.url(f"norange/{served.name}")), None


def _import(source: str, data: bytes | None, dest: Path, env: dict[str, str], *extra: str
            ) -> subprocess.CompletedProcess[bytes]:
    import sys

    return subprocess.run([sys.executable, "-m", "importer", "import", source, str(dest),
                           "-o", "json", *extra], input=data, capture_output=True, env=env,
                          timeout=120, check=False)


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("kind", KINDS)
def test_native_vmdk_reads_as_qemu_does(vmdks: dict[str, Path], nginx: Nginx, tmp_path: Path,
                                        no_qemu_img: tuple[dict[str, str], Path], kind: str,
                                        way: str) -> None:
    path = vmdks[kind]
    want = _qemu_raw(path, tmp_path / "qemu.raw")
    source, data = _source(way, path, nginx, tmp_path)
    env, ran = no_qemu_img
    dest = tmp_path / "d.img"
    r = _import(source, data, dest, env)
    if kind == "ms-gte1" and way not in ("file", "http"):
        # that grain runs from the metadata into the first grain: in file order it has passed
        # before its end arrives; refused with the way out, never written half
        assert r.returncode == 1 and "straddles" in r.stderr.decode(), r.stderr.decode()
        assert "--converter qemu-img" in r.stderr.decode() and not dest.exists()
        return
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout)
    assert result["converter"] == "native" and result["format"] == "vmdk"
    assert result["plan"] == ("extents" if way in ("file", "http") else "stream")
    assert result.get("staged_bytes", 0) == 0
    assert not ran.exists(), ran.read_text()
    assert dest.stat().st_size == want.stat().st_size
    assert dest.read_bytes() == want.read_bytes()


def test_a_block_device_gets_zeros_where_the_vmdk_has_none(vmdks: dict[str, Path],
                                                           tmp_path: Path) -> None:
    """An old disk is overwritten whole: every grain without data is zeroed (a loop device
    stands in for the volume), in both readers."""
    if not shutil.which("losetup") or os.geteuid() != 0:
        pytest.skip("needs root and losetup")
    want = _qemu_raw(vmdks["vmware"], tmp_path / "qemu.raw")
    backing = tmp_path / "volume"
    for source, data in ((str(vmdks["vmware"]), None), ("-", vmdks["vmware"].read_bytes())):
        backing.write_bytes(b"\xa5" * want.stat().st_size)
        loop = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True,
                              capture_output=True, text=True).stdout.strip()
        try:
            r = _import(source, data, Path(loop), dict(os.environ), "--force")
            assert r.returncode == 0, r.stderr.decode()
        finally:
            subprocess.run(["losetup", "-d", loop], check=False)
        assert backing.read_bytes() == want.read_bytes()


# ---------------------------------------------------------------------------- hostile files

def _vmware(tmp_path: Path, images: Images, tamper: Tamper, name: str = "t.vmdk") -> Path:
    out = tmp_path / name
    out.write_bytes(vmware_stream_optimized(images.raw.read_bytes(), tamper=tamper))
    return out


def _first_data_grains(images: Images, n: int) -> list[int]:
    raw = images.raw.read_bytes()
    found = [g for g in range(len(raw) // GRAIN) if raw[g * GRAIN : (g + 1) * GRAIN].strip(b"\0")]
    return found[:n]


def _qemu_verdict(path: Path, tmp_path: Path) -> bytes | None:
    r = subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(path),
                        str(tmp_path / "verdict.raw")], capture_output=True, check=False)
    return (tmp_path / "verdict.raw").read_bytes() if r.returncode == 0 else None


HOSTILE: dict[str, Callable[[list[int]], Tamper]] = {
    # a marker claiming an earlier grain's place: the tables (qemu's guide) still agree
    "marker-backwards": lambda g: Tamper(marker_lba={g[2]: g[0] * 128}),
    "marker-past-capacity": lambda g: Tamper(marker_lba={g[1]: 1 << 40}),
    "marker-size-huge": lambda g: Tamper(marker_size={g[1]: 1 << 30}),
    "after-end-of-stream": lambda g: Tamper(trailer=b"\0" * 512),
    # a grain table marker holding fewer entries than a table has (it crashed the check of the
    # tables against the markers with an IndexError)
    "short-grain-table": lambda g: Tamper(short_tables=True),
}
#: what the stream reader says (it goes by the markers and checks them against the tables)
STREAM_WORDS = {
    "marker-backwards": "two grains for guest byte",
    "marker-past-capacity": "which no grain of this disk can be",
    "marker-size-huge": "1073741824 bytes, which no grain of this disk can be",
    "after-end-of-stream": "goes on after its end-of-stream marker",
    "short-grain-table": "where its table takes 2048",
}


@pytest.mark.parametrize("way", ["file", "stdin"])
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_vmware_files(images: Images, tmp_path: Path, case: str, way: str) -> None:
    """At random the tables place the grains, as in qemu: where qemu reads the file, the disk is
    qemu's, and where qemu fails, so do we. In file order the markers place them and must agree
    with the tables: a disagreement is an error, never another disk than qemu's."""
    path = _vmware(tmp_path, images, HOSTILE[case](_first_data_grains(images, 3)))
    verdict = _qemu_verdict(path, tmp_path)
    dest = tmp_path / "d.img"
    if way == "file":
        r = importer_cli("import", path, dest)
        if verdict is None:
            assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
            assert not dest.exists()
        else:
            assert r.returncode == 0, r.stderr
            assert dest.read_bytes() == verdict
        return
    r = importer_cli("import", "-", dest, input=path.read_bytes().decode("latin-1"),
                     encoding="latin-1")
    assert r.returncode == 1, r.stderr
    assert STREAM_WORDS[case] in r.stderr and "Traceback" not in r.stderr
    assert not dest.exists() and not list(tmp_path.glob("d.img*"))


def test_markers_that_disagree_with_the_tables_fail_in_file_order(images: Images,
                                                                  tmp_path: Path) -> None:
    """Two grains swapped by their markers: qemu (by the tables) reads one disk, the markers say
    another; the stream reader notices at the end and fails."""
    g = _first_data_grains(images, 2)
    path = _vmware(tmp_path, images, Tamper(marker_lba={g[0]: g[1] * 128, g[1]: g[0] * 128}))
    assert _qemu_verdict(path, tmp_path) == images.raw.read_bytes()
    r = importer_cli("import", "-", tmp_path / "d.img", input=path.read_bytes().decode("latin-1"),
                     encoding="latin-1")
    assert r.returncode == 1 and "disagree" in r.stderr, r.stderr


@pytest.mark.parametrize("kind", ["so", "vmware", "ms"])
@pytest.mark.parametrize("way", ["file", "http", "stdin"])
def test_a_truncated_vmdk_is_an_error_never_zeros(vmdks: dict[str, Path], nginx: Nginx,
                                                  tmp_path: Path, kind: str, way: str) -> None:
    whole = vmdks[kind].read_bytes()
    cut = tmp_path / f"cut-{kind}.vmdk"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    source, data = _source(way, cut, nginx, tmp_path)
    dest = tmp_path / "d.img"
    r = _import(source, data, dest, dict(os.environ))
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "truncated" in err and "Traceback" not in err
    assert not dest.exists()


def test_an_absurd_grain_directory_is_refused_in_qemus_words(tmp_path: Path) -> None:
    """CDI's functional test looks for "L1 size too big" (its invalid-vmdk fixture)."""
    path = tmp_path / "huge.vmdk"
    cap = 1 << 44
    path.write_bytes(header(cap, 2, grain=1, gtes=1, flags=3) + descriptor(cap, "monolithicSparse")
                     + bytes(512 * 4))
    r = importer_cli("import", path, tmp_path / "d.img")
    assert r.returncode == 1 and "L1 size too big" in r.stderr, r.stderr


def test_qemu_img_still_converts_on_request(vmdks: dict[str, Path], tmp_path: Path) -> None:
    r = importer_cli("import", vmdks["vmware"], tmp_path / "d.img", "--converter", "qemu-img",
                     "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["converter"] == "qemu-img"
    assert (tmp_path / "d.img").read_bytes() == _qemu_raw(vmdks["vmware"],
                                                          tmp_path / "q.raw").read_bytes()


def test_grains_too_large_for_the_native_reader_go_to_qemu_img(images: Images,
                                                               tmp_path: Path) -> None:
    """A 2 MiB grain (VMware allows up to 1 GiB) is one buffer too many for the native reader:
    qemu-img converts it, and the plan says why."""
    path = tmp_path / "big-grain.vmdk"
    path.write_bytes(vmware_stream_optimized(images.raw.read_bytes(), grain_sectors=4096,
                                             gtes=16))
    r = importer_cli("import", path, tmp_path / "d.img", "-o", "json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["converter"] == "qemu-img" and "more than the native reader takes" in \
        result["plan_reason"]
    assert (tmp_path / "d.img").read_bytes() == _qemu_raw(path, tmp_path / "q.raw").read_bytes()
