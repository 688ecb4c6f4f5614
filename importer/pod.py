"""The CDI importer pod front-end (`importer pod`, installed as `cdi-importer`): the CDI
environment -> the same core as the CLI -> termination message, exit code and progress metric
exactly as CDI's controller reads them (docs/pod-contract.md sections 1, 2, 4.8, 5, 6).

Exit codes: 0 success, and CDI's two special exit-0 cases (scratch space required, checksum
mismatch, each with its JSON message); 1 failure; 2 configuration; 128+N stopped by signal N.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import threading
from collections.abc import Sequence

from . import __version__, advice
from .config import ImportConfig
from .engine import run_import
from .errors import (
    CancelledError,
    ChecksumMismatchError,
    ConfigError,
    ImporterError,
    ScratchSpaceRequiredError,
    SourceAuthError,
    SourceError,
    SourceNotFoundError,
    SourceTLSError,
    SourceUnavailableError,
    SourceUnreachableError,
    TargetTooSmallError,
)
from .goflags import wants_help
from .metrics import MetricsServer
from .nodepull import fetch_labels, image_url, signal_done, wait_for_ready
from .podconfig import (
    PodSettings,
    available_space,
    early_settings,
    get_usable_space,
    not_yet,
    read_pod_environment,
)
from .progress import Progress
from .quantity import is_decimal
from .reporting import JsonLines, ProgressReporter
from .stopping import StopSignals
from .termination import json_message, text_message, write_termination_message

__all__ = ["main"]

log = logging.getLogger("importer.pod")
_KLOG = re.compile(r"^--?(v|vmodule|alsologtostderr|logtostderr|stderrthreshold|log_dir|log_file|"
                   r"log_file_max_size|add_dir_header|skip_headers|skip_log_headers|one_output|"
                   r"log_backtrace_at)(=.*)?$")
LOG_EVERY = 5.0  # seconds between progress log lines


def _verbosity(argv: Sequence[str]) -> int:
    level = 1
    for i, a in enumerate(argv):
        m = re.match(r"^--?v=(\d+)$", a)
        if m:
            level = int(m.group(1))
        elif a in ("-v", "--v") and i + 1 < len(argv) and is_decimal(argv[i + 1]):
            level = int(argv[i + 1])
    return level


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = [a for a in args if not _KLOG.match(a)]
    if command[:1] in (["import"], ["inspect"]):
        # `podman run IMAGE import SOURCE DEST`: the image's entrypoint is the pod (CDI starts
        # it with -v=N only), and the CLI behind it for a user who names a command
        from .cli import main as cli_main

        return cli_main(command)
    advice.use("pod")  # messages name the pod's settings, never CLI flags
    if "--version" in args:
        print(f"cdi-importer (importer {__version__})")
        return 0
    if wants_help(args):
        print(pod_help())
        return 0
    verbosity = _verbosity(args)
    unknown = [a for i, a in enumerate(args) if not _KLOG.match(a)
               and not (is_decimal(a) and i > 0 and args[i - 1] in ("-v", "--v"))]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=logging.DEBUG if verbosity >= 3 else logging.INFO,
                        handlers=[handler], force=True)
    if unknown:
        log.error("unknown arguments %s: the pod is configured by CDI's environment", unknown)
        return 2
    # the first line of every pod's log: which image ran (docs/deploy.md, "Which image ran")
    log.info("importer %s as cdi-importer", __version__)

    stop = StopSignals()
    cancel = stop.cancel
    progress = Progress()
    early = early_settings(os.environ)
    metrics = MetricsServer(progress, early.owner_uid, early.metrics_port)
    reporter = ProgressReporter(progress, "lines", interval=LOG_EVERY, json_lines=True)
    try:
        settings, config = preflight(*read_pod_environment(os.environ, verbosity))
        code, message = _run(settings, config, progress, cancel)
        stop.answered.set()
    except ConfigError as exc:
        code = exc.exit_code
        message = text_message(exc.termination or f"Invalid configuration: {exc}")
        log.error("%s", exc)
    except CancelledError as exc:
        code, message = exc.exit_code, text_message(f"Unable to process data: {exc}")
        log.error("%s", exc)
    except Exception as exc:  # a bug of ours: still a termination message, never a bare trace
        code = 1
        message = text_message(f"Unable to process data: internal error: "
                               f"{type(exc).__name__}: {exc}")
        log.exception("internal error; please report it with this log")
    finally:
        stop.settle()
        reporter.close()
    write_termination_message(early.termination_log, message)
    # no lingering for a last scrape: CDI's controller sets the DataVolume to 100.0% itself
    # when the pod succeeds (import-controller.go), and CDI's importer exits at once too; the
    # second it waited was a second of every import (issue 20)
    metrics.close()
    return code


def pod_help() -> str:
    """`importer pod --help`: the environment the pod reads, from the source table."""
    from .sources.kinds import registered

    common = ["IMPORTER_SOURCE", "IMPORTER_ENDPOINT", "IMPORTER_CONTENTTYPE",
              "IMPORTER_IMAGE_SIZE", "FILESYSTEM_OVERHEAD", "PREALLOCATION", "CACHE_MODE",
              "INSECURE_TLS", "IMPORTER_CHECKSUM", "OWNER_UID", "IMPORTER_METRICS_PORT",
              "IMPORTER_CONVERTER (ours)", "http_proxy, https_proxy, no_proxy"]
    lines = ["usage: importer pod [-v=N] [-alsologtostderr]   (also cdi-importer)", "",
             "Runs as CDI's importer pod: configured by CDI's environment and fixed paths",
             "(/data, /dev/cdi-block-volume, /scratch, /certs, /extraheaders, /proxycerts,",
             "/dev/termination-log), progress on https://:8443/metrics.", "",
             "common variables:", *(f"  {v}" for v in common), "", "per source:"]
    for k in registered():
        if k.pod_name:
            lines.append(f"  {k.pod_name}: {', '.join(v for v in k.pod_variables)}")
    lines.append("  none: a blank disk of IMPORTER_IMAGE_SIZE")
    return "\n".join(lines)


def preflight(settings: PodSettings, config: ImportConfig | None
              ) -> tuple[PodSettings, ImportConfig | None]:
    """What the pod does to the volume before importing, kept out of the configuration reader:
    a stale image of an earlier attempt is removed (CDI quirk Q17: it would shrink the free
    space; not for a warm-import delta, which applies onto it), then the available space is
    measured, and the import's sizes follow from it."""
    if not settings.block and not settings.delta_stage:
        for stale in (settings.data_dir / "disk.img", settings.data_dir / "disk.img.partial"):
            stale.unlink(missing_ok=True)
    available = available_space(settings.dest if settings.block else settings.data_dir,
                                 settings.block, settings.image_size)
    settings = dataclasses.replace(settings, available=available)
    if config is not None:
        resize_to = None
        if settings.image_size is not None and not settings.block:
            resize_to = min(get_usable_space(settings.overhead, available), settings.image_size)
        config = dataclasses.replace(config, image_size=resize_to, size_limit=available)
    return settings, config



