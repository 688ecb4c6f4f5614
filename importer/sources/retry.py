"""The one retry policy of every source: exponential back-off with jitter, capped at 30 s and
bounded in count, cut short when the source is closed (the import failed or was cancelled)."""

from __future__ import annotations

import logging
import random
import threading

from ..config import HttpOptions

__all__ = ["backoff"]

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
