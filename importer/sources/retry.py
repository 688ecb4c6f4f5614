"""The one retry policy of every source: exponential back-off with jitter, capped at 30 s and
bounded in count, cut short when the source is closed (the import failed or was cancelled).

Libraries' own retries are switched off (boto's max_attempts=1, google's retry=None, requests'
max_retries=0, oras's do_request replaced) so that every attempt is counted here, once: stacked,
they made up to ~8 x 8 attempts of one request."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import TypeVar

from ..config import HttpOptions
from ..errors import SourceUnavailableError

__all__ = ["backoff", "retrying"]

T = TypeVar("T")

log = logging.getLogger(__name__)


def backoff(opts: HttpOptions, closed: threading.Event, attempt: int, exc: Exception) -> None:
    """Wait before retry number `attempt` after `exc`; re-raise `exc` when the retries are used
    up or the source is closed, before or during the wait."""
    if closed.is_set() or attempt > opts.max_retries:
        raise exc
    delay = min(opts.retry_backoff * 2 ** (attempt - 1), 30.0) * random.uniform(0.8, 1.2)
    log.warning("%s; retry %d/%d in %.1f s", exc, attempt, opts.max_retries, delay)
    if closed.wait(delay):
        raise exc


def retrying(opts: HttpOptions, closed: threading.Event, call: Callable[[], T]) -> T:
    """call() again after each SourceUnavailableError (an outage), by the policy above."""
    attempt = 0
    while True:
        try:
            return call()
        except SourceUnavailableError as exc:
            attempt += 1
            backoff(opts, closed, attempt, exc)
