"""The life of one oVirt image transfer: created once, waited for until it is `transferring`,
kept alive while the import is busy elsewhere, and ended exactly once: finalized after a
successful import, cancelled after a failure or a signal, so the disk is never left locked.

Where CDI differs (docs/pod-contract.md 4.5, quirk Q14), on purpose:
* CDI re-POSTs a new transfer every second while the one it got is `initializing`, which can
  create several transfers; here the one transfer is polled until it is ready;
* CDI waits forever on a locked disk; here the wait is bounded and ends with a message (the pod
  exits, the controller restarts it, and the next attempt waits again);
* CDI finalizes a transfer still `transferring` even after a failed import; here a failure
  cancels it (finalizing tells the engine the download completed).
The cleanup loop itself is CDI's: up to 10 rounds 2 s apart of read phase, then act.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ...errors import ImporterError, SourceContentError, SourceError, SourceUnavailableError
from .engine_api import DiskLockedError, EngineClient, TransferInfo

__all__ = ["TransferSession", "TransferTimings"]

log = logging.getLogger(__name__)

#: phases after which nothing is left to do (the last three seen from RHV, not in the SDKs)
DONE_PHASES = {"cancelled", "finalizing_failure", "finalizing_success", "finished_failure",
               "finished_success", "cancelled_system", "cancelled_user", "finalizing_cleanup"}
#: phases in which the transfer holds the disk and must be cancelled (or finalized)
OPEN_PHASES = {"initializing", "transferring", "paused_system", "paused_user", "resuming",
               "unknown"}


@dataclass(frozen=True, slots=True)
class TransferTimings:
    #: how long a locked disk is waited for in total, and the pause between attempts (CDI: 15 s)
    locked_wait: float = 600.0
    locked_retry: float = 15.0
    #: how long a new transfer may stay `initializing`, and the polling interval: from
    #: first_poll doubling up to poll (CDI: 1 s flat; a host is often ready in a fraction)
    start_wait: float = 300.0
    first_poll: float = 0.05
    poll: float = 1.0
    #: the ticket's inactivity timeout asked of the engine (CDI: 60 s)
    inactivity_timeout: int = 60
    #: renew the ticket when the data path has been idle this long (CDI: 30 s)
    renew_after: float = 30.0
    #: CDI's cleanup loop: rounds and the pause between them
    cleanup_rounds: int = 10
    cleanup_delay: float = 2.0


class TransferSession:
    def __init__(self, engine: EngineClient, timings: TransferTimings) -> None:
        self._engine = engine
        self._t = timings
        self.info: TransferInfo | None = None
        self._end_lock = threading.Lock()
        self._ended = False
        self._activity = time.monotonic()
        self._keeper: threading.Thread | None = None
        self._stop_keeper = threading.Event()

    # ------------------------------------------------------------------ start

    def start(self, *, disk_id: str, snapshot_id: str | None, fmt: str) -> TransferInfo:
        """Create the transfer (waiting out a locked disk) and wait until it is transferring.
        On any failure, including a signal, the transfer created is cancelled."""
        subject = f"snapshot {snapshot_id}" if snapshot_id else f"disk {disk_id}"
        deadline = time.monotonic() + self._t.locked_wait
        while True:
            try:
                self.info = self._engine.create_transfer(
                    disk_id=None if snapshot_id else disk_id, snapshot_id=snapshot_id, fmt=fmt,
                    inactivity_timeout=self._t.inactivity_timeout)
                break
            except DiskLockedError as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DiskLockedError(
                        f"{exc}; the {subject} stayed locked for {self._t.locked_wait:.0f} s "
                        "(a snapshot or another transfer holds it); the import will be retried"
                    ) from exc
                log.warning("%s: the disk is locked; trying again in %.0f s (%.0f s left)",
                            subject, self._t.locked_retry, left)
                time.sleep(min(self._t.locked_retry, left))
        log.info("image transfer %s created for %s (format %s)", self.info.id, subject, fmt)
        try:
            return self._wait_transferring()
        except BaseException:
            self.end(ok=False)
            raise

    def _wait_transferring(self) -> TransferInfo:
        assert self.info is not None
        deadline = time.monotonic() + self._t.start_wait
        info = self.info
        pause = self._t.first_poll
        while info.phase == "initializing":
            if time.monotonic() > deadline:
                raise SourceUnavailableError(
                    f"image transfer {info.id} stayed initializing for {self._t.start_wait:.0f} "
                    "s; the engine may have no host to serve it. It was cancelled")
            time.sleep(pause)
            pause = min(pause * 2, self._t.poll)
            got = self._engine.transfer(info.id)
            if got is None:
                raise SourceError(f"image transfer {info.id} disappeared while initializing")
            info = self.info = got
        if info.phase != "transferring":
            raise SourceError(f"Error transfer phase: {info.phase}")
        if not info.transfer_url:
            raise SourceContentError("Error transfer url not available")
        return info

    # ------------------------------------------------------------------ keep alive

    def touch(self) -> None:
        """The data path made progress: the ticket is in use."""
        self._activity = time.monotonic()

    def keep_alive(self, small_read: Callable[[], None]) -> None:
        """Renew the ticket whenever the data path has been idle for renew_after seconds (the
        target is busy flushing, the disk is slow): `extend`, then a small read, as CDI does,
        so neither the engine's nor the daemon's inactivity timeout ends the transfer."""

        def run() -> None:
            while not self._stop_keeper.wait(min(1.0, self._t.renew_after / 4)):
                if time.monotonic() - self._activity < self._t.renew_after:
                    continue
                assert self.info is not None
                try:
                    self._engine.transfer_action(self.info.id, "extend")
                    small_read()
                    log.info("renewed the transfer ticket after %.0f s without progress",
                             time.monotonic() - self._activity)
                except ImporterError as exc:
                    log.warning("failed to renew the transfer ticket: %s", exc)
                self.touch()

        self._keeper = threading.Thread(target=run, name="ticket-keeper", daemon=True)
        self._keeper.start()

    # ------------------------------------------------------------------ end

    def end(self, ok: bool) -> None:
        """Finalize (ok) or cancel the transfer, once; later calls do nothing."""
        with self._end_lock:
            if self._ended or self.info is None:
                return
            self._ended = True
        self._stop_keeper.set()
        if self._keeper is not None:
            self._keeper.join(timeout=5)
        tid = self.info.id
        action = "finalize" if ok else "cancel"
        last: Exception | None = None
        for round_ in range(self._t.cleanup_rounds):
            if round_:
                time.sleep(self._t.cleanup_delay)
            try:
                current = self._engine.transfer(tid)
            except ImporterError as exc:
                last = exc
                log.warning("cannot read image transfer %s (%s); cancelling it blindly", tid, exc)
                self._act(tid, "cancel")
                continue
            if current is None:
                log.info("image transfer %s cleaned up", tid)
                return
            phase = current.phase
            if phase in DONE_PHASES:
                log.info("image transfer %s is %s: nothing left to do", tid, phase)
                return
            todo = action if phase == "transferring" else "cancel"
            if phase not in OPEN_PHASES:
                log.warning("image transfer %s is in an unknown phase %r; cancelling it", tid,
                            phase)
            try:
                self._engine.transfer_action(tid, todo)
            except ImporterError as exc:
                last = exc
                log.warning("%s of image transfer %s failed: %s", todo, tid, exc)
                continue
            # sent once and accepted: the engine finishes it; it is never sent twice
            log.info("image transfer %s: %s sent (it was %s)", tid, todo, phase)
            return
        log.error("retry limit exceeded for transfer ticket cleanup, disk may remain locked "
                  "until inactivity timeout (transfer %s; last error: %s)", tid, last)

    def _act(self, tid: str, action: str) -> None:
        try:
            self._engine.transfer_action(tid, action)
        except ImporterError as exc:
            log.warning("%s of image transfer %s failed: %s", action, tid, exc)
