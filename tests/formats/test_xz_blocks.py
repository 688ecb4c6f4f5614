from __future__ import annotations

import lzma
import random
import subprocess

import pytest

from importer.errors import FormatError
from importer.formats.xz_blocks import XzBlockReader, decode_block_pieces, read_xz_index

DATA = random.Random(2).randbytes(1 << 20) + bytes(3 << 20) + b"tail" * 50_000


def xz_blocks(data: bytes, block: str = "256KiB") -> bytes:
    return subprocess.run(["xz", "-T2", "-1", f"--block-size={block}", "-c"], input=data,
                          capture_output=True, check=True).stdout


def test_multi_stream_with_padding() -> None:
    half = len(DATA) // 2
    blob = xz_blocks(DATA[:half]) + bytes(8) + xz_blocks(DATA[half:]) + bytes(4)
    blocks = read_xz_index(lambda o, n: blob[o : o + n], len(blob))
    assert sum(b.uncompressed_size for b in blocks) == len(DATA)
    assert [b.uncompressed_offset for b in blocks] == sorted(b.uncompressed_offset for b in blocks)
    out = bytearray(len(DATA))
    for b in blocks:
        for off, piece in decode_block_pieces(lambda o, n: blob[o : o + n], b, piece=100_000):
            out[off : off + len(piece)] = piece
    assert bytes(out) == DATA


def test_random_reads_match() -> None:
    blob = xz_blocks(DATA)
    reader = XzBlockReader(lambda o, n: blob[o : o + n],
                           read_xz_index(lambda o, n: blob[o : o + n], len(blob)))
    rnd = random.Random(4)
    for _ in range(200):
        off = rnd.randrange(len(DATA))
        n = rnd.randrange(1, 700_000)
        assert reader.read(off, n) == DATA[off : off + n]
    reader.close()


def test_damaged_index_and_single_block() -> None:
    blob = bytearray(xz_blocks(DATA))
    blob[-20] ^= 0xFF  # inside the index
    with pytest.raises(FormatError):
        read_xz_index(lambda o, n: bytes(blob[o : o + n]), len(blob))
    single = lzma.compress(DATA)
    assert len(read_xz_index(lambda o, n: single[o : o + n], len(single))) == 1
