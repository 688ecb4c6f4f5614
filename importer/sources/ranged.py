"""One ranged read, with the importer's one retry and resume policy, for every source that
reads ranges (HTTP, S3, the registry): a range is requested, read into the caller's buffer as
it arrives, and when the transfer fails (an outage: SourceUnavailableError) the rest of the
range is requested again from the first byte missing, after the shared back-off
(sources/retry.py). The count of failures starts again once a retry brought new bytes, so a
long range over a flaky link is not given up for failures that each made progress; a range
that fails without progress exhausts the back-off's streak and fails for good.

What differs between the sources is given as functions: how a range is opened, how its body
is read into a buffer, what is done with a body after a failure, and how the failure is
judged (the HTTP source counts short bodies at the same byte).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..errors import SourceUnavailableError

__all__ = ["read_range"]

Body = TypeVar("Body")


def read_range(offset: int, view: memoryview, *, open_range: Callable[[int, int], Body],
               read_into: Callable[[Body, memoryview], int],
               backoff: Callable[[int, SourceUnavailableError, int], None],
               short: Callable[[int], SourceUnavailableError],
               discard: Callable[[Body], None] = lambda body: None,
               release: Callable[[Body], None] = lambda body: None) -> int:
    """Fill `view` with the bytes from `offset` on; returns len(view).

    open_range(first, last) -> body of the inclusive range; read_into(body, view) -> bytes
    read (0: the body ended); short(position) -> the error for a body that ended early;
    backoff(attempt, error, position) sleeps before attempt `attempt` or raises when retries
    are spent; discard(body) after a failure (close the connection), release(body) after
    success (give the connection back)."""
    size = len(view)
    got = 0
    attempt = 0
    while got < size:
        before = got
        body: Body | None = None
        try:
            body = open_range(offset + got, offset + size - 1)
            while got < size:
                n = read_into(body, view[got:])
                if not n:
                    raise short(offset + got)
                got += n
        except SourceUnavailableError as exc:
            if body is not None:
                discard(body)
            attempt = 1 if got > before else attempt + 1  # progress starts the count again
            backoff(attempt, exc, offset + got)
            continue
        release(body)
    return got
