"""A multi-block .xz file over a ranged source as a random-access disk: each block is a data
extent read whole, decoded on the copier's worker threads (lzma releases the GIL), so the
blocks of a raw.xz decode on all cores."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from ..formats.pinned import PinnedBytes
from ..formats.xz_blocks import XzBlock, ZeroBlockMemo, decode_pieces, read_block
from .base import Extent

__all__ = ["XzDisk"]

ReadAt = Callable[[int, int], bytes]


class XzDisk:
    complete = True

    def __init__(self, read_at: ReadAt, blocks: list[XzBlock], pins: PinnedBytes) -> None:
        self._read_at = read_at
        self._blocks = blocks
        self._starts = [b.uncompressed_offset for b in blocks]
        self._pins = pins
        self._memo = ZeroBlockMemo()
        self._size = sum(b.uncompressed_size for b in blocks)
        self.read_unit = max((b.uncompressed_size for b in blocks), default=0)

    @property
    def size(self) -> int:
        return self._size

    @property
    def compressed_size(self) -> int:
        last = self._blocks[-1]
        return last.offset + last.unpadded_size

    def extents(self) -> Iterator[Extent]:
        for b in self._blocks:
            if b.uncompressed_size:
                yield Extent(b.uncompressed_offset, b.uncompressed_size, False)

    def readinto_at(self, offset: int, buf: bytearray | memoryview) -> int:
        i = bisect.bisect_right(self._starts, offset) - 1
        block = self._blocks[i]
        if offset != block.uncompressed_offset or len(buf) < block.uncompressed_size:
            raise ValueError("an xz block is read whole, from its start")
        size = block.uncompressed_size
        compressed = read_block(self._read_at, block)
        view = memoryview(buf)
        if self._memo.is_zero(compressed, size):
            view[:size] = bytes(size)
            return size
        zero = True
        for pos, piece in decode_pieces(compressed, block, PIECE):
            lo = pos - offset
            view[lo : lo + len(piece)] = piece
            # bytes.startswith is a memcmp: the check costs nothing next to the decoding
            zero = zero and _ZERO_PIECE.startswith(piece)
        self._pins.overlay(offset, view, size)  # the inspected head, never a re-read
        if zero:  # the next block with the same compressed bytes is not decoded at all
            self._memo.remember(compressed, size)
        return size


PIECE = 1 << 20
_ZERO_PIECE = bytes(PIECE)
