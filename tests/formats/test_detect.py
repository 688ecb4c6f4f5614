"""Compression layers: recognised by magic bytes, peeled in any nesting, and failures that name
the layer instead of a codec's traceback."""

from __future__ import annotations

import gzip
import io
import lzma
from pathlib import Path

import pytest
import zstandard

from importer.config import build_config
from importer.engine import run_import
from importer.errors import FormatError
from importer.formats.detect import detect

from ..conftest import Images, same_disk


def detect_bytes(data: bytes):  # type: ignore[no-untyped-def]
    return detect(io.BytesIO(data), size=len(data), source_read_at=None)  # type: ignore[arg-type]


def test_nested_layers_in_any_order() -> None:
    payload = b"QFI\xfb" + bytes(200)
    wrapped = zstandard.ZstdCompressor().compress(gzip.compress(lzma.compress(payload)))
    with pytest.raises(FormatError):  # a 204-byte qcow2 header is truncated: still detected
        detect_bytes(wrapped)
    det = detect_bytes(zstandard.ZstdCompressor().compress(gzip.compress(b"hello" * 100)))
    assert det.codecs == ["zstd", "gzip"] and det.info.format == "raw"
    assert det.stream.read() == b"hello" * 100


def test_too_many_layers_refused() -> None:
    data = b"x" * 100
    for _ in range(6):
        data = gzip.compress(data)
    with pytest.raises(FormatError, match="nested compression"):
        detect_bytes(data)


def test_empty_source() -> None:
    with pytest.raises(FormatError, match="empty"):
        detect_bytes(b"")
    with pytest.raises(FormatError, match=r"empty.*after gzip"):
        detect_bytes(gzip.compress(b""))


@pytest.mark.parametrize("name", ["disk.raw.gz", "disk.raw.xz", "disk.raw.zst", "disk.qcow2.gz"])
def test_truncated_compressed_data_fails_cleanly(images: Images, tmp_path: Path, name: str) -> None:
    data = images[name].read_bytes()
    src = tmp_path / name
    src.write_bytes(data[: len(data) * 2 // 3])
    dest = tmp_path / "out" / "d.img"
    dest.parent.mkdir()
    with pytest.raises(FormatError, match=r"truncated|damaged"):
        run_import(build_config(source=str(src), dest=str(dest)))
    assert list(dest.parent.iterdir()) == []


def test_corrupt_xz_block_is_detected_in_parallel_path(images: Images, tmp_path: Path) -> None:
    data = bytearray(images["disk.raw.xz"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    src = tmp_path / "bad.raw.xz"
    src.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"corrupt"):
        run_import(build_config(source=str(src), dest=str(tmp_path / "d.img")))
    assert not (tmp_path / "d.img").exists()


def test_local_file_sources(images: Images, tmp_path: Path) -> None:
    result = run_import(build_config(source=f"file://{images['disk.raw.xz']}",
                                     dest=str(tmp_path / "d.img")))
    assert result.path == "extents"
    assert same_disk(images.raw, tmp_path / "d.img")
