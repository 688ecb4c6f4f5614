"""The one resumable sequential stream of every source: a body opened at a byte offset, read
until the announced size (or its end, when no size is known), and reopened at the first missing
byte after a transient failure (SourceUnavailableError), waiting by the shared back-off between
attempts. A source adds its own judgement through `on_failure` (HTTP: a server that keeps
ending its bodies early is broken, not down)."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from typing import Any

from ..errors import SourceUnavailableError

__all__ = ["ResumableStream"]

log = logging.getLogger(__name__)


class ResumableStream(io.RawIOBase):
    def __init__(self, *, offset: int, size: int | None, where: str,
                 open_at: Callable[[int], Any], read: Callable[[Any, memoryview], int],
                 backoff: Callable[[int, Exception], None],
                 on_failure: Callable[[SourceUnavailableError, int, int], None] | None = None,
                 close_body: Callable[[Any], None] | None = None,
                 short_error: type[SourceUnavailableError] = SourceUnavailableError) -> None:
        """open_at(pos) returns a body delivering bytes from pos; read(body, buf) fills buf
        from it and returns the count (0 at its end), with transport errors translated to
        SourceUnavailableError; backoff(attempt, exc) waits or re-raises; on_failure(exc, pos,
        attempt) may raise a permanent error instead; close_body(body) releases a body (default
        body.close()); short_error is raised when a body ends before `size`."""
        self._pos = offset
        self._size = size
        self._where = where
        self._open_at = open_at
        self._read = read
        self._backoff = backoff
        self._on_failure = on_failure
        self._close_body = close_body
        self._short_error = short_error
        self._body: Any = None
        self._attempt = 0

    def readable(self) -> bool:
        return True

    @property
    def position(self) -> int:
        return self._pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if (self._size is not None and self._pos >= self._size) or len(b) == 0:
            return 0
        while True:
            try:
                if self._body is None:
                    if self._attempt:  # after a failure: say where the transfer goes on
                        log.warning("%s: resuming at byte %d%s", self._where, self._pos,
                                    f" of {self._size}" if self._size is not None else "")
                    self._body = self._open_at(self._pos)
                n = self._read(self._body, memoryview(b))
                if not n:
                    if self._size is None:
                        return 0  # no length announced: the end of the body is the end
                    raise self._short_error(
                        f"{self._where}: the body ended at byte {self._pos} of {self._size}")
                self._pos += n
                self._attempt = 0
                return n
            except SourceUnavailableError as exc:
                self._drop()
                self._attempt += 1
                if self._on_failure is not None:
                    self._on_failure(exc, self._pos, self._attempt)
                self._backoff(self._attempt, exc)

    def _drop(self) -> None:
        body, self._body = self._body, None
        if body is None:
            return
        with contextlib.suppress(Exception):
            if self._close_body is not None:
                self._close_body(body)
            else:
                body.close()

    def close(self) -> None:
        self._drop()
        super().close()
