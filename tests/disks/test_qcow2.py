"""The native qcow2 reader against qemu-img itself: a corpus generated here with qemu-img and
qemu-io must come out byte-identical to `qemu-img convert -O raw`, and damaged or hostile
images must be refused with a FormatError / UnsafeImageError, never read wrongly."""

from __future__ import annotations

import random
import struct
import subprocess
from pathlib import Path

import pytest

from importer.config import build_config
from importer.engine import inspect_source, run_import
from importer.errors import FormatError, ImporterError, UnsafeImageError

from ..conftest import Nginx

VSIZE = (24 << 20) + 3 * 512  # not a whole number of clusters: the last one is partial


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random data, zero runs and all-zero clusters inside allocated areas, at odd offsets."""
    path = tmp_path_factory.mktemp("qcow2-seed") / "seed.raw"
    rnd = random.Random(6)
    buf = bytearray(VSIZE)
    for _ in range(60):
        off = rnd.randrange(0, VSIZE - 1)
        n = min(rnd.choice([1, 511, 4096, 70000, 300000]), VSIZE - off)
        buf[off : off + n] = rnd.randbytes(n)
    # text compresses well: exercise long compressed runs as cloud images have
    text = b"the quick brown fox jumps over the lazy dog " * 40000
    buf[4 << 20 : (4 << 20) + len(text)] = text
    path.write_bytes(bytes(buf))
    return path


def _convert(seed: Path, dest: Path, *opts: str, compress: bool = False) -> Path:
    argv = ["qemu-img", "convert", "-f", "raw", "-O", "qcow2"]
    if compress:
        argv.append("-c")
    if opts:
        argv += ["-o", ",".join(opts)]
    _sh(*argv, str(seed), str(dest))
    return dest


def _qemu_io(image: Path, *cmds: str) -> None:
    argv = ["qemu-io", "-f", "qcow2"]
    for c in cmds:
        argv += ["-c", c]
    _sh(*argv, str(image))


def _zero_clusters(seed: Path, d: Path) -> Path:
    img = _convert(seed, d / "zero.qcow2")
    _qemu_io(img, "write -z 1M 3M", "write -z -u 8M 64k", "write -P 0x5a 20M 12k")
    return img


def _snapshots(seed: Path, d: Path) -> Path:
    img = _convert(seed, d / "snap.qcow2")
    _sh("qemu-img", "snapshot", "-c", "before", str(img))
    _qemu_io(img, "write -P 0x11 0 1M", "write -z 4M 64k", "discard 6M 1M")
    _sh("qemu-img", "snapshot", "-c", "after", str(img))
    _qemu_io(img, "write -P 0x22 512k 8k")
    return img


def _metadata_last(seed: Path, d: Path) -> Path:
    """Data first, then a resize that moves the L1 table to the end, then writes whose L2
    tables land after their data."""
    img = _convert(seed, d / "late.qcow2", "cluster_size=4096")
    _sh("qemu-img", "resize", "-f", "qcow2", str(img), str(VSIZE + (600 << 20)))
    _qemu_io(img, f"write -P 0x33 {VSIZE + (300 << 20)} 128k", "write -P 0x44 64k 4k")
    return img


CORPUS = {
    "v3-64k": lambda s, d: _convert(s, d / "a.qcow2"),
    "v2": lambda s, d: _convert(s, d / "v2.qcow2", "compat=0.10"),
    "c4k": lambda s, d: _convert(s, d / "c4k.qcow2", "cluster_size=4096"),
    "c512": lambda s, d: _convert(s, d / "c512.qcow2", "cluster_size=512"),
    "c2m": lambda s, d: _convert(s, d / "c2m.qcow2", "cluster_size=2M"),
    "zlib": lambda s, d: _convert(s, d / "z.qcow2", compress=True),
    "zlib-v2": lambda s, d: _convert(s, d / "z2.qcow2", "compat=0.10", compress=True),
    "zlib-4k": lambda s, d: _convert(s, d / "z4k.qcow2", "cluster_size=4096", compress=True),
    "zlib-2m": lambda s, d: _convert(s, d / "z2m.qcow2", "cluster_size=2M", compress=True),
    "zstd": lambda s, d: _convert(s, d / "zs.qcow2", "compression_type=zstd", compress=True),
    "prealloc-metadata": lambda s, d: _convert(s, d / "pm.qcow2", "preallocation=metadata"),
    "prealloc-falloc": lambda s, d: _convert(s, d / "pf.qcow2", "preallocation=falloc"),
    "refcount-1": lambda s, d: _convert(s, d / "r1.qcow2", "refcount_bits=1"),
    "refcount-64": lambda s, d: _convert(s, d / "r64.qcow2", "refcount_bits=64"),
    "lazy-refcounts": lambda s, d: _convert(s, d / "lazy.qcow2", "lazy_refcounts=on"),
    "zero-clusters": _zero_clusters,
    "snapshots": _snapshots,
    "metadata-after-data": _metadata_last,
}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qcow2-corpus")


def _reference(image: Path) -> Path:
    ref = image.with_suffix(".ref.raw")
    if not ref.exists():
        _sh("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(ref))
    return ref


@pytest.mark.parametrize("name", list(CORPUS))
def test_native_reader_matches_qemu_img(seed: Path, corpus_dir: Path, tmp_path: Path,
                                        name: str) -> None:
    image = CORPUS[name](seed, corpus_dir)
    dest = tmp_path / "out.raw"
    result = run_import(build_config(source=str(image), dest=str(dest)))
    assert (result.plan, result.converter) == ("extents", "native")
    ref = _reference(image)
    assert dest.stat().st_size == ref.stat().st_size
    assert dest.read_bytes() == ref.read_bytes()
    _sh("qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", str(dest), str(image))
    # zeros are holes, not written zeros (the seed holds ~7 MiB of data in 24 MiB; the sparse
    # writer finds zeros in 64 KiB blocks, qemu-img in 4 KiB ones)
    assert dest.stat().st_blocks * 512 < 12 << 20 and result.zero_bytes_skipped > 10 << 20


@pytest.mark.parametrize("name", ["zlib", "zstd", "c4k", "metadata-after-data"])
def test_native_reader_over_http(seed: Path, corpus_dir: Path, nginx: Nginx, tmp_path: Path,
                                 name: str) -> None:
    image = CORPUS[name](seed, corpus_dir)
    served = nginx.www / f"native-{name}.qcow2"
    served.write_bytes(image.read_bytes())
    dest = tmp_path / "out.raw"
    result = run_import(build_config(source=nginx.url(served.name), dest=str(dest)))
    assert (result.plan, result.converter) == ("extents", "native")
    assert dest.read_bytes() == _reference(image).read_bytes()
    # only what the image holds was fetched: no read of unallocated space, no second pass
    assert result.bytes_read <= image.stat().st_size + (2 << 20)


def test_extended_l2_goes_to_qemu_img_with_the_reason(seed: Path, tmp_path: Path) -> None:
    image = _convert(seed, tmp_path / "ext.qcow2", "extended_l2=on", "cluster_size=128k")
    info = inspect_source(build_config(source=str(image), dest=""))
    assert (info["plan"], info["converter"]) == ("convert", "qemu-img")
    assert "subclusters" in info["plan_reason"]
    dest = tmp_path / "out.raw"
    result = run_import(build_config(source=str(image), dest=str(dest)))
    assert result.plan == "convert" and dest.read_bytes() == seed.read_bytes()


def test_converter_qemu_img_is_honoured(seed: Path, corpus_dir: Path, tmp_path: Path) -> None:
    image = CORPUS["zlib"](seed, corpus_dir)
    dest = tmp_path / "out.raw"
    result = run_import(build_config(source=str(image), dest=str(dest), converter="qemu-img"))
    assert (result.plan, result.converter) == ("convert", "qemu-img")
    assert dest.read_bytes() == seed.read_bytes()


# ------------------------------------------------------------------------- damaged / hostile

def _patch(src: Path, dst: Path, offset: int, data: bytes) -> Path:
    raw = bytearray(src.read_bytes())
    raw[offset : offset + len(data)] = data
    dst.write_bytes(bytes(raw))
    return dst


def _header(image: Path) -> tuple[int, int, int]:
    h = image.read_bytes()[:48]
    cluster_bits, = struct.unpack_from(">I", h, 20)
    l1_size, l1_offset = struct.unpack_from(">IQ", h, 36)
    return cluster_bits, l1_size, l1_offset


def _first_l2(image: Path) -> tuple[int, int]:
    """(offset of the L1 entry, the L2 table's offset) of the first allocated L1 entry."""
    _cb, l1_size, l1_offset = _header(image)
    raw = image.read_bytes()
    for i in range(l1_size):
        e, = struct.unpack_from(">Q", raw, l1_offset + 8 * i)
        if e & 0x00FF_FFFF_FFFF_FE00:
            return l1_offset + 8 * i, e & 0x00FF_FFFF_FFFF_FE00
    raise AssertionError("no L2 table")


def _first_data_entry(image: Path) -> tuple[int, int]:
    """(file offset of the first allocated L2 entry, its value)."""
    _l1e, l2 = _first_l2(image)
    raw = image.read_bytes()
    for j in range(8192):
        e, = struct.unpack_from(">Q", raw, l2 + 8 * j)
        if e & 0x00FF_FFFF_FFFF_FE00 or e & (1 << 62):
            return l2 + 8 * j, e
    raise AssertionError("no data cluster")


def _refused(image: Path, tmp_path: Path) -> ImporterError:
    dest = tmp_path / "out.raw"
    with pytest.raises((FormatError, UnsafeImageError)) as err:
        run_import(build_config(source=str(image), dest=str(dest)))
    assert not dest.exists() and not (tmp_path / "out.raw.partial").exists()
    return err.value


def test_l1_table_past_the_end_is_refused(seed: Path, corpus_dir: Path, tmp_path: Path) -> None:
    good = CORPUS["v3-64k"](seed, corpus_dir)
    bad = _patch(good, tmp_path / "bad.qcow2", 40, struct.pack(">Q", 1 << 40))
    assert "past the end" in str(_refused(bad, tmp_path))


def test_unaligned_l1_table_is_refused(seed: Path, corpus_dir: Path, tmp_path: Path) -> None:
    good = CORPUS["v3-64k"](seed, corpus_dir)
    _cb, _n, l1 = _header(good)
    bad = _patch(good, tmp_path / "bad.qcow2", 40, struct.pack(">Q", l1 + 8))
    assert "not cluster-aligned" in str(_refused(bad, tmp_path))


def test_l1_too_small_for_the_virtual_size_is_refused(seed: Path, corpus_dir: Path,
                                                      tmp_path: Path) -> None:
    good = CORPUS["c4k"](seed, corpus_dir)  # 4 KiB clusters: 2 MiB per L1 entry, 13 entries
    bad = _patch(good, tmp_path / "bad.qcow2", 36, struct.pack(">I", 2))
    assert "L1 table too small" in str(_refused(bad, tmp_path))


def test_l2_table_past_the_end_and_unaligned_are_refused(seed: Path, corpus_dir: Path,
                                                         tmp_path: Path) -> None:
    good = CORPUS["v3-64k"](seed, corpus_dir)
    l1e, l2 = _first_l2(good)
    far = _patch(good, tmp_path / "far.qcow2", l1e, struct.pack(">Q", (1 << 63) | (1 << 45)))
    assert "past the end" in str(_refused(far, tmp_path))
    odd = _patch(good, tmp_path / "odd.qcow2", l1e, struct.pack(">Q", (1 << 63) | (l2 + 512)))
    assert "not cluster-aligned" in str(_refused(odd, tmp_path))


def test_data_cluster_past_the_end_is_refused(seed: Path, corpus_dir: Path, tmp_path: Path
                                              ) -> None:
    good = CORPUS["v3-64k"](seed, corpus_dir)
    where, _e = _first_data_entry(good)
    bad = _patch(good, tmp_path / "bad.qcow2", where, struct.pack(">Q", (1 << 63) | (1 << 44)))
    assert "past the end" in str(_refused(bad, tmp_path))


def test_unaligned_data_cluster_is_refused(seed: Path, corpus_dir: Path, tmp_path: Path) -> None:
    good = CORPUS["v3-64k"](seed, corpus_dir)
    where, e = _first_data_entry(good)
    bad = _patch(good, tmp_path / "bad.qcow2", where, struct.pack(">Q", e + 4096))
    assert "not cluster-aligned" in str(_refused(bad, tmp_path))


def test_garbage_compressed_cluster_is_refused(seed: Path, corpus_dir: Path, tmp_path: Path
                                               ) -> None:
    good = CORPUS["zlib"](seed, corpus_dir)
    _where, e = _first_data_entry(good)
    assert e & (1 << 62)
    shift = 62 - (16 - 8)
    host = e & ((1 << shift) - 1)
    bad = _patch(good, tmp_path / "bad.qcow2", host, b"\xff" * 256)
    assert "compressed cluster" in str(_refused(bad, tmp_path))


def test_truncated_image_is_refused(seed: Path, corpus_dir: Path, tmp_path: Path) -> None:
    good = CORPUS["v3-64k"](seed, corpus_dir)
    bad = tmp_path / "short.qcow2"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "truncated" in str(_refused(bad, tmp_path))


def test_hostile_headers_are_refused_by_the_native_plan_too(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * 4096)
    backed = tmp_path / "backed.qcow2"
    _sh("qemu-img", "create", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(backed))
    datafile = tmp_path / "df.qcow2"
    _sh("qemu-img", "create", "-f", "qcow2", "-o", f"data_file={secret}", str(datafile), "1M")
    for image in (backed, datafile):
        assert isinstance(_refused(image, tmp_path), UnsafeImageError)


# ------------------------------------------------------------------------- in file order

def _gzip(image: Path, tmp_path: Path) -> Path:
    out = tmp_path / (image.name + ".gz")
    _sh("bash", "-c", f"gzip -1 -c {image} > {out}")
    return out


@pytest.mark.parametrize("name", list(CORPUS))
def test_streaming_reader_matches_qemu_img(seed: Path, corpus_dir: Path, tmp_path: Path,
                                           name: str) -> None:
    """The same corpus inside gzip: converted as it streams, nothing staged for an image
    qemu-img convert wrote; images with tables after their data hold those clusters."""
    image = CORPUS[name](seed, corpus_dir)
    dest = tmp_path / "out.raw"
    result = run_import(build_config(source=str(_gzip(image, tmp_path)), dest=str(dest)))
    assert (result.plan, result.converter) == ("stream", "native")
    assert dest.read_bytes() == _reference(image).read_bytes()
    if name in ("metadata-after-data", "snapshots", "zero-clusters"):
        return  # rewritten in place by qemu-io: some data precedes its table (held in memory)
    assert result.staged_bytes == 0


def test_streaming_spills_beyond_the_bound_and_reports_it(seed: Path, corpus_dir: Path,
                                                          tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    import importer.disks.qcow2_stream as qs

    monkeypatch.setattr(qs, "HOLD_IN_MEMORY", 1 << 20)
    image = CORPUS["metadata-after-data"](seed, corpus_dir)  # its L1 table is at the end
    gz = _gzip(image, tmp_path)
    dest = tmp_path / "out.raw"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = run_import(build_config(source=str(gz), dest=str(dest), scratch_dir=str(scratch)))
    assert result.plan == "stream" and result.staged_bytes >= 1 << 20
    assert dest.read_bytes() == _reference(image).read_bytes()
    assert list(scratch.iterdir()) == []  # the spill file is gone


def test_streaming_without_scratch_where_it_is_required_asks_for_it(
        seed: Path, corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import importer.disks.qcow2_stream as qs
    from importer.errors import ScratchSpaceRequiredError

    monkeypatch.setattr(qs, "HOLD_IN_MEMORY", 1 << 20)
    gz = _gzip(CORPUS["metadata-after-data"](seed, corpus_dir), tmp_path)
    dest = tmp_path / "out.raw"
    cfg = dataclasses.replace(build_config(source=str(gz), dest=str(dest)), scratch_required=True)
    with pytest.raises(ScratchSpaceRequiredError):
        run_import(cfg)
    assert not dest.exists() and not (tmp_path / "out.raw.partial").exists()


@pytest.mark.parametrize("damage", ["truncated", "l2-unaligned", "data-unaligned",
                                    "compressed-garbage"])
def test_streaming_reader_refuses_damaged_images(seed: Path, corpus_dir: Path, tmp_path: Path,
                                                 damage: str) -> None:
    good = CORPUS["zlib" if damage == "compressed-garbage" else "v3-64k"](seed, corpus_dir)
    bad = tmp_path / "bad.qcow2"
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "l2-unaligned":
        l1e, l2 = _first_l2(good)
        _patch(good, bad, l1e, struct.pack(">Q", (1 << 63) | (l2 + 512)))
    elif damage == "data-unaligned":
        where, e = _first_data_entry(good)
        _patch(good, bad, where, struct.pack(">Q", e + 4096))
    else:
        _where, e = _first_data_entry(good)
        host = e & ((1 << (62 - 8)) - 1)
        _patch(good, bad, host, b"\xff" * 256)
    dest = tmp_path / "out.raw"
    with pytest.raises(FormatError):
        run_import(build_config(source=str(_gzip(bad, tmp_path)), dest=str(dest)))
    assert not dest.exists() and not (tmp_path / "out.raw.partial").exists()
