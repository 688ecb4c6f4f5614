"""One progress object per import, fed by bytes read and by qemu-img's own progress.

Worker threads update plain counters; renderers (tqdm on a terminal, JSON logs, the Prometheus
endpoint of the pod front-end) read them. The import is planned as weighted phases (for example
staging 50 % then conversion 50 %), so the percentage only ever rises, as CDI's controller
expects of its counter.
"""

from __future__ import annotations

import threading
import time

__all__ = ["Progress"]


class Progress:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.phase = "Info"
        self.total: int | None = None  # bytes expected from the source, when known
        self.n = 0  # bytes read from the source (tqdm's name for it)
        self.bytes_written = 0
        self.zero_bytes = 0  # zero bytes skipped or written as holes / zero ranges
        self._plan: dict[str, tuple[float, float]] = {}  # phase -> (base %, weight %)
        self._phase_fraction: float | None = None  # set by qemu-img progress
        self._byte_phase = True
        self._bytes_phases: set[str] = set()
        self._max = 0.0
        self.done = False
        #: what a fraction-driven phase works through (qemu-img's conversion of a disk of this
        #: size): its fraction is counted as these bytes too
        self.fraction_bytes: int | None = None

    # -- producers -------------------------------------------------------------

    def plan(self, phases: list[tuple[str, float, bool]]) -> None:
        """phases: (name, weight in percent, counted by source bytes?)."""
        base = 0.0
        with self._lock:
            self._plan = {}
            self._bytes_phases = {name for name, _w, by_bytes in phases if by_bytes}
            for name, weight, _ in phases:
                self._plan[name] = (base, weight)
                base += weight

    def enter(self, phase: str) -> None:
        with self._lock:
            self.phase = phase
            self._phase_fraction = None
            # n is not reset: the read-ahead thread may have read the whole source already
            self._byte_phase = phase in self._bytes_phases

    def update(self, n: int) -> None:
        """tqdm-compatible: n more bytes read from the source."""
        # the extent copier's workers call this concurrently, and `+=` on an attribute is a
        # read, an add and a store: only the GIL's switching points keep it whole today, which
        # free-threaded Python does not promise. One call per buffer (MiBs): the lock is free.
        with self._lock:
            self.n += n

    def wrote(self, data: int, zeros: int) -> None:
        with self._lock:
            self.bytes_written += data
            self.zero_bytes += zeros

    def set_fraction(self, fraction: float) -> None:
        with self._lock:
            self._phase_fraction = max(self._phase_fraction or 0.0, min(fraction, 1.0))
            if self.fraction_bytes:
                self.n = max(self.n, int(self._phase_fraction * self.fraction_bytes))

    def finish(self) -> None:
        with self._lock:
            self.done = True
            self._max = 100.0

    # -- readers -----------------------------------------------------------------

    @property
    def percent(self) -> float:
        with self._lock:
            if self.done:
                return 100.0
            base, weight = self._plan.get(self.phase, (self._max, 0.0))
            if self._phase_fraction is not None:
                frac = self._phase_fraction
            elif self._byte_phase and self.total:
                frac = min(self.n / self.total, 1.0)
            else:
                frac = 0.0
            # never report 100 before the import has really finished (fsync included)
            self._max = max(self._max, min(base + weight * frac, 99.99))
            return self._max

    @property
    def measured(self) -> bool:
        """Whether the percentage means something: the size is known, or the phase reports
        its own fraction (qemu-img). A stream of unknown size has none."""
        with self._lock:
            return (self.done or bool(self.total) or self._phase_fraction is not None
                    or not self._byte_phase)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started
