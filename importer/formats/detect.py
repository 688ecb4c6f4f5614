"""Peel compression layers and name the image format, by magic bytes only."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

from ..errors import FormatError
from .codecs import open_decoder, sniff_codec
from .headers import ImageInfo, ReadAt, inspect_image, sniff_format, vhd_fixed_footer_size
from .peek import PeekableStream
from .pinned import PinnedBytes

__all__ = ["Detected", "detect"]

log = logging.getLogger(__name__)
SNIFF_BYTES = 64 << 10  # covers ISO's CD001 at 0x9001 and tar's ustar at 257
MAX_LAYERS = 4


@dataclass(slots=True)
class Detected:
    info: ImageInfo
    stream: PeekableStream  # the decoded bytes, from the start
    codecs: list[str] = field(default_factory=list)  # outermost first
    #: every byte of the (decoded) image the inspection looked at; later random readers must
    #: serve these regions from here (formats/pinned.py)
    pins: PinnedBytes = field(default_factory=PinnedBytes)

    @property
    def compressed(self) -> bool:
        return bool(self.codecs)


def detect(raw: io.RawIOBase, *, size: int | None, source_read_at: ReadAt | None,
           backing_allowed: bool = False, guest_data: bool = False,
           forced: str | None = None) -> Detected:
    """`raw` is the source stream from byte 0; `source_read_at` (random access into the same
    bytes) lets inspection read beyond the head when the data is not compressed;
    `backing_allowed`: a delta stage's qcow2 names its backing file (formats/headers.py);
    `guest_data`: the bytes are a guest's disk, raw by definition, and are not sniffed;
    `forced` (--format, as qemu-img's -f): the format the data must have (after its
    compression): raw is taken as it is, any other must match what the magic says, and is
    inspected for safety all the same."""
    if guest_data:
        log.info("the source serves the guest's disk itself: raw, %s bytes", size or "unknown")
        return Detected(ImageInfo("raw", size), PeekableStream(raw))
    codecs: list[str] = []
    stream = PeekableStream(raw)
    while True:
        head = stream.peek_bytes(SNIFF_BYTES)
        if not head:
            where = " after " + " and ".join(codecs) + " decompression" if codecs else ""
            raise FormatError(f"the source is empty (0 bytes{where}); nothing to import")
        codec = sniff_codec(head)
        if codec is None:
            break
        if len(codecs) == MAX_LAYERS:
            raise FormatError(f"more than {MAX_LAYERS} nested compression layers; refusing")
        codecs.append(codec.name)
        stream = PeekableStream(open_decoder(codec, stream, len(codecs)))
    pins = PinnedBytes()
    pins.pin(0, head)  # what the format was sniffed from
    fmt = sniff_format(head)
    if forced is not None and forced != "raw" and fmt != forced:
        raise FormatError(f"--format {forced}, but the data is {fmt} by its magic bytes; "
                          "drop --format or give the right one")
    if forced == "raw":
        fmt = "raw"
    plain = not codecs
    read_at = pins.reader(source_read_at if (plain and source_read_at) else stream.read_at)
    info = inspect_image(fmt, read_at, size if plain else None, backing_allowed=backing_allowed)
    if info.format == "raw" and plain and source_read_at and size and size >= 1024 and \
            forced != "raw":
        vhd_size = vhd_fixed_footer_size(read_at(size - 512, 512))
        if vhd_size is not None and vhd_size == size - 512:
            info = ImageInfo("vhd", vhd_size, {"type": "fixed"})
    log.info("detected %s%s, virtual size %s", info.format,
             "" if plain else " inside " + "+".join(codecs), info.virtual_size or "unknown")
    return Detected(info, stream, codecs, pins)
