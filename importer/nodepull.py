"""Registry node pull, the importer's half (docs/pod-contract.md 4.4.5): the disk is served by the
cdi-containerimage-server sidecar from inside the user's image on localhost, so the kubelet's
image cache does the pulling. The importer waits for the sidecar's ready file (it holds the
image file name), imports http://localhost:PORT/<name> like any HTTP source, reads the image's
environment from /info for the KUBEVIRT_IO_ labels, and creates the done file so that the
sidecar exits (also after a failure: a sidecar left waiting would keep the pod running)."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from .errors import SourceContentError, SourceUnavailableError
from .sources.oci.manifest import kubevirt_labels

__all__ = ["fetch_labels", "image_url", "signal_done", "wait_for_ready"]

log = logging.getLogger(__name__)
#: the sidecar's /info: an image's config (its environment and labels), never megabytes
MAX_INFO = 4 << 20


def wait_for_ready(path: Path, timeout: float, cancel: threading.Event) -> str | None:
    """The image file name the sidecar wrote, or None after `timeout` seconds (CDI polls every
    second for 60 s)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            name = path.read_text(encoding="utf-8").strip()
            if name:
                return name
        except FileNotFoundError:
            pass
        if time.monotonic() >= deadline or cancel.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
            return None


def image_url(endpoint: str, name: str) -> str:
    """The sidecar's URL for the file: the endpoint's scheme and host, the file as path."""
    if "/" in name or name in (".", ".."):
        raise SourceContentError(f"the ready file names {name!r}, which is not a file name")
    p = urlsplit(endpoint)
    return urlunsplit((p.scheme, p.netloc, "/" + quote(name), "", ""))


def fetch_labels(endpoint: str) -> dict[str, str]:
    """The image's KUBEVIRT_IO_ environment entries as labels, from the sidecar's /info."""
    import http.client
    import json

    from .config import HttpOptions
    from .sources.transport import HttpConnector

    p = urlsplit(endpoint)
    url = urlunsplit((p.scheme, p.netloc, "/info", "", ""))
    connector = HttpConnector(HttpOptions(connect_timeout=30, read_timeout=30))
    try:
        conn = connector.connection(url)
        try:
            conn.request("GET", "/info", headers={"Accept": "application/json"})
            resp = conn.getresponse()
            body = resp.read(MAX_INFO + 1)
        finally:
            conn.close()
        if resp.status != 200:
            raise ValueError(f"HTTP {resp.status} {resp.reason}")
        if len(body) > MAX_INFO:
            raise ValueError(f"an answer over {MAX_INFO} bytes")
        env = json.loads(body).get("env", [])
    except (OSError, http.client.HTTPException, ValueError, AttributeError) as exc:
        raise SourceUnavailableError(f"cannot read the image's environment from {url}: {exc}") from exc
    finally:
        connector.close()
    return kubevirt_labels([e for e in env if isinstance(e, str)])


def signal_done(path: Path) -> None:
    """Create the done file (exclusively, as CDI does); the sidecar exits when it appears."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as exc:
        log.error("cannot create the done file %s: %s; the image server sidecar keeps running",
                  path, exc.strerror)
