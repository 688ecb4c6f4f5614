"""The one resumable sequential stream of the object-store and registry sources: a body opened
at a byte offset, read until the announced size, and reopened at the first missing byte after a
transient failure (SourceUnavailableError), waiting by the shared back-off between attempts."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Any

from ..errors import SourceUnavailableError

__all__ = ["ResumableStream"]


class ResumableStream(io.RawIOBase):
    def __init__(self, *, offset: int, size: int, where: str, open_at: Callable[[int], Any],
                 read: Callable[[Any, memoryview], int],
                 backoff: Callable[[int, Exception], None]) -> None:
        """open_at(pos) returns a body delivering bytes from pos; read(body, buf) fills buf
        from it and returns the count (0 at its end), with transport errors translated to
        SourceUnavailableError; backoff(attempt, exc) waits or re-raises."""
        self._pos = offset
        self._size = size
        self._where = where
        self._open_at = open_at
        self._read = read
        self._backoff = backoff
        self._body: Any = None
        self._attempt = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._pos >= self._size or len(b) == 0:
            return 0
        while True:
            try:
                if self._body is None:
                    self._body = self._open_at(self._pos)
                n = self._read(self._body, memoryview(b))
                if not n:
                    raise SourceUnavailableError(
                        f"{self._where}: the body ended at byte {self._pos} of {self._size}")
                self._pos += n
                self._attempt = 0
                return n
            except SourceUnavailableError as exc:
                self._drop()
                self._attempt += 1
                self._backoff(self._attempt, exc)

    def _drop(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
        self._body = None

    def close(self) -> None:
        self._drop()
        super().close()
