"""The one retry policy of every source: exponential back-off with jitter, capped at 30 s,
bounded in count (--retries) and in time (--retry-time: a streak of failures longer than that
gives up, as CDI's importer gives up at once and lets the pod restart), cut short when the
source is closed (the import failed or was cancelled). A host that does not resolve or refuses
connections is retried only briefly (`unreachable_retries`), for every source alike.

Libraries' own retries are switched off (boto's max_attempts=1, google's retry=None, requests'
max_retries=0, oras's do_request replaced) so that every attempt is counted here, once: stacked,
they made up to ~8 x 8 attempts of one request."""

from __future__ import annotations

import errno
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import ImporterError, SourceUnavailableError, SourceUnreachableError
from .options import HttpOptions

__all__ = ["backoff", "connection_error", "retry_unreachable", "retrying", "unreachable_cause"]

T = TypeVar("T")

log = logging.getLogger(__name__)
#: when the current streak of failures began, per thread (callers count attempts from 1 again
#: after a success, and each thread retries its own request)
_streak = threading.local()


def backoff(opts: HttpOptions, closed: threading.Event, attempt: int, exc: Exception) -> None:
    """Wait before retry number `attempt` after `exc`; re-raise `exc` when the retries are used
    up (in count or in time) or the source is closed, before or during the wait."""
    now = time.monotonic()
    if attempt <= 1 or getattr(_streak, "start", None) is None:
        _streak.start = now
    elapsed = now - _streak.start
    if closed.is_set():
        raise exc
    delay = min(opts.retry_backoff * 2 ** (attempt - 1), 30.0) * random.uniform(0.8, 1.2)
    if attempt > opts.max_retries or elapsed + delay > opts.retry_time:
        _streak.start = None
        raise _gave_up(exc, attempt, elapsed, opts)
    log.warning("%s; retry %d/%d in %.1f s", exc, attempt, opts.max_retries, delay)
    if closed.wait(delay):
        raise exc


def _gave_up(exc: Exception, attempt: int, elapsed: float, opts: HttpOptions) -> Exception:
    """`exc`, its message saying how often and how long it was tried."""
    if attempt <= 1 or not isinstance(exc, ImporterError):
        return exc
    exc.args = (f"{exc}; gave up after {attempt} attempts in {elapsed:.0f} s (--retries "
                f"{opts.max_retries}, --retry-time {opts.retry_time:g} s)",)
    return exc


def retrying(opts: HttpOptions, closed: threading.Event, call: Callable[[], T]) -> T:
    """call() again after each SourceUnavailableError (an outage), by the policy above; a
    SourceUnreachableError (nothing listens, no such host) only `unreachable_retries` times,
    quickly, as the HTTP source does."""
    attempt = 0
    while True:
        try:
            return call()
        except SourceUnreachableError as exc:
            attempt += 1
            retry_unreachable(opts, closed, attempt, exc)
        except SourceUnavailableError as exc:
            attempt += 1
            backoff(opts, closed, attempt, exc)


def retry_unreachable(opts: HttpOptions, closed: threading.Event, attempt: int,
                      exc: Exception) -> None:
    """Wait before quick retry number `attempt` after `exc` (nothing listens, no such host: a
    server restarting comes back in seconds, a wrong URL never does); re-raise `exc` when the
    `unreachable_retries` are used up or the source is closed."""
    if closed.is_set() or attempt > opts.unreachable_retries:
        raise exc
    log.warning("%s; retry %d/%d", exc, attempt, opts.unreachable_retries)
    if closed.wait(0.5 * attempt):
        raise exc


def connection_error(where: str, exc: BaseException) -> SourceUnavailableError | \
        SourceUnreachableError:
    """A library's failure to connect: unreachable when nobody is there (retried briefly),
    else an outage (retried by the policy)."""
    why = unreachable_cause(exc)
    if why:
        return SourceUnreachableError(f"{where}: {why}; check the endpoint")
    return SourceUnavailableError(f"{where}: {exc}")


def unreachable_cause(exc: BaseException) -> str | None:
    """Why a library's connection error means nobody is there (a refused connection, a name
    that does not resolve), found anywhere in its chain of causes; None for other failures.
    boto and requests wrap urllib3's errors, which wrap the socket's."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        e = pending.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError) or (
                isinstance(e, OSError) and e.errno == errno.ECONNREFUSED):
            return "connection refused: nothing listens on that host and port"
        if isinstance(e, socket.gaierror) or type(e).__name__ == "NameResolutionError":
            return "the host name does not resolve"
        pending += [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
    return None
