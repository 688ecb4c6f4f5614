"""End-to-end imports through the core over a real nginx, checked with `qemu-img compare`."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from pathlib import Path

import pytest

from importer.config import build_config
from importer.engine import inspect_source, run_import
from importer.errors import (
    ChecksumMismatchError,
    FormatError,
    SourceAuthError,
    SourceContentError,
    SourceNotFoundError,
    SourceTLSError,
    TargetTooSmallError,
)
from importer.progress import Progress

from .conftest import SEED_SIZE, Images, Nginx, same_disk

CASES = [
    # file, expected format, expected plan
    ("disk.raw", "raw", "ranges"),
    ("disk.raw.gz", "raw", "stream"),
    ("disk.raw.xz", "raw", "extents"),
    ("disk-1block.raw.xz", "raw", "stream"),
    ("disk.raw.zst", "raw", "stream"),
    ("disk.raw.gz.xz", "raw", "stream"),
    ("disk.qcow2", "qcow2", "extents"),
    ("disk-v2.qcow2", "qcow2", "extents"),
    ("disk-zstd.qcow2", "qcow2", "extents"),
    ("disk.qcow2.xz", "qcow2", "extents"),
    ("disk.qcow2.gz", "qcow2", "stream"),
    ("disk.qcow2.zst", "qcow2", "stream"),
    ("disk-so.vmdk", "vmdk", "extents"),
    ("disk-ms.vmdk", "vmdk", "extents"),
    ("disk.vdi", "vdi", "convert"),
    ("disk-dynamic.vhd", "vhd", "convert"),
    ("disk-fixed.vhd", "vhd", "ranges"),
    ("disk.vhdx", "vhdx", "convert"),
]


def _import(source: str, dest: Path, **kw: object):  # type: ignore[no-untyped-def]
    return run_import(build_config(source=source, dest=str(dest), **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "fmt", "plan"), CASES, ids=[c[0] for c in CASES])
def test_every_format_over_http(nginx: Nginx, images: Images, tmp_path: Path, name: str,
                                fmt: str, plan: str) -> None:
    dest = tmp_path / "disk.img"
    result = _import(nginx.url(name), dest)
    assert (result.format, result.path) == (fmt, plan)
    assert dest.stat().st_size == SEED_SIZE
    assert same_disk(images.raw, dest)
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".importer-scratch-*"))
    # sparse: the holes of the seed stay holes
    assert dest.stat().st_blocks * 512 < SEED_SIZE // 2


def test_no_range_support_streams_qcow2_and_stages_for_qemu_img(nginx: Nginx, images: Images,
                                                                 tmp_path: Path) -> None:
    result = _import(nginx.url("norange/disk.qcow2"), tmp_path / "d.img")
    assert (result.plan, result.converter, result.staged_bytes) == ("stream", "native", 0)
    assert same_disk(images.raw, tmp_path / "d.img")
    for name in ("norange/disk.qcow2", "norange/disk.vhdx"):
        result = _import(nginx.url(name), tmp_path / "s.img", converter="qemu-img")
        assert (result.plan, result.converter) == ("staged", "qemu-img")
        assert result.staged_bytes > 0 and same_disk(images.raw, tmp_path / "s.img")


def test_plain_raw_streams_when_a_checksum_needs_order(nginx: Nginx, images: Images,
                                                       tmp_path: Path) -> None:
    digest = hashlib.sha256(images["disk-fixed.vhd"].read_bytes()).hexdigest()
    result = _import(nginx.url("disk-fixed.vhd"), tmp_path / "d.img", checksum=f"sha256:{digest}")
    assert (result.path, result.format) == ("stream", "vhd")
    assert same_disk(images.raw, tmp_path / "d.img")
    assert (tmp_path / "d.img").stat().st_size == SEED_SIZE  # the footer is not part of the disk


def test_raw_streams_without_range_support(nginx: Nginx, images: Images, tmp_path: Path) -> None:
    result = _import(nginx.url("norange/disk.raw.xz"), tmp_path / "d.img")
    assert result.path == "stream"
    assert same_disk(images.raw, tmp_path / "d.img")


def test_tiny_image_is_padded_to_a_sector_with_a_warning(
        nginx: Nginx, images: Images, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # issue 9 item 11: qemu, and so CDI, round a raw disk up to whole 512-byte sectors
    result = _import(nginx.url("tiny.raw"), tmp_path / "d.img")
    assert result.virtual_size == 512
    assert (tmp_path / "d.img").read_bytes() == images["tiny.raw"].read_bytes().ljust(512, b"\0")
    assert "not a whole number of 512-byte sectors" in caplog.text and "truncated" in caplog.text


def test_iso(nginx: Nginx, images: Images, tmp_path: Path) -> None:
    result = _import(nginx.url("disk.iso"), tmp_path / "d.img")
    assert result.format == "iso"
    assert (tmp_path / "d.img").read_bytes() == images["disk.iso"].read_bytes()


def test_resize_to_image_size_never_shrinks(nginx: Nginx, images: Images, tmp_path: Path) -> None:
    _import(nginx.url("disk.qcow2"), tmp_path / "big.img", image_size="64Mi")
    assert (tmp_path / "big.img").stat().st_size == 64 << 20
    _import(nginx.url("disk.raw.gz"), tmp_path / "big2.img", image_size="40M")
    assert (tmp_path / "big2.img").stat().st_size == 40_000_000


@pytest.mark.parametrize("name", ["disk.qcow2", "disk.raw"])
def test_target_too_small_fails_before_writing(nginx: Nginx, tmp_path: Path, name: str) -> None:
    dest = tmp_path / "d.img"
    with pytest.raises(TargetTooSmallError) as ei:
        _import(nginx.url(name), dest, image_size="10Mi")
    assert str(SEED_SIZE) in str(ei.value) and "required" in str(ei.value)
    assert not dest.exists() and not list(tmp_path.iterdir())


def test_preallocation_allocates_every_block(nginx: Nginx, tmp_path: Path) -> None:
    for name in ("disk.raw.gz", "disk.qcow2"):
        dest = tmp_path / f"{name}.img"
        result = _import(nginx.url(name), dest, preallocation=True)
        assert result.preallocated
        assert dest.stat().st_blocks * 512 >= SEED_SIZE


@pytest.mark.parametrize("name", ["disk.raw.gz", "disk.qcow2", "disk.vdi"])
def test_preallocation_covers_the_area_the_resize_added(nginx: Nginx, tmp_path: Path,
                                                        name: str) -> None:
    # issue 9 item 19: a converted image grown to --image-size was allocated only up to the
    # image's own size while preallocationApplied said true
    dest = tmp_path / "d.img"
    result = _import(nginx.url(name), dest, preallocation=True, image_size="64Mi")
    assert result.preallocated and dest.stat().st_size == 64 << 20
    assert dest.stat().st_blocks * 512 >= 64 << 20


def test_zstd_long_window_is_refused_with_bounded_memory(nginx: Nginx, tmp_path: Path) -> None:
    # issue 9 item 10: a --long=31 frame of unknown size asks for a 2 GiB window
    data = random.Random(1).randbytes(1 << 20)
    z = subprocess.run(["zstd", "-q", "--long=31", "-c"], input=data, capture_output=True,
                       check=True).stdout
    (nginx.www / "long.raw.zst").write_bytes(z)
    with pytest.raises(FormatError, match="decoding window over 128 MiB"):
        _import(nginx.url("long.raw.zst"), tmp_path / "d.img")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["disk.raw.gz", "disk.qcow2", "disk.raw.xz"])
def test_checksum_verified(nginx: Nginx, images: Images, tmp_path: Path, name: str) -> None:
    digest = hashlib.sha256(images[name].read_bytes()).hexdigest()
    result = _import(nginx.url(name), tmp_path / "d.img", checksum=f"sha256:{digest}")
    assert result.checksum == f"sha256:{digest}"
    assert same_disk(images.raw, tmp_path / "d.img")


@pytest.mark.parametrize("name", ["disk.raw.gz", "disk.qcow2"])
def test_checksum_mismatch_leaves_nothing(nginx: Nginx, tmp_path: Path, name: str) -> None:
    dest = tmp_path / "d.img"
    dest.write_bytes(b"previous content")
    with pytest.raises(ChecksumMismatchError, match=r"checksum mismatch: expected md5:0{32}"):
        _import(nginx.url(name), dest, checksum="md5:" + "0" * 32)
    assert dest.read_bytes() == b"previous content"  # untouched: never half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.img"]


def test_basic_auth(nginx: Nginx, images: Images, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    _import(nginx.url("private/disk.qcow2"), tmp_path / "d.img", username="tester",
            password_file=str(pw))
    assert same_disk(images.raw, tmp_path / "d.img")
    with pytest.raises(SourceAuthError, match="401"):
        _import(nginx.url("private/disk.qcow2"), tmp_path / "e.img")
    pw.write_text("wrong")
    with pytest.raises(SourceAuthError, match="refused"):
        _import(nginx.url("private/disk.qcow2"), tmp_path / "e.img", username="tester",
                password_file=str(pw))


def test_tls_with_ca_dir_and_insecure(nginx: Nginx, images: Images, tmp_path: Path) -> None:
    with pytest.raises(SourceTLSError, match="--ca-dir"):
        _import(nginx.tls_url("disk.qcow2"), tmp_path / "d.img")
    _import(nginx.tls_url("disk.qcow2"), tmp_path / "d.img", ca_dir=str(nginx.ca_dir))
    assert same_disk(images.raw, tmp_path / "d.img")
    _import(nginx.tls_url("disk.raw.zst"), tmp_path / "e.img", insecure=True)
    assert same_disk(images.raw, tmp_path / "e.img")


def test_redirect_followed_once(nginx: Nginx, images: Images, tmp_path: Path) -> None:
    result = _import(nginx.url("redirect/disk.qcow2"), tmp_path / "d.img")
    assert result.path == "extents"
    assert same_disk(images.raw, tmp_path / "d.img")
    log = (Path(str(nginx.ca_dir.parent)) / "access.log").read_text()
    assert log.count("GET /redirect/disk.qcow2") == 1  # the final URL is pinned


def test_not_found_and_html(nginx: Nginx, tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="404"):
        _import(nginx.url("missing.qcow2"), tmp_path / "d.img")
    with pytest.raises(SourceContentError, match="HTML/XML document"):
        _import(nginx.url("page.html"), tmp_path / "d.img")
    assert not list(tmp_path.iterdir())


def test_tar_without_archive_content_type_is_refused(nginx: Nginx, images: Images,
                                                      tmp_path: Path) -> None:
    import tarfile

    with tarfile.open(images.dir / "one.tar", "w") as tf:
        tf.add(images["tiny.raw"], arcname="tiny.raw")
    with pytest.raises(FormatError, match="--content-type archive"):
        _import(nginx.url("one.tar"), tmp_path / "d.img")


def test_inspect_reports_without_importing(nginx: Nginx) -> None:
    cfg = build_config(source=nginx.url("disk.raw.xz"), dest="/dev/null")
    info = inspect_source(cfg)
    assert info["format"] == "raw" and info["compression"] == ["xz"]
    assert info["virtual_size"] == SEED_SIZE and info["safe"] is True
    info = inspect_source(build_config(source=nginx.url("disk.vhdx"), dest="/dev/null"))
    assert info["format"] == "vhdx" and info["virtual_size"] == SEED_SIZE


def test_progress_reaches_100_and_counts(nginx: Nginx, tmp_path: Path) -> None:
    progress = Progress()
    cfg = build_config(source=nginx.url("disk.qcow2.gz"), dest=str(tmp_path / "d.img"))
    result = run_import(cfg, progress)
    assert progress.percent == 100.0
    assert result.bytes_read == os.path.getsize(nginx.www / "disk.qcow2.gz")
    # the native reader writes the data and leaves the zeros as holes
    assert result.converter == "native"
    assert result.bytes_written + result.zero_bytes_skipped == SEED_SIZE
    assert 0 < result.bytes_written < SEED_SIZE


PLAN_OPTIONS = [{}, {"converter": "qemu-img"}, {"connections": 1}, {"checksum": True}]


@pytest.mark.parametrize("options", PLAN_OPTIONS, ids=["default", "qemu-img", "one-connection",
                                                       "checksum"])
def test_inspect_reports_the_plan_import_takes(nginx: Nginx, tmp_path: Path,
                                               options: dict[str, object]) -> None:
    """For every image of the suite (over HTTP and as a local file) and every option that
    changes the plan, inspect and import answer from the same decision."""
    plans = set()
    for i, (name, _fmt, _plan) in enumerate([*CASES, ("disk.raw", "raw", "")]):
        source = nginx.url(name) if i < len(CASES) else str(nginx.www / name)
        opts = dict(options)
        if opts.get("checksum"):
            digest = hashlib.sha256((nginx.www / name).read_bytes()).hexdigest()
            opts["checksum"] = f"sha256:{digest}"
        info = inspect_source(build_config(source=source, dest="", **opts))  # type: ignore[arg-type]
        dest = tmp_path / f"{i}.img"
        result = run_import(build_config(source=source, dest=str(dest), **opts))  # type: ignore[arg-type]
        assert (info["plan"], info["converter"], info["plan_reason"]) == (
            result.plan, result.converter, result.plan_reason), name
        assert same_disk(nginx.www / "disk.raw", dest), name
        plans.add(result.plan)
    if not options or "connections" in options:
        assert plans == ({"ranges", "stream", "extents", "convert"} - (
            {"ranges"} if options else set()))
    if "checksum" in options:
        assert plans == {"stream", "staged"}  # qcow2 streams; vmdk & co. are staged
    if "converter" in options:
        assert plans == {"ranges", "stream", "extents", "convert", "staged"}
