"""cdi-source-update-poller: what every DataImportCron's CronJob runs from the importer image
(pkg/controller/dataimportcron-controller.go; CDI's tools/cdi-source-update-poller). It reads the
digest of the registry image the cron follows and records it on the DataImportCron, where the
controller sees a new digest and imports it: KubeVirt's golden images stay current this way.

    cdi-source-update-poller -ns NS -cron NAME -url docker://REGISTRY/REPO:TAG [-certdir DIR]

The digest is that of the manifest (or index) the tag names, as the registry serves it: the
sha256 of its bytes, which is what CDI's poller reports and what a pull by digest then names.
The DataImportCron gets one JSON patch: `lastCronTime` always, `sourceDesiredDigest` when it
changed. Unlike CDI's poller, a cron without annotations is patched too (CDI's "add" to a
missing /metadata/annotations fails), and every failure exits 1 with one line naming what to
check, also in the termination log."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import advice
from .errors import ConfigError, ImporterError
from .goflags import wants_help
from .kube import DataImportCrons
from .pollerconfig import USAGE, PollerSettings, read_poller_settings
from .termination import write_if_mounted

__all__ = ["ANN_DESIRED_DIGEST", "ANN_LAST_CRON_TIME", "annotation_patch", "main"]

log = logging.getLogger("importer.poller")

ANN_DESIRED_DIGEST = "cdi.kubevirt.io/storage.import.sourceDesiredDigest"
ANN_LAST_CRON_TIME = "cdi.kubevirt.io/storage.import.lastCronTime"


def image_digest(settings: PollerSettings) -> str:
    """The digest of the manifest or index the URL's tag (or digest) names."""
    from .sources.oci.credentials import Credentials
    from .sources.oci.reference import parse_reference
    from .sources.oci.registry_store import RegistryStore

    http = settings.http
    creds = None
    if http.username and http.password:
        creds = Credentials(http.username, http.password,
                            "IMPORTER_ACCESS_KEY_ID and IMPORTER_SECRET_KEY")
    store = RegistryStore(parse_reference(settings.url), http, creds)
    try:
        _data, _mtype, digest = store.root_manifest()
    finally:
        store.close()
    if digest is None:  # pragma: no cover - root_manifest always hashes what it read
        raise ImporterError(f"{settings.url}: the registry's manifest has no digest")
    return str(digest)


def _escape(key: str) -> str:
    """A JSON pointer token (RFC 6901): ~ and / escaped, as CDI's EscapeJsonPointer does."""
    return key.replace("~", "~0").replace("/", "~1")


def annotation_patch(cron: dict[str, Any], digest: str, now: str) -> list[dict[str, Any]]:
    """The JSON patch CDI's poller sends, plus the annotations map when the cron has none."""
    metadata = cron.get("metadata") or {}
    annotations = metadata.get("annotations")
    ops: list[dict[str, Any]] = []
    if not isinstance(annotations, dict):
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
        annotations = {}
    ops.append({"op": "add", "path": f"/metadata/annotations/{_escape(ANN_LAST_CRON_TIME)}",
                "value": now})
    if digest and digest != annotations.get(ANN_DESIRED_DIGEST):
        ops.append({"op": "add", "path": f"/metadata/annotations/{_escape(ANN_DESIRED_DIGEST)}",
                    "value": digest})
    return ops


def _rfc3339_now() -> str:
    """Go's time.RFC3339 of local time, as CDI formats lastCronTime."""
    now = time.localtime()
    offset = time.strftime("%z", now)
    zone = "Z" if offset in ("+0000", "-0000") else f"{offset[:3]}:{offset[3:]}"
    return time.strftime("%Y-%m-%dT%H:%M:%S", now) + zone


def run(settings: PollerSettings) -> str:
    """Poll once; returns what was done, for the log and the termination message."""
    digest = image_digest(settings)
    log.info("Digest is %s", digest)
    crons = DataImportCrons(settings.kubeconfig, settings.server)
    cron = crons.get(settings.namespace, settings.cron)
    ops = annotation_patch(cron, digest, _rfc3339_now())
    updated = any(op["path"].endswith(_escape(ANN_DESIRED_DIGEST)) for op in ops)
    log.info("Digest updated" if updated else "No digest update")
    crons.patch(settings.namespace, settings.cron, ops)
    return (f"DataImportCron {settings.namespace}/{settings.cron}: "
            + (f"digest updated to {digest}" if updated else f"digest {digest} unchanged"))


def main(argv: Sequence[str] | None = None) -> int:
    advice.use("pod")  # messages name the pod's settings, never CLI flags
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = list(sys.argv[1:] if argv is None else argv)
    if wants_help(args):
        print(f"{USAGE}\n\n{__doc__.split(chr(10) + chr(10))[0]}")
        return 0
    try:
        settings = read_poller_settings(args, os.environ)
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    try:
        done = run(settings)
    except ImporterError as exc:
        log.error("%s", exc)
        write_if_mounted(settings.termination_log, str(exc))
        return 1
    write_if_mounted(settings.termination_log, done)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
