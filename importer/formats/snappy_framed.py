"""The Snappy framing format (github.com/google/snappy, framing_format.txt), streaming: what
CDI's cloner sends and its upload server reads for host-assisted clones.

By hand around the library's block codec (cramjam's raw Snappy) because the libraries offer
the framed format only for whole buffers, and a clone is a whole disk: chunks are decoded as
they arrive and written out, each checked against its masked CRC-32C (google-crc32c), and at
most one chunk (64 KiB of data) is held.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Iterator

import cramjam
import google_crc32c

from ..errors import FormatError
from ..streams import read_full

__all__ = ["SnappyFramedReader", "frames"]

STREAM_ID = b"\xff\x06\x00\x00sNaPpY"
COMPRESSED, UNCOMPRESSED, PADDING, IDENTIFIER = 0x00, 0x01, 0xFE, 0xFF
MAX_DATA = 65536
#: a compressed chunk's payload is never larger than this (Snappy's worst case + the CRC)
MAX_PAYLOAD = 4 + 32 + MAX_DATA + MAX_DATA // 6


def masked_crc(data: bytes | memoryview) -> int:
    crc = int(google_crc32c.value(bytes(data)))
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frames(blocks: Iterable[bytes | memoryview]) -> Iterator[bytes]:
    """The framed stream of the bytes in `blocks`: the identifier, then a chunk per 64 KiB."""
    yield STREAM_ID
    for block in blocks:
        view = memoryview(block)
        for pos in range(0, len(view), MAX_DATA):
            data = view[pos: pos + MAX_DATA]
            packed = bytes(cramjam.snappy.compress_raw(bytes(data)))
            crc = struct.pack("<I", masked_crc(data))
            if len(packed) < len(data):
                kind, payload = COMPRESSED, crc + packed
            else:
                kind, payload = UNCOMPRESSED, crc + bytes(data)
            yield struct.pack("<I", len(payload) << 8 | kind) + payload


class SnappyFramedReader(io.RawIOBase):
    def __init__(self, inner: io.RawIOBase) -> None:
        self._inner = inner
        self._buf = b""
        self._pos = 0
        self._started = False
        self._eof = False
        self.compressed_bytes = 0

    def readable(self) -> bool:
        return True

    def _read(self, n: int) -> bytes:
        buf = bytearray(n)
        got = read_full(self._inner, memoryview(buf))
        self.compressed_bytes += got
        return bytes(buf[:got])

    def _next(self) -> bool:
        """Decode the next data chunk into the buffer; False at the end of the stream."""
        while True:
            header = self._read(4)
            if not header:
                if not self._started:
                    raise FormatError("the clone stream is empty: not even Snappy's stream "
                                      "identifier arrived")
                return False
            if len(header) < 4:
                raise FormatError("the Snappy stream ends inside a chunk header")
            kind, length = header[0], int.from_bytes(header[1:4], "little")
            if length > MAX_PAYLOAD:
                raise FormatError(f"a Snappy chunk of {length} bytes is larger than the format "
                                  "allows")
            payload = self._read(length)
            if len(payload) < length:
                raise FormatError("the Snappy stream ends inside a chunk: the clone was cut "
                                  "short")
            if kind == IDENTIFIER:
                if payload != b"sNaPpY":
                    raise FormatError("not a Snappy framed stream (bad stream identifier)")
                self._started = True
                continue
            if not self._started:
                raise FormatError("not a Snappy framed stream (no stream identifier first)")
            if kind in (COMPRESSED, UNCOMPRESSED):
                self._buf, self._pos = _chunk_data(kind, payload), 0
                if self._buf:
                    return True
                continue
            if kind == PADDING or 0x80 <= kind <= 0xFD:
                continue  # padding and reserved skippable chunks
            raise FormatError(f"a reserved unskippable Snappy chunk (type 0x{kind:02x})")

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._pos >= len(self._buf) and (self._eof or not self._next()):
            self._eof = True
            return 0
        n = min(len(b), len(self._buf) - self._pos)
        memoryview(b)[:n] = self._buf[self._pos: self._pos + n]
        self._pos += n
        return n


def _chunk_data(kind: int, payload: bytes) -> bytes:
    """A data chunk's bytes: decompressed (a compressed chunk), at most 64 KiB, its masked
    CRC-32C checked."""
    if len(payload) < 4:
        raise FormatError("a Snappy chunk too short for its checksum")
    want = int.from_bytes(payload[:4], "little")
    if kind == COMPRESSED:
        try:
            data = bytes(cramjam.snappy.decompress_raw(payload[4:]))
        except Exception as exc:  # cramjam raises its own DecompressionError
            raise FormatError(f"a Snappy chunk does not decompress: {exc}") from exc
    else:
        data = payload[4:]
    if len(data) > MAX_DATA:
        raise FormatError("a Snappy chunk holds more than 64 KiB")
    if masked_crc(data) != want:
        raise FormatError("a Snappy chunk fails its CRC-32C: the clone stream is corrupt")
    return data
