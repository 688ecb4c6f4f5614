"""Compression layers recognised by magic bytes and undone while streaming.

gzip goes through ISA-L (python-isal): about ten times the speed of zlib here, and GzipFile
reads every member of a multi-member file. xz through liblzma (all streams and blocks; the
multi-block parallel path lives in xz_parallel). zstd through zstandard with
read_across_frames, so multi-frame files decode whole.
"""

from __future__ import annotations

import bz2
import io
import lzma
from collections.abc import Callable
from typing import IO, cast

import zstandard
from isal import igzip, igzip_lib, isal_zlib

from ..errors import FormatError, ImporterError

__all__ = ["CODECS", "Codec", "open_decoder", "sniff_codec"]

READ_SIZE = 1 << 20


class Codec:
    def __init__(self, name: str, magic: bytes, opener: Callable[[io.RawIOBase], io.IOBase]):
        self.name = name
        self.magic = magic
        self.opener = opener


#: python-isal's C gzip reader (what IGzipFile wraps in a BufferedReader and a Python read
#: loop): readinto() inflates straight into the caller's buffer. 0.37 CPU s instead of 0.45 for
#: the 1 GiB bench disk (pod benchmark, issue 20): one copy and one 4 MiB allocation per read
#: fewer. Private in python-isal 1.x, so IGzipFile stays the fallback.
_C_GZIP_READER = getattr(isal_zlib, "_GzipReader", None)


def _gzip(raw: io.RawIOBase) -> io.IOBase:
    if _C_GZIP_READER is not None:
        return cast(io.IOBase, _C_GZIP_READER(raw, READ_SIZE))
    return igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[no-untyped-call]


def _xz(raw: io.RawIOBase) -> io.IOBase:
    return lzma.LZMAFile(cast(IO[bytes], raw), mode="rb")


_ISAL_ERROR = cast(type[Exception], igzip_lib.IsalError)  # untyped extension module

#: the zstd CLI's default limit (windowLog 27): a `--long=31` frame would make the decoder
#: allocate 2 GiB for a few KiB of input, far past the pod's memory limit
ZSTD_MAX_WINDOW = 1 << 27


def _zstd(raw: io.RawIOBase) -> io.IOBase:
    dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    checked = _ZstdFrameChecker(raw)
    reader = dctx.stream_reader(cast(IO[bytes], checked), read_size=READ_SIZE,
                                read_across_frames=True)
    return cast(io.IOBase, reader)


class _ZstdFrameChecker(io.RawIOBase):
    """Walks zstd frame and block headers in the compressed bytes as they pass, so that input
    ending inside a frame is an error: zstandard's stream_reader returns a short result without
    one (checked with 0.25). Block sizes are explicit in the format, so this costs one small
    parse per block (at most 128 KiB of output each)."""

    def __init__(self, raw: io.RawIOBase) -> None:
        self._raw = raw
        self._state = "magic"
        self._need = 4
        self._hdr = bytearray()
        self._skip = 0
        self._checksum = 0
        self._rest = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = int(self._raw.readinto(b) or 0)
        if n == 0:
            if self._state != "magic" or self._hdr or self._skip:
                raise FormatError("the zstd data is truncated: it ends inside a frame; the file "
                                  "on the server is incomplete")
            return 0
        self._walk(memoryview(b)[:n])
        return n

    def _walk(self, data: memoryview) -> None:
        pos = 0
        while pos < len(data):
            if self._skip:
                k = min(self._skip, len(data) - pos)
                self._skip -= k
                pos += k
                continue
            k = min(self._need - len(self._hdr), len(data) - pos)
            self._hdr += data[pos : pos + k]
            pos += k
            if len(self._hdr) == self._need:
                hdr, self._hdr = bytes(self._hdr), bytearray()
                self._advance(hdr)

    def _advance(self, hdr: bytes) -> None:
        st = self._state
        if st == "magic":
            magic = int.from_bytes(hdr, "little")
            if magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = "skippable", 4
            elif magic == 0xFD2FB528:
                self._state, self._need = "descriptor", 1
            else:
                raise FormatError(f"zstd data has garbage between frames (0x{magic:08x})")
        elif st == "skippable":
            self._skip = int.from_bytes(hdr, "little")
            self._state, self._need = "magic", 4
        elif st == "descriptor":
            fhd = hdr[0]
            single = (fhd >> 5) & 1
            fcs = (fhd >> 6) & 3
            self._checksum = 4 if fhd & 4 else 0
            rest = (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + (single, 2, 4, 8)[fcs]
            self._state, self._need = "block", 3
            self._skip = rest
        elif st == "block":
            bh = int.from_bytes(hdr, "little")
            last, btype, size = bh & 1, (bh >> 1) & 3, bh >> 3
            if btype == 3:
                raise FormatError("zstd data has a reserved block type: corrupt")
            self._skip = 1 if btype == 1 else size
            if last:
                self._skip += self._checksum
                self._state, self._need = "magic", 4


def _bzip2(raw: io.RawIOBase) -> io.IOBase:
    return bz2.BZ2File(raw, mode="rb")


CODECS = (
    Codec("gzip", b"\x1f\x8b\x08", _gzip),
    Codec("xz", b"\xfd7zXZ\x00", _xz),
    Codec("zstd", b"\x28\xb5\x2f\xfd", _zstd),
    Codec("bzip2", b"BZh", _bzip2),
)


def sniff_codec(head: bytes) -> Codec | None:
    for codec in CODECS:
        if head.startswith(codec.magic):
            if codec.name == "bzip2" and not (len(head) > 3 and head[3:4].isdigit()):
                continue
            return codec
    return None


class _DecodedStream(io.RawIOBase):
    """Decoded bytes; codec failures become FormatError naming the layer and the offset."""

    def __init__(self, codec: Codec, inner: io.RawIOBase, depth: int) -> None:
        self._codec = codec
        self._dec = codec.opener(inner)
        self._out = 0
        self._depth = depth

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            n = self._dec.readinto(b)  # type: ignore[attr-defined]
        except ImporterError:
            raise
        except zstandard.ZstdError as exc:
            if "too much memory" in str(exc):
                raise FormatError(
                    f"the zstd data asks for a decoding window over {ZSTD_MAX_WINDOW >> 20} MiB "
                    "(made with zstd --long=28 or more); refused to keep memory bounded: "
                    "recompress it with zstd's default window") from exc
            raise self._corrupt(exc) from exc
        except (OSError, EOFError, lzma.LZMAError, ValueError, _ISAL_ERROR) as exc:
            # IsalError is no OSError (zlib's error would be): found by fuzzing, a corrupt
            # deflate block escaped as an internal error
            raise self._corrupt(exc) from exc
        self._out += n or 0
        return int(n or 0)

    def _corrupt(self, exc: Exception) -> FormatError:
        return FormatError(
            f"the {self._codec.name} data is corrupt or truncated after {self._out} "
            f"decompressed bytes ({exc}); the file on the server is damaged or incomplete")

    def close(self) -> None:
        self._dec.close()
        super().close()


def open_decoder(codec: Codec, inner: io.RawIOBase, depth: int = 0) -> io.RawIOBase:
    return _DecodedStream(codec, inner, depth)
