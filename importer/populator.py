"""What CDI's Forklift populator programs share (ovirt-populator, openstack-populator): JSON log
lines on stderr, `-help`, the progress counter `{metric}_total{ownerUID}` on https://:8443/metrics
that the controller scrapes, the import itself on the engine, signals, and the termination
message. Each program only reads its settings and says how they become an import."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Sequence

from . import advice
from .engine import run_import
from .errors import CancelledError, ConfigError, ImporterError
from .goflags import wants_help
from .metrics import MetricsServer
from .populatorconfig import PopulatorJob
from .progress import Progress
from .reporting import JsonLines, ProgressReporter
from .stopping import StopSignals
from .termination import write_if_mounted

__all__ = ["PopulatorJob", "run_populator"]

log = logging.getLogger("importer.populator")
LOG_EVERY = 5.0


def run_populator(argv: Sequence[str] | None, *, usage: str, summary: str, metric: str,
                  read_job: Callable[[list[str]], PopulatorJob]) -> int:
    advice.use("pod")  # messages name the pod's settings, never CLI flags
    args = list(sys.argv[1:] if argv is None else argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    if wants_help(args):
        with contextlib.suppress(BrokenPipeError):  # `-help | head`
            print(f"{usage}\n\n{summary}", flush=True)
        return 0
    try:
        job = read_job(args)
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    progress = Progress()
    metrics = MetricsServer(progress, job.owner_uid, job.metrics_port, metric=metric)
    stop = StopSignals()
    reporter = ProgressReporter(progress, "lines", interval=LOG_EVERY, json_lines=True)
    try:
        code, message = _populate(job, progress, stop)
    finally:
        stop.settle()
        reporter.close()
        metrics.close()
    write_if_mounted(job.termination_log, message)
    return code


def _populate(job: PopulatorJob, progress: Progress, stop: StopSignals) -> tuple[int, str]:
    try:
        config = job.config()
        log.info("%s", job.description)
        result = run_import(config, progress, stop.cancel)
    except (CancelledError, ImporterError) as exc:
        log.error("%s", exc)
        return exc.exit_code, f"Unable to populate the volume: {exc}"
    log.info("population complete", extra={"fields": result.as_dict()})
    return 0, "Population complete"