def _run(settings: PodSettings, config: ImportConfig | None, progress: Progress,
         cancel: threading.Event) -> tuple[int, str]:
    src = settings.source
    if src == "none":
        return _blank(settings)
    if src in not_yet():
        msg = (f"Unable to connect to {src} data source: the {src} source is not available in "
               "this version of importer")
        log.error(msg)
        return 1, text_message(msg)
    assert config is not None  # every source but `none` has an import config
    if settings.node_pull:
        return _node_pull(settings, config, progress, cancel)
    return _import(settings, config, progress, cancel)


def _node_pull(settings: PodSettings, config: ImportConfig, progress: Progress,
               cancel: threading.Event) -> tuple[int, str]:
    try:
        name = wait_for_ready(settings.ready_path, settings.ready_timeout, cancel)
        if name is None:
            msg = f"Timeout waiting for file {settings.ready_file}"
            log.error(msg)
            return 1, text_message(msg)
        try:
            url = image_url(config.source, name)
        except ImporterError as exc:
            log.error("%s", exc)
            return 1, text_message(f"Unable to process data: {exc}")
        log.info("node pull: the image server serves %s", url)
        return _import(settings, dataclasses.replace(config, source=url), progress, cancel,
                       labels_from=config.source)
    finally:
        signal_done(settings.done_path)


