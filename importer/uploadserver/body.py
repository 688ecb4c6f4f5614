"""A request body as the core's source: read once, in order (an upload cannot be re-read).

The body comes with a Content-Length or chunked (curl, Go's client on a pipe); the multipart
forms of the `upload-form` endpoints carry the image in the part named `file`, parsed as it
streams by python-multipart (the first `file` part is used, others are skipped, as CDI does).
"""

from __future__ import annotations

import io
import threading
from typing import IO

from ..errors import SourceContentError
from ..sources.once import StreamSource as BodySource

__all__ = ["BodySource", "FormFile", "RequestBody"]

MAX_CHUNK_LINE = 4096


class RequestBody(io.RawIOBase):
    """The HTTP request body: `length` bytes, or chunked; `done` is set when all of it was read
    (the async endpoints answer then)."""

    def __init__(self, rfile: IO[bytes], length: int | None, *, chunked: bool) -> None:
        self._rfile = rfile
        self._left = length if not chunked else 0
        self._chunked = chunked
        self._chunk_left = 0
        self._eof = False
        self.received = 0
        self.done = threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._eof:
            return 0
        view = memoryview(b)
        if self._chunked:
            if self._chunk_left == 0 and not self._next_chunk():
                return 0
            want = min(len(view), self._chunk_left)
        else:
            assert self._left is not None
            want = min(len(view), self._left)
            if want == 0:
                self._finish()
                return 0
        n: int = self._rfile.readinto(view[:want])  # type: ignore[attr-defined]
        if not n:
            raise SourceContentError(f"the upload ended after {self.received} bytes, before the "
                                     "length it announced; upload again")
        self.received += n
        if self._chunked:
            self._chunk_left -= n
            if self._chunk_left == 0:
                self._expect_crlf()
        else:
            assert self._left is not None
            self._left -= n
            if self._left == 0:
                self._finish()
        return n

    def _finish(self) -> None:
        self._eof = True
        self.done.set()

    def _line(self) -> bytes:
        line = self._rfile.readline(MAX_CHUNK_LINE)
        if not line.endswith(b"\n"):
            raise SourceContentError("the chunked upload body is malformed (no line end)")
        return line.rstrip(b"\r\n")

    def _expect_crlf(self) -> None:
        if self._line():
            raise SourceContentError("the chunked upload body is malformed (data after a chunk)")

    def _next_chunk(self) -> bool:
        size_text = self._line().split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise SourceContentError("the chunked upload body is malformed (chunk size)") from None
        if size == 0:
            while self._line():  # trailers
                pass
            self._finish()
            return False
        self._chunk_left = size
        return True

    def drain(self) -> None:
        """Read what is left, so the connection can answer (and be kept)."""
        buf = bytearray(1 << 20)
        while self.readinto(buf):
            pass


class FormFile(io.RawIOBase):
    """The content of the first part named `file` of a multipart/form-data body."""

    def __init__(self, body: RequestBody, boundary: str) -> None:
        from python_multipart.exceptions import MultipartParseError
        from python_multipart.multipart import MultipartParser

        self._parse_error: type[Exception] = MultipartParseError  # translated in readinto

        self._body = body
        self._pending = bytearray()
        self._headers: dict[str, str] = {}
        self._field = b""
        self._value = b""
        self._in_file = self._found = self._file_done = False
        self._chunk = bytearray(1 << 20)

        def on_header_field(data: bytes, start: int, end: int) -> None:
            self._field += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            self._value += data[start:end]

        def on_header_end() -> None:
            self._headers[self._field.decode("latin-1").lower()] = self._value.decode("latin-1")
            self._field = self._value = b""

        def on_headers_finished() -> None:
            disposition = self._headers.get("content-disposition", "")
            named_file = any(p.strip() in ('name="file"', "name=file")
                             for p in disposition.split(";"))
            self._in_file = named_file and not self._found
            self._found = self._found or named_file

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if self._in_file:
                self._pending += data[start:end]

        def on_part_end() -> None:
            if self._in_file:
                self._file_done = True
            self._in_file = False
            self._headers = {}

        self._parser = MultipartParser(boundary, {
            "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data, "on_part_end": on_part_end})

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending and not self._file_done:
            n = self._body.readinto(self._chunk)
            if n == 0:
                if not self._found:
                    raise SourceContentError("the form has no part named 'file'")
                raise SourceContentError("the form ended inside its 'file' part")
            try:
                self._parser.write(bytes(memoryview(self._chunk)[:n]))
            except self._parse_error as exc:
                raise SourceContentError(f"the form upload is malformed: {exc}") from exc
        n = min(len(b), len(self._pending))
        memoryview(b)[:n] = self._pending[:n]
        del self._pending[:n]
        if not n:
            self._body.drain()  # the parts after `file`, and the closing boundary
        return n
