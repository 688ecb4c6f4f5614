"""The imageio daemon's control calls on a transfer URL: OPTIONS (features, readers) and the
extents map. The data itself is read with ranged GETs by the HTTP source (sources/http.py).

Shapes (ovirt-imageio 2.x, docs "Random I/O"):
  OPTIONS <url>          {"features": ["checksum", "extents", ...], "max_readers": 8, ...}
  GET <url>/extents      [{"start": 0, "length": 4096, "zero": false, "hole": false}, ...]
A server without OPTIONS (an old proxy; plain HTTPS) answers 405 or 404: no features.
"""

from __future__ import annotations

import http.client
import json
import logging
from dataclasses import dataclass
from typing import Any

from ...disks.base import Extent, merge_extents
from ...errors import ImporterError, SourceContentError
from ..transport import USER_AGENT, HttpConnector, classify_error

__all__ = ["DaemonOptions", "read_extents", "read_options"]

log = logging.getLogger(__name__)

#: an extents answer is one JSON object per run: a million runs is far beyond a real image
MAX_EXTENTS_BODY = 64 << 20


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    features: frozenset[str]
    max_readers: int  # parallel readers the backend serves (1 when not said)


def _call(net: HttpConnector, method: str, url: str, shown: str, limit: int
          ) -> tuple[int, bytes]:
    conn = net.connection(url)
    try:
        headers = {"User-Agent": USER_AGENT}
        conn.request(method, net.request_target(url, headers), headers=headers)
        resp = conn.getresponse()
        body = resp.read(limit + 1)
    except ImporterError:
        raise
    except (http.client.HTTPException, OSError) as exc:
        raise classify_error(exc, shown) from exc
    finally:
        conn.close()
    if len(body) > limit:
        raise SourceContentError(f"{shown}: the {method} answer is larger than {limit} bytes")
    return resp.status, body


def read_options(net: HttpConnector, url: str, shown: str) -> DaemonOptions:
    status, body = _call(net, "OPTIONS", url, shown, 1 << 20)
    if status != 200:
        log.info("%s answers OPTIONS with HTTP %d: no extents, one stream", shown, status)
        return DaemonOptions(frozenset(), 1)
    try:
        doc: Any = json.loads(body)
        features = frozenset(str(f) for f in doc.get("features", []))
        readers = int(doc.get("max_readers") or 1)
    except (ValueError, TypeError, AttributeError):
        log.info("%s answers OPTIONS without JSON: no extents, one stream", shown)
        return DaemonOptions(frozenset(), 1)
    return DaemonOptions(features, max(1, readers))


def read_extents(net: HttpConnector, url: str, shown: str, size: int) -> list[Extent]:
    """The data and zero runs of the image, checked to cover exactly [0, size)."""
    status, body = _call(net, "GET", url.rstrip("/") + "/extents", shown, MAX_EXTENTS_BODY)
    if status != 200:
        raise SourceContentError(f"failed to query extents: {shown} answered HTTP {status}: "
                                 f"{body[:120].decode('utf-8', 'replace')}")
    try:
        doc: Any = json.loads(body)
        runs = [Extent(int(e["start"]), int(e["length"]), bool(e["zero"])) for e in doc]
    except (ValueError, TypeError, KeyError) as exc:
        raise SourceContentError(f"unable to decode extents from {shown}: {exc!r}") from exc
    pos = 0
    for run in runs:
        if run.start != pos or run.length <= 0:
            raise SourceContentError(f"unable to decode extents from {shown}: a run starts at "
                                     f"byte {run.start} where byte {pos} was expected")
        pos = run.end
    if pos != size:
        raise SourceContentError(f"{shown}: the extents cover {pos} bytes of a {size}-byte "
                                 "image")
    return list(merge_extents(runs))