def _import(settings: PodSettings, config: ImportConfig, progress: Progress,
            cancel: threading.Event, labels_from: str | None = None) -> tuple[int, str]:
    src = settings.source
    log.info("importing", extra={"fields": {"source": src, "content_type": settings.content_type.value,
                                            "volume_mode": "block" if settings.block else "filesystem",
                                            "available": settings.available}})
    try:
        result = run_import(config, progress, cancel)
    except ScratchSpaceRequiredError as exc:
        log.info("%s: asking the controller for scratch space", exc)
        return 0, json_message("scratch space required and none found",
                               scratch_space_required=True, preallocation_applied=False)
    except ChecksumMismatchError as exc:
        # exit 0 on purpose: the controller marks the import failed for good (no restart loop)
        log.error("%s", exc)
        return 0, json_message(f"Unable to process data: checksum validation failed: {exc}")
    except (SourceNotFoundError, SourceAuthError, SourceTLSError, SourceUnavailableError,
            SourceUnreachableError) as exc:
        log.error("%s", exc)
        if src == "registry":
            # the controller gives the DataVolume reason ImagePullFailed on this phrase
            return exc.exit_code, text_message(f"Unable to process data: failed to pull image: "
                                               f"{exc}")
        if isinstance(exc, SourceUnavailableError) and not exc.connecting:
            return exc.exit_code, text_message(f"Unable to process data: {exc}")
        return exc.exit_code, text_message(f"Unable to connect to {src} data source: {exc}")
    except CancelledError:
        raise
    except TargetTooSmallError as exc:
        log.error("%s", exc)
        # CDI's sentence (pkg/image/qemu.go ErrLargerPVCRequired), which users and alerts know
        return exc.exit_code, text_message(
            f"Unable to process data: virtual image size {exc.required} is larger than the "
            f"reported available storage {exc.available}. A larger PVC is required")
    except SourceError as exc:
        log.error("%s", exc)
        if exc.connecting and src != "registry":  # CDI: its data source's constructor failed
            return exc.exit_code, text_message(f"Unable to connect to {src} data source: {exc}")
        return exc.exit_code, text_message(f"Unable to process data: {exc}")
    except ImporterError as exc:
        log.error("%s", exc)
        return exc.exit_code, text_message(f"Unable to process data: {exc}")
    if labels_from is not None:
        try:
            result.labels.update(fetch_labels(labels_from))
        except ImporterError as exc:
            log.error("%s", exc)
            return exc.exit_code, text_message(f"Unable to process data: {exc}")
    if not settings.block and settings.content_type.value == "kubevirt":
        os.chmod(settings.dest, 0o660)  # CDI's functional tests check -rw-rw----
    log.info("import complete", extra={"fields": result.as_dict()})
    vddk = result.details.get("vddkInfo")
    return 0, json_message("Import Complete", scratch_space_required=False,
                           preallocation_applied=result.preallocated, labels=result.labels or None,
                           vddk_info=vddk if isinstance(vddk, dict) else None)


def _blank(settings: PodSettings) -> tuple[int, str]:
    if settings.content_type.value == "archive":
        msg = "Cannot create empty disk with content type archive"
        log.error(msg)
        return 1, text_message(msg)
    requested = settings.image_size
    if requested is not None and settings.available < requested:
        log.warning("Available space less than requested size, creating blank image sized to "
                    "available space: %d", settings.available)
    size = get_usable_space(settings.overhead, settings.available)
    try:
        blank = ImportConfig(source="none", dest=settings.dest, image_size=size,
                             preallocation=settings.preallocation, source_kind="blank")
        applied = run_import(blank).preallocated
    except ImporterError as exc:
        log.error("%s", exc)
        return 1, text_message(f"Unable to create blank image: {exc}")
    if not settings.block:
        os.chmod(settings.dest, 0o660)
    log.info("blank image created", extra={"fields": {"size": size, "preallocated": applied}})
    # CDI writes nothing for a blank block volume without preallocation (quirk Q24); we do
    return 0, json_message("Import Complete", preallocation_applied=applied)


if __name__ == "__main__":
    raise SystemExit(main())
