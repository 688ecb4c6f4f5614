"""The oVirt engine REST API calls an image download needs, in a small typed client.

Why not ovirtsdk4, the SDK oVirt's own tools use? It installs here, and the tests drive it
against the same fake engine to keep that fake honest (tests/sources/ovirt/test_fake_engine.py),
but for the importer itself:
* it is published as an sdist with a C extension built against libxml2: every install (the
  container image, a user's `pip install`) would need a compiler and libxml2-dev, for one
  source kind;
* its HTTP stack is pycurl: a second TLS configuration (one CA file) beside the one every other
  source and the imageio daemon's data path use (a CA directory, /proxycerts, --insecure, the
  proxy rules, our error classes), and a blocked call cannot be aborted from a SIGTERM handler;
* the download needs seven calls (SSO token, disk, disk snapshots, image transfer create / get
  / finalize / cancel / extend), whose XML is small and stable since API v4.

So this module makes those calls over the importer's own HTTP connector (sources/http.py), with
the same TLS context, proxies and failure classes, and nothing else. Responses are parsed with
ElementTree from a bounded body (expat neither fetches external entities nor expands entity
bombs past its limits).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from ... import advice
from ...errors import (
    ImporterError,
    SourceAuthError,
    SourceContentError,
    SourceError,
    SourceNotFoundError,
    SourceUnavailableError,
)
from ..options import HttpOptions
from ..transport import ApiConnection, HttpConnector

__all__ = ["DiskInfo", "DiskLockedError", "EngineClient", "SnapshotInfo", "TransferInfo"]

log = logging.getLogger(__name__)

#: the engine's answers are small XML documents; a bigger body is a broken or hostile server
MAX_BODY = 16 << 20
_RETRYABLE = {502, 503, 504}
#: seconds an engine call may take without an answer
ENGINE_TIMEOUT = 30.0


class DiskLockedError(SourceUnavailableError):
    """The engine refused the transfer because the disk is locked (a snapshot being taken,
    another transfer): it clears by itself."""


@dataclass(frozen=True, slots=True)
class DiskInfo:
    id: str
    name: str
    status: str  # ok, locked, illegal
    format: str  # raw or cow
    provisioned_size: int  # the guest's virtual size
    actual_size: int
    total_size: int  # bytes of every volume of the chain
    image_id: str  # the active volume
    storage_domains: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    id: str  # the volume (image) id: what CDI calls a checkpoint
    disk_id: str
    actual_size: int
    format: str


@dataclass(frozen=True, slots=True)
class TransferInfo:
    id: str
    phase: str
    transfer_url: str  # the imageio daemon on the host: the fast path
    proxy_url: str  # the engine's imageio proxy


def _text(el: ET.Element, tag: str) -> str:
    return (el.findtext(tag) or "").strip()


def _int(el: ET.Element, tag: str) -> int:
    value = _text(el, tag)
    return int(value) if value.isdigit() else 0


class EngineClient:
    """One session with the engine: an SSO token taken at the first call, renewed once when the
    engine answers 401 (expired), and revoked by close()."""

    def __init__(self, api_url: str, http_opts: HttpOptions) -> None:
        parts = urlsplit(api_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SourceError(f"{api_url!r} is not an engine API URL; give it as "
                              "https://ENGINE/ovirt-engine/api")
        self.api_url = api_url.rstrip("/")
        origin = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        # where ovirtsdk4 and go-ovirt find SSO: fixed paths on the API's host
        self._token_url = f"{origin}/ovirt-engine/sso/oauth/token"
        self._logout_url = f"{origin}/ovirt-engine/services/sso-logout"
        self._opts = http_opts
        # the engine answers in seconds: a hung engine must not hold a SIGTERM's cleanup for
        # the data path's two minutes
        self._net = HttpConnector(dataclasses.replace(
            http_opts, read_timeout=min(http_opts.read_timeout, ENGINE_TIMEOUT)))
        self._token: str | None = None
        self._lock = threading.Lock()
        self._api = ApiConnection(self._net, max_body=MAX_BODY, what="the engine")

    # ------------------------------------------------------------------ session

    def _login(self) -> str:
        if not self._opts.username:
            raise SourceAuthError("the engine needs a user name and password "
                                  f"({advice.credentials()})")
        form = urlencode({"grant_type": "password", "scope": "ovirt-app-api",
                          "username": self._opts.username,
                          "password": self._opts.password or ""})
        status, body = self._send("POST", self._token_url, form.encode(), {
            "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"})
        try:
            answer = json.loads(body or b"{}")
        except ValueError:
            answer = {}
        if status == 200 and isinstance(answer, dict) and answer.get("access_token"):
            return str(answer["access_token"])
        if isinstance(answer, dict) and answer.get("error"):
            raise SourceAuthError(
                f"the engine refused the login of {self._opts.username!r}: "
                f"{answer.get('error_description') or answer['error']}; check the user name "
                "(with its profile, e.g. admin@internal) and the password")
        self._raise_for(status, body, "logging in to the engine")
        raise SourceContentError(f"{self._token_url}: the login answer holds no access token")

    def close(self) -> None:
        """Revoke the token (best effort) and close the connection."""
        with self._lock:
            token, self._token = self._token, None
        if token:
            try:
                self._send("POST", self._logout_url, urlencode({"token": token}).encode(),
                           {"Content-Type": "application/x-www-form-urlencoded",
                            "Authorization": f"Bearer {token}"})
            except ImporterError as exc:
                log.debug("engine logout failed: %s", exc)
        self._api.close()

    # ------------------------------------------------------------------ transport

    def _send(self, method: str, url: str, body: bytes | None, headers: dict[str, str]
              ) -> tuple[int, bytes]:
        status, _headers, data = self._api.send(method, url, body, headers)
        return status, data

    def _call(self, method: str, path: str, xml: str | None = None) -> tuple[int, bytes]:
        url = f"{self.api_url}/{path}"
        for attempt in (1, 2):
            if self._token is None:
                self._token = self._login()
            status, body = self._send(method, url, xml.encode() if xml is not None else None, {
                "Authorization": f"Bearer {self._token}", "Version": "4",
                "Accept": "application/xml", "Content-Type": "application/xml"})
            if status == 401 and attempt == 1:
                log.info("the engine's token expired; logging in again")
                self._token = None
                continue
            return status, body
        return status, body

    def _get(self, path: str, what: str) -> ET.Element | None:
        """The document at `path`; None when the engine answers 404."""
        status, body = self._call("GET", path)
        if status == 404:
            return None
        self._raise_for(status, body, what)
        return self._parse(body, what)

    def _post(self, path: str, xml: str, what: str) -> ET.Element:
        status, body = self._call("POST", path, xml)
        self._raise_for(status, body, what)
        return self._parse(body, what) if body.strip() else ET.Element("action")

    @staticmethod
    def _parse(body: bytes, what: str) -> ET.Element:
        try:
            return ET.fromstring(body)
        except ET.ParseError as exc:
            raise SourceContentError(f"the engine's answer to {what} is not XML ({exc})") from exc

    def _raise_for(self, status: int, body: bytes, what: str) -> None:
        if 200 <= status < 300:
            return
        detail = _fault(body)
        message = f"{what}: HTTP {status}{': ' + detail if detail else ''}"
        if "disk is locked" in detail.lower() or "disks are locked" in detail.lower():
            raise DiskLockedError(message)
        if status in (401, 403):
            raise SourceAuthError(f"{message}; the user lacks the permission, or the "
                                  "credentials were refused")
        if status == 404:
            raise SourceNotFoundError(message)
        if status in _RETRYABLE:
            raise SourceUnavailableError(message)
        raise SourceError(message)

    # ------------------------------------------------------------------ API

    def disk(self, disk_id: str) -> DiskInfo | None:
        el = self._get(f"disks/{disk_id}", f"error fetching disk {disk_id}")
        if el is None:
            return None
        domains = tuple(sd.get("id", "") for sd in el.findall("storage_domains/storage_domain"))
        return DiskInfo(
            id=el.get("id", disk_id), name=_text(el, "name"), status=_text(el, "status"),
            format=_text(el, "format"), provisioned_size=_int(el, "provisioned_size"),
            actual_size=_int(el, "actual_size"), total_size=_int(el, "total_size"),
            image_id=_text(el, "image_id"), storage_domains=domains)

    def disk_snapshots(self, storage_domain: str) -> Iterator[SnapshotInfo]:
        el = self._get(f"storagedomains/{storage_domain}/disksnapshots",
                       f"error listing snapshots in storage domain {storage_domain}")
        if el is None:
            return
        for snap in el.findall("disk_snapshot"):
            disk = snap.find("disk")
            yield SnapshotInfo(id=snap.get("id", ""),
                               disk_id=disk.get("id", "") if disk is not None else "",
                               actual_size=_int(snap, "actual_size"),
                               format=_text(snap, "format"))

    def create_transfer(self, *, disk_id: str | None, snapshot_id: str | None, fmt: str,
                        inactivity_timeout: int) -> TransferInfo:
        """A download transfer of the disk (its active layer) or of one snapshot volume."""
        subject = (f'<snapshot id="{_attr(snapshot_id)}"/>' if snapshot_id
                   else f'<disk id="{_attr(disk_id or "")}"/>')
        xml = (f"<image_transfer>{subject}<direction>download</direction>"
               f"<format>{_attr(fmt)}</format>"
               f"<inactivity_timeout>{int(inactivity_timeout)}</inactivity_timeout>"
               "</image_transfer>")
        return self._transfer(self._post("imagetransfers", xml,
                                         "Error sending transfer image request"))

    def transfer(self, transfer_id: str) -> TransferInfo | None:
        el = self._get(f"imagetransfers/{transfer_id}", f"reading image transfer {transfer_id}")
        return None if el is None else self._transfer(el)

    def transfer_action(self, transfer_id: str, action: str) -> None:
        """finalize, cancel or extend."""
        self._post(f"imagetransfers/{transfer_id}/{action}", "<action/>",
                   f"{action} of image transfer {transfer_id}")

    @staticmethod
    def _transfer(el: ET.Element) -> TransferInfo:
        tid = el.get("id", "")
        if not tid:
            raise SourceContentError("Error image transfer not available: the engine's answer "
                                     "names no transfer id")
        return TransferInfo(id=tid, phase=_text(el, "phase"),
                            transfer_url=_text(el, "transfer_url"),
                            proxy_url=_text(el, "proxy_url"))


def _attr(value: str) -> str:
    """A value inside our XML: ids and format names, escaped anyway."""
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def _fault(body: bytes) -> str:
    """`reason: detail` of an engine <fault>, or the start of whatever else came back."""
    try:
        el = ET.fromstring(body)
    except ET.ParseError:
        return body[:200].decode("utf-8", "replace").strip()
    parts = [_text(el, "reason"), _text(el, "detail")]
    return ": ".join(p.strip("[]") for p in parts if p)
