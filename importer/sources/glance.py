"""OpenStack Glance images (what CDI's openstack-populator copies, issue 21).

Opening the source logs in to Keystone (sources/openstack/keystone.py), finds the image
service in the token's catalog, and reads the image's record: it must be `active` (a queued
image has no data yet), and its size and checksums (the multihash, sha512 by default, or the
older md5 `checksum`) come from there. The bytes are then the image's `/file` resource, read
by the HTTP source with the token as a header: ranged GETs on several connections where Glance
offers ranges (it does for its filesystem, Swift, Ceph and S3 stores), one resumable stream
where it does not. The record's checksum is verified whenever the plan reads the bytes in
order, as for S3 and GCS objects.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import threading
from typing import Any
from urllib.parse import quote

from ..checksum import ALGORITHMS, ChecksumSpec
from ..errors import SourceContentError, SourceError, SourceNotFoundError
from ..settings import ImportConfig
from .base import SourceInfo
from .http import HttpSource
from .openstack.keystone import KeystoneSession, json_object, raise_for_status
from .options import GlanceOptions, HttpOptions
from .retry import retrying
from .transport import ApiConnection, HttpConnector

__all__ = ["GlanceSource", "image_api_base"]

log = logging.getLogger(__name__)

#: what a record's status means when it is not `active`
_NOT_ACTIVE = {
    "queued": "has no data yet (it was created but nothing was uploaded to it)",
    "saving": "is still being uploaded; import it once it is active",
    "uploading": "is still being uploaded; import it once it is active",
    "importing": "is still being imported into Glance; import it once it is active",
    "killed": "failed to upload in Glance (status killed); upload it again",
    "deleted": "was deleted",
    "pending_delete": "is being deleted",
    "deactivated": "is deactivated: only an administrator can read its data; ask for it to "
                   "be reactivated",
}


def image_api_base(endpoint_url: str) -> str:
    """The v2 API under a catalog endpoint (`http://glance:9292`, `.../image`, `.../v2`)."""
    url = endpoint_url.rstrip("/")
    last = url.rsplit("/", 1)[-1]
    if last == "v2" or last.startswith("v2."):
        return url.rsplit("/", 1)[0] + "/v2"
    return url + "/v2"


@dataclasses.dataclass(frozen=True, slots=True)
class _Record:
    name: str
    size: int | None
    disk_format: str
    checksum: ChecksumSpec | None


class GlanceSource:
    def __init__(self, config: ImportConfig) -> None:
        opts = config.options
        if not isinstance(opts, GlanceOptions) or not opts.image_id:
            raise SourceError("a Glance import needs the image id")
        auth = opts.auth
        if auth.method == "password" and not (auth.username or auth.user_id):
            # --username and --password-file, when the secret names no user
            auth = dataclasses.replace(auth, username=config.http.username,
                                       password=auth.password or config.http.password)
        self._opts = opts = dataclasses.replace(opts, auth=auth)
        # the secret's CA and insecureSkipVerify join the import's own TLS settings
        http = dataclasses.replace(
            config.http, insecure=config.http.insecure or opts.insecure,
            ca_pems=(*config.http.ca_pems, opts.cacert) if opts.cacert else config.http.ca_pems)
        self._closed = threading.Event()
        self._connector = HttpConnector(http)
        self._keystone = KeystoneSession(config.source, auth, self._connector, self._retry)
        self._http: HttpSource | None = None
        try:
            self._open(http)
        except BaseException:
            self.close()
            raise

    def _retry(self, call: Any) -> Any:
        return retrying(self._connector.opts, self._closed, call)

    def _open(self, http: HttpOptions) -> None:
        opts = self._opts
        endpoint = self._keystone.endpoint("image", opts.interface, opts.region)
        base = image_api_base(endpoint.url)
        image_url = f"{base}/images/{quote(opts.image_id, safe='')}"
        record = self._retry(lambda: self._record(image_url))
        self._record_info = record
        log.info("Glance image %s (%s, %s, %s bytes) from %s (%s%s)", opts.image_id,
                 record.name or "unnamed", record.disk_format or "no disk format",
                 record.size if record.size is not None else "unknown", endpoint.url,
                 endpoint.interface, f", {endpoint.region}" if endpoint.region else "")
        # the token goes only to Glance's origin, through the callback: it is renewed there
        data_opts = dataclasses.replace(http, username=None, password=None, headers=())
        self._http = HttpSource(f"{image_url}/file", data_opts,
                                shown=f"Glance image {opts.image_id}",
                                auth_headers=self._keystone.headers,
                                auth_hint="Glance refused the token: the project cannot read "
                                "this image's data")
        size = self._http.info().size
        if record.size is not None and size is not None and size != record.size:
            raise SourceContentError(
                f"Glance image {opts.image_id}: its record says {record.size} bytes, but its "
                f"data is {size} bytes; the image is damaged in Glance's store")

    def _record(self, image_url: str) -> _Record:
        api = ApiConnection(self._connector, max_body=4 << 20, what="Glance")
        try:
            status, _h, body = api.send("GET", image_url, None,
                                        self._keystone.headers() | {"Accept": "application/json"})
        finally:
            api.close()
        image_id = self._opts.image_id
        if status == 404:
            raise SourceNotFoundError(f"Glance image {image_id} not found, or the project "
                                      "cannot see it; check the image id and the project")
        raise_for_status(status, body, f"reading the record of Glance image {image_id}")
        doc = json_object(body, f"Glance's record of image {image_id}")
        state = str(doc.get("status", ""))
        if state != "active":
            why = _NOT_ACTIVE.get(state, f"has status {state!r}, not active")
            raise SourceError(f"Glance image {image_id} {why}")
        size = doc.get("size")
        return _Record(name=str(doc.get("name") or ""),
                       size=size if isinstance(size, int) and size >= 0 else None,
                       disk_format=str(doc.get("disk_format") or ""),
                       checksum=_checksum(doc))

    # ------------------------------------------------------------------ Source

    def _data(self) -> HttpSource:
        if self._http is None:
            raise SourceError("the Glance image is not open")
        return self._http

    def info(self) -> SourceInfo:
        base = self._data().info()
        return dataclasses.replace(base, name=f"Glance image {self._opts.image_id}",
                                   checksum=self._record_info.checksum)

    def open_stream(self, offset: int = 0) -> io.RawIOBase:
        return self._data().open_stream(offset)

    def read_at(self, offset: int, size: int) -> bytes:
        return self._data().read_at(offset, size)

    def readinto_at(self, offset: int, buf: bytearray) -> int:
        return self._data().readinto_at(offset, buf)

    def verify(self) -> None:
        pass  # the record's checksum is verified in the stream

    def close(self) -> None:
        self._closed.set()
        if self._http is not None:
            self._http.close()
        self._keystone.close()
        self._connector.close()


def _checksum(doc: dict[str, Any]) -> ChecksumSpec | None:
    """The strongest checksum the record carries: the multihash (os_hash_algo, os_hash_value;
    sha512 unless the cloud chose another), else the legacy md5 `checksum`."""
    algo = str(doc.get("os_hash_algo") or "").lower()
    value = str(doc.get("os_hash_value") or "").lower()
    if algo in ALGORITHMS and len(value) == ALGORITHMS[algo]:
        return ChecksumSpec(algo, value)
    md5 = str(doc.get("checksum") or "").lower()
    if len(md5) == ALGORITHMS["md5"]:
        return ChecksumSpec("md5", md5)
    return None
