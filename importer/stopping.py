"""SIGINT and SIGTERM for both front-ends.

Until the outcome is answered, a signal sets `cancel` (workers and children stop) and raises
CancelledError in the main thread, so partial targets are removed and the exit is 128+N. Once
the import has finished and its outcome is decided, a signal only sets `cancel`: a finished
import is never reported as stopped (the pod would otherwise exit non-zero after writing
"Import Complete", and the controller would redo it). Without a handler, Python as PID 1
would ignore SIGTERM (design notes 4)."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from .errors import CancelledError

__all__ = ["StopSignals"]


class StopSignals:
    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.answered = threading.Event()
        self._old: dict[int, Any] = {
            s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.cancel.set()
        if not self.answered.is_set():
            raise CancelledError(signum)

    def settle(self) -> None:
        """The outcome is decided and the process is about to exit: a signal from now on is
        ignored. Python's finalization puts a Python handler back to SIG_DFL (but leaves an
        ignored signal ignored), so a SIGTERM from the kubelet in the last milliseconds would
        otherwise kill a pod that wrote "Import Complete" (exit 143 after success)."""
        self.answered.set()
        for s in self._old:
            signal.signal(s, signal.SIG_IGN)

    def restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
