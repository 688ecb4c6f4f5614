"""Keystone (OpenStack Identity v3): a scoped token and the service catalog, for the Glance
source.

Why not keystoneauth1 or openstacksdk? Both pull in a tree of OpenStack libraries (os-service-
types, stevedore, iso8601, requests, dogpile...) for four calls, and bring requests, a second
HTTP stack beside the one the image bytes travel on (sources/transport.py): another TLS setting,
another proxy rule, other error classes. The v3 token API is small and stable since 2013, so
this module makes its calls over our transport and follows gophercloud's clientconfig, which
CDI's openstack-populator uses, for what the secret's keys mean.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from ...errors import (
    SourceAuthError,
    SourceContentError,
    SourceError,
    SourceNotFoundError,
    SourceUnavailableError,
)
from ..options import KeystoneAuth
from ..transport import ApiConnection, HttpConnector, redact

__all__ = ["Endpoint", "KeystoneSession", "auth_request", "json_object", "raise_for_status"]

log = logging.getLogger(__name__)

#: a token with less than this left is renewed before the next request: an import of hours
#: outlives Keystone's default one-hour token
RENEW_BEFORE = 300.0
_RETRYABLE = {429, 500, 502, 503, 504}


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    region: str
    interface: str


def auth_request(auth: KeystoneAuth) -> dict[str, Any]:
    """The body of POST /v3/auth/tokens for these credentials and scope."""
    if auth.method == "token":
        identity: dict[str, Any] = {"methods": ["token"], "token": {"id": auth.token or ""}}
    elif auth.method == "applicationcredential":
        cred: dict[str, Any] = {"secret": auth.app_credential_secret or ""}
        if auth.app_credential_id:
            cred["id"] = auth.app_credential_id
        else:
            cred["name"] = auth.app_credential_name or ""
            cred["user"] = _user(auth)
        # an application credential carries its own project: a scope is refused
        return {"auth": {"identity": {"methods": ["application_credential"],
                                      "application_credential": cred}}}
    else:
        user = _user(auth) | {"password": auth.password or ""}
        identity = {"methods": ["password"], "password": {"user": user}}
    body: dict[str, Any] = {"identity": identity}
    scope = _scope(auth)
    if scope:
        body["scope"] = scope
    return {"auth": body}


def _user(auth: KeystoneAuth) -> dict[str, Any]:
    if auth.user_id:
        return {"id": auth.user_id}
    return {"name": auth.username or "",
            "domain": _domain(auth.user_domain_id, auth.user_domain_name, auth.default_domain)}


def _domain(domain_id: str | None, name: str | None, default: str | None) -> dict[str, str]:
    if domain_id:
        return {"id": domain_id}
    if name:
        return {"name": name}
    return {"id": default or "default"}


def _scope(auth: KeystoneAuth) -> dict[str, Any] | None:
    if auth.system_scope:
        return {"system": {"all": True}}
    if auth.project_id:
        return {"project": {"id": auth.project_id}}
    if auth.project_name:
        return {"project": {"name": auth.project_name, "domain": _domain(
            auth.project_domain_id, auth.project_domain_name, auth.default_domain)}}
    if auth.domain_id:
        return {"domain": {"id": auth.domain_id}}
    if auth.domain_name:
        return {"domain": {"name": auth.domain_name}}
    return None


class KeystoneSession:
    """A token for the image service, taken at the first use and renewed when it nears its
    end; `headers()` gives what each request to the service carries."""

    def __init__(self, identity_url: str, auth: KeystoneAuth, connector: HttpConnector,
                 retry: Callable[[Callable[[], Any]], Any]) -> None:
        parts = urlsplit(identity_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SourceError(f"{identity_url!r} is not a Keystone URL; give the identity "
                              "endpoint, e.g. https://keystone.example.com:5000/v3")
        self._url = identity_url.rstrip("/")
        self._auth = auth
        self._api = ApiConnection(connector, max_body=8 << 20, what="Keystone")
        self._retry = retry
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0
        self._catalog: list[dict[str, Any]] = []
        self._v3: str | None = None

    # ------------------------------------------------------------------ token

    def headers(self) -> dict[str, str]:
        with self._lock:
            if self._token is None or self._expires - time.time() < RENEW_BEFORE:
                if self._token is not None:
                    log.info("the Keystone token ends in %.0f s: taking a new one",
                             self._expires - time.time())
                self._retry(self._login)
            return {"X-Auth-Token": self._token or ""}

    def _login(self) -> None:
        v3 = self._v3 = self._v3 or self._discover()
        status, headers, body = self._api.send(
            "POST", f"{v3}/auth/tokens", json.dumps(auth_request(self._auth)).encode(),
            {"Content-Type": "application/json", "Accept": "application/json"})
        if status in (401, 403):
            raise SourceAuthError(f"Keystone at {redact(v3)} refused the {self._what()}: "
                                  f"HTTP {status}{_detail(body)}; check the secret's keys")
        if status == 404:
            raise SourceNotFoundError(f"{redact(v3)}/auth/tokens: HTTP 404; the identity "
                                      "endpoint is not a Keystone v3 API")
        raise_for_status(status, body, f"logging in to Keystone at {redact(v3)}")
        doc = json_object(body, "Keystone's token")
        token = headers.get("x-subject-token")
        if not token or not isinstance(doc.get("token"), dict):
            raise SourceContentError(f"{redact(v3)}: the answer to the login holds no token")
        self._token = token
        self._expires = _timestamp(doc["token"].get("expires_at"))
        catalog = doc["token"].get("catalog")
        self._catalog = catalog if isinstance(catalog, list) else []

    def _what(self) -> str:
        a = self._auth
        who = a.username or a.user_id or a.app_credential_id or a.app_credential_name
        return f"{a.method} login" + (f" of {who!r}" if who else "")

    def _discover(self) -> str:
        """The v3 API's URL: the identity URL itself when it names v3, else the stable v3
        version that its version document lists (a root URL, or CDI's documented /v2.0)."""
        path = urlsplit(self._url).path.rstrip("/")
        if path.endswith("/v3"):
            return self._url
        root = self._url[: -len("/v2.0")] if path.endswith("/v2.0") else self._url
        status, _headers, body = self._api.send("GET", root, None,
                                                {"Accept": "application/json"})
        if status in (200, 300):
            doc = json_object(body, "Keystone's version list")
            versions = doc.get("versions", {})
            values = versions.get("values", []) if isinstance(versions, dict) else versions
            if isinstance(doc.get("version"), dict):
                values = [doc["version"], *values]
            for v in values if isinstance(values, list) else []:
                if isinstance(v, dict) and str(v.get("id", "")).startswith("v3"):
                    for link in v.get("links", []):
                        if isinstance(link, dict) and link.get("rel") == "self":
                            return str(link.get("href", "")).rstrip("/")
        raise_for_status(status, body, f"discovering the Keystone version at {redact(root)}")
        raise SourceNotFoundError(f"{redact(root)} lists no Identity v3 API; give the v3 "
                                  "endpoint, e.g. https://keystone.example.com:5000/v3")

    # ------------------------------------------------------------------ catalog

    def endpoint(self, service_type: str, interface: str, region: str | None) -> Endpoint:
        """The catalog's endpoint of `service_type` for `interface` (and `region`)."""
        self.headers()
        found: list[Endpoint] = []
        for service in self._catalog:
            if not isinstance(service, dict) or service.get("type") != service_type:
                continue
            for ep in service.get("endpoints", []):
                if isinstance(ep, dict) and ep.get("url"):
                    found.append(Endpoint(str(ep["url"]),
                                          str(ep.get("region_id") or ep.get("region") or ""),
                                          str(ep.get("interface", ""))))
        for ep in found:
            if ep.interface == interface and (not region or ep.region == region):
                return ep
        if not self._catalog:
            raise SourceError("Keystone gave a token without a service catalog (an unscoped "
                              "token): name a project (projectName or projectID) in the secret")
        offered = ", ".join(f"{e.interface} in {e.region or 'no region'}" for e in found)
        raise SourceNotFoundError(
            f"the service catalog has no {interface} {service_type} endpoint"
            + (f" in region {region}" if region else "")
            + (f" (it has: {offered}); set availability or regionName in the secret" if found
               else "; the cloud has no Glance, or the project cannot see it"))

    def close(self) -> None:
        self._api.close()


def json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body or b"{}")
    except ValueError as exc:
        raise SourceContentError(f"{what} is not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise SourceContentError(f"{what} is not a JSON object")
    return doc


def _detail(body: bytes) -> str:
    """Keystone's and Glance's own explanation of a refusal, if the body carries one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return ""
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return f" ({str(err['message'])[:200]})"
    return ""


def raise_for_status(status: int, body: bytes, what: str) -> None:
    if 200 <= status < 300:
        return
    message = f"{what}: HTTP {status}{_detail(body)}"
    if status in (401, 403):
        raise SourceAuthError(message)
    if status == 404:
        raise SourceNotFoundError(message)
    if status in _RETRYABLE:
        raise SourceUnavailableError(message)
    raise SourceError(message)


def _timestamp(text: object) -> float:
    """Keystone's expires_at (2026-12-07T00:51:32.000000Z) as seconds since the epoch; a
    missing or odd one counts as an hour, Keystone's default lifetime."""
    if isinstance(text, str):
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time() + 3600
