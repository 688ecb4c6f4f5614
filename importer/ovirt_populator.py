"""ovirt-populator: what CDI's Forklift populator controller runs (from the importer image by
default, OVIRT_POPULATOR_IMAGE) to fill a volume with an oVirt disk for an OvirtVolumePopulator.

CDI's program writes the engine password and CA to files and runs `ovirt-img download-disk`,
reading its JSON progress lines. Ours is the importer's own imageio source on the engine
(sources/imageio.py): the transfer is created, its extents read so zero runs become holes,
data fetched on several connections from the daemon, the transfer finalized, or cancelled on
any failure or signal; the password stays in memory and the CA in a private temporary file.
Progress is `kubevirt_cdi_ovirt_progress_total{ownerUID}` on https://:8443/metrics, relative to
the disk's size (CDI's divides by the PVC's size, so a disk smaller than its PVC never showed
more than its share before the final jump to 100)."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from . import advice
from .engine import run_import
from .errors import CancelledError, ConfigError, ImporterError
from .goflags import wants_help
from .metrics import MetricsServer
from .populatorconfig import (
    OVIRT_USAGE,
    OvirtPopulatorSettings,
    ovirt_import_config,
    read_ovirt_populator_settings,
)
from .progress import Progress
from .reporting import JsonLines, ProgressReporter
from .stopping import StopSignals
from .termination import write_if_mounted

__all__ = ["METRIC", "main"]

log = logging.getLogger("importer.ovirt_populator")
METRIC = "kubevirt_cdi_ovirt_progress"  # exposed as kubevirt_cdi_ovirt_progress_total
LOG_EVERY = 5.0


def main(argv: Sequence[str] | None = None) -> int:
    advice.use("pod")  # messages name the pod's settings, never CLI flags
    args = list(sys.argv[1:] if argv is None else argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    if wants_help(args):
        print(f"{OVIRT_USAGE}\n\n{__doc__.split(chr(10) + chr(10))[0]}")
        return 0
    try:
        settings = read_ovirt_populator_settings(args, os.environ)
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    progress = Progress()
    metrics = MetricsServer(progress, settings.owner_uid, settings.metrics_port, metric=METRIC)
    stop = StopSignals()
    reporter = ProgressReporter(progress, "lines", interval=LOG_EVERY, json_lines=True)
    try:
        code, message = _populate(settings, progress, stop)
    finally:
        stop.settle()
        reporter.close()
        metrics.close()
    write_if_mounted(settings.termination_log, message)
    return code


def _populate(settings: OvirtPopulatorSettings, progress: Progress, stop: StopSignals
              ) -> tuple[int, str]:
    try:
        with tempfile.TemporaryDirectory(prefix="ovirt-populator-") as tmp:
            ca_file = None
            if settings.cacert and not settings.insecure:
                ca_file = Path(tmp) / "ca.pem"
                fd = os.open(ca_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(settings.cacert)
            config = ovirt_import_config(settings, ca_file)
            log.info("populating %s with oVirt disk %s from %s", settings.volume_path,
                     settings.disk_id, settings.engine_url)
            result = run_import(config, progress, stop.cancel)
    except (CancelledError, ImporterError) as exc:
        log.error("%s", exc)
        return exc.exit_code, f"Unable to populate the volume: {exc}"
    log.info("population complete", extra={"fields": result.as_dict()})
    return 0, "Population complete"


if __name__ == "__main__":
    raise SystemExit(main())
