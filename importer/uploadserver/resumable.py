"""Resumable uploads: the tus 1.0 core protocol with its creation extension (tus.io), our
addition to CDI's upload server (a dropped connection at 99 % of a CDI upload starts it again).

    POST  /v1beta1/upload-resumable[-archive]   Upload-Length: N        -> 201, Location
    HEAD  <location>                                                    -> Upload-Offset
    PATCH <location>  Upload-Offset: k, application/offset+octet-stream -> 204, Upload-Offset

The import runs from the creation on, in its own thread, reading a body that PATCH requests feed
in order: the pipeline (decoders, the native qcow2 reader, the sparse writer) keeps its state
between requests, so a client that lost its connection asks HEAD for the offset and goes on
from there. Bytes count once they are handed to the pipeline; what a dropped request had
received by then stays received. Memory: a handoff of at most 16 MiB between the two sides.
"""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Callable

from ..errors import CancelledError, SourceContentError

__all__ = ["PREFIX", "ResumableBody"]

PREFIX = "/v1beta1/upload-resumable"
CHUNK = 1 << 20
_END = b""


class ResumableBody(io.RawIOBase):
    """The pipeline's side reads; the PATCH requests' side appends."""

    def __init__(self, length: int, cancel: threading.Event) -> None:
        self.length = length
        self.offset = 0  # bytes handed to the pipeline
        self._q: queue.Queue[bytes] = queue.Queue(maxsize=16)
        self._cur = memoryview(b"")
        self._eof = False  # readers may ask again after the end (the checksum reader does)
        self._cancel = cancel
        self.abandoned = threading.Event()  # DELETE, or the deadline: the import stops
        self.failed: BaseException | None = None  # the pipeline's error, for the writers
        self.patch_lock = threading.Lock()  # one PATCH at a time

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._cur:
            if self._eof:
                return 0
            try:
                chunk = self._q.get(timeout=0.5)
            except queue.Empty:
                if self._cancel.is_set():
                    raise CancelledError(15) from None
                if self.abandoned.is_set():
                    raise SourceContentError("the resumable upload was given up (terminated "
                                             "by its client, or its deadline passed)") from None
                continue
            if chunk is _END:
                self._eof = True
                return 0
            self._cur = memoryview(chunk)
        n = min(len(b), len(self._cur))
        memoryview(b)[:n] = self._cur[:n]
        self._cur = self._cur[n:]
        return n

    def append(self, read: Callable[[int], bytes]) -> None:
        """Hand what one PATCH brings to the pipeline, in order, until its body ends (or
        breaks: the offset then says how far it got)."""
        while self.offset < self.length:
            data = read(min(CHUNK, self.length - self.offset))
            if not data:
                return
            while True:
                if self.failed is not None:
                    raise SourceContentError(f"the import failed: {self.failed}")
                try:
                    self._q.put(data, timeout=0.5)
                    break
                except queue.Full:
                    continue
            self.offset += len(data)
        if self.offset == self.length:
            self._q.put(_END)
