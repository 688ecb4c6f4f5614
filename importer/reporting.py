"""How the front-ends show an import as it runs: JSON log lines (the pod always, the CLI with
`--log-format json`), a progress line every few seconds where no terminal is watching (CI logs,
`kubectl logs`), or a tqdm bar on a terminal."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import TextIO

from .progress import Progress

__all__ = ["JsonLines", "ProgressReporter", "progress_fields"]

log = logging.getLogger("importer.progress")


class JsonLines(logging.Formatter):
    """One JSON object a line; secrets never reach log records in the first place."""

    def format(self, record: logging.LogRecord) -> str:
        obj = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        obj.update(getattr(record, "fields", {}))
        if record.exc_info and record.levelno >= logging.ERROR:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False)


def progress_fields(progress: Progress, rate: float) -> dict[str, object]:
    left = None
    if progress.total and rate > 0 and not progress.done:
        left = max(0, round((progress.total - progress.n) / rate))
    return {"phase": progress.phase, "percent": round(progress.percent, 2),
            "bytes_read": progress.n, "bytes_written": progress.bytes_written,
            "zero_bytes": progress.zero_bytes, "rate_bytes_per_second": int(rate),
            "eta_seconds": left}


#: the phase before the source has answered (later, a plan may count its bytes in large steps)
WAITING_PHASES = ("Info",)
#: what a person reads for CDI's phase names (the pod's metrics and JSON lines keep CDI's)
PHASE_WORDS = {"Info": "waiting for the server", "TransferDataFile": "copying",
               "TransferScratch": "staging to scratch", "TransferDataDir": "extracting",
               "Convert": "converting", "Clone": "cloning"}


def _words(phase: str) -> str:
    return PHASE_WORDS.get(phase, phase.lower())


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


class ProgressReporter:
    """`mode`: bar (tqdm, on a terminal), lines (a line every `interval` seconds: as a JSON
    log record when `json_lines`, else text), or none."""

    def __init__(self, progress: Progress, mode: str, *, interval: float = 5.0,
                 json_lines: bool = False, stream: TextIO | None = None) -> None:
        self._progress = progress
        self._mode = mode
        self._interval = interval
        self._json = json_lines
        self._stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if mode in ("bar", "lines"):
            target = self._bar if mode == "bar" else self._lines
            self._thread = threading.Thread(target=target, name=f"progress-{mode}", daemon=True)
            self._thread.start()

    def _lines(self) -> None:
        last_t, last_n, followed = time.monotonic(), 0, self._progress
        started = last_t
        while not self._stop.wait(self._interval):
            progress = self._progress
            if progress is not followed:  # a new stage counts from zero (follow())
                last_n, followed = 0, progress
            now, n = time.monotonic(), progress.n
            rate = (n - last_n) / (now - last_t) if now > last_t else 0.0
            last_t, last_n = now, n
            fields = progress_fields(progress, rate)
            if self._json:
                log.info("progress", extra={"fields": fields})
                continue
            eta = fields["eta_seconds"]
            if n == 0 and progress.phase in WAITING_PHASES:  # nothing has come yet
                self._stream.write(f"progress: waiting for the server ({now - started:.0f} s)\n")
                self._stream.flush()
                continue
            # a stream of unknown size has no percentage to show
            share = f"{fields['percent']:.1f}% " if progress.measured else ""
            self._stream.write(
                f"progress: {share}{_words(progress.phase)}, {_mib(n)}, "
                f"{_mib(rate)}/s{f', ETA {eta} s' if eta is not None else ''}\n")
            self._stream.flush()

    def _bar(self) -> None:
        from tqdm import tqdm

        with tqdm(total=100, unit="%", file=self._stream, leave=False,
                  bar_format="{l_bar}{bar}| {n:.1f}% [{elapsed}<{remaining}] {postfix}") as bar:
            last_t, last_n, rate = time.monotonic(), 0, 0.0
            while not self._stop.wait(0.25):
                progress = self._progress
                now, n = time.monotonic(), progress.n
                if n < last_n:  # a new stage (follow()) counts from zero
                    last_n = 0
                if now - last_t >= 1.0:  # the rate over the last second, not since the start
                    rate, last_t, last_n = (n - last_n) / (now - last_t), now, n
                bar.n = progress.percent if progress.measured else 0
                bar.set_description(_words(progress.phase), refresh=False)
                bar.set_postfix_str(f"{_mib(n)}, {_mib(rate)}/s", refresh=False)
                bar.refresh()

    def follow(self, progress: Progress) -> None:
        """Show another stage's progress from now on (the -O conversion after the import)."""
        self._progress = progress

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
