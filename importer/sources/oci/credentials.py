"""Registry credentials from a docker/podman credentials file (config.json or auth.json).

oras-py can read these too, but only from the locations it picks itself (it reads the process
environment) and only the `auth` field; the configuration layer chooses the file here, and the
`username`/`password` and `identitytoken` forms docker and podman also write are understood.
Credential helpers (`credsStore`, `credHelpers`) run external programs and are not used: the log
says so when they are the only source of credentials."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ConfigError
from .reference import ImageReference

__all__ = ["Credentials", "credentials_from_file"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    origin: str  # for logs: where they came from, never the values


def credentials_from_file(path: Path, ref: ImageReference) -> Credentials | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"registry credentials file {path}: cannot be read as JSON ({exc})") from exc
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        auths = {}
    for key in ref.auth_keys:
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        creds = _from_entry(entry, f"{path} ({key})")
        if creds:
            return creds
    if isinstance(data, dict) and (data.get("credsStore") or data.get("credHelpers")):
        log.warning("%s names a credential helper for %s; helpers are not run, give the "
                    "credentials directly", path, ref.domain)
    return None


def _from_entry(entry: dict[str, object], origin: str) -> Credentials | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"registry credentials in {origin}: 'auth' is not base64 of "
                              "user:password") from exc
        if sep:
            return Credentials(user, password, origin)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return Credentials(name, secret, origin)
    if entry.get("identitytoken"):
        log.warning("registry credentials in %s are an OAuth identity token, which is not "
                    "supported; give a user name and password (or a robot account)", origin)
    return None
