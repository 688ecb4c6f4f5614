"""Multi-block xz as a random-access disk: blocks decoded whole, identical zero blocks decoded
once (a third of the decoding CPU on sparse disks)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import importer.disks.xz as xzdisk
from importer.disks.xz import XzDisk
from importer.formats.pinned import PinnedBytes
from importer.formats.xz_blocks import read_xz_index


def test_zero_blocks_are_decoded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block = 256 << 10
    data = bytes(4 * block) + os.urandom(block) + bytes(3 * block)
    raw = tmp_path / "d.raw"
    raw.write_bytes(data)
    subprocess.run(["xz", "-1", "-k", f"--block-size={block}", str(raw)], check=True)
    xz = (tmp_path / "d.raw.xz").read_bytes()

    def read_at(offset: int, n: int) -> bytes:
        return xz[offset : offset + n]

    decoded: list[int] = []
    real = xzdisk.decode_pieces

    def counting(compressed: bytes, blk: object, piece: int = 1 << 20):  # type: ignore[no-untyped-def]
        decoded.append(1)
        return real(compressed, blk, piece)  # type: ignore[arg-type]

    monkeypatch.setattr(xzdisk, "decode_pieces", counting)
    disk = XzDisk(read_at, read_xz_index(read_at, len(xz)), PinnedBytes())
    out = bytearray()
    for ext in disk.extents():
        buf = bytearray(disk.read_unit)
        n = disk.readinto_at(ext.start, memoryview(buf)[: ext.length])
        out += buf[:n]
    assert bytes(out) == data
    # the first zero block and the random one; the other six zero blocks come from the memo
    assert len(decoded) == 2
