"""Registry credentials from a docker/podman credentials file (config.json or auth.json).

oras-py can read these too, but only from the locations it picks itself (it reads the process
environment) and only the `auth` field; the configuration layer chooses the file here, and the
`username`/`password` and `identitytoken` forms docker and podman also write are understood.
Credential helpers (`credHelpers` for a registry, else `credsStore`) are run as docker runs them:
`docker-credential-<name> get` with the server on stdin, through the child-process helper
(minimal environment, bounded time); their answer is used like an `auths` entry."""

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


def credentials_from_file(path: Path, ref: ImageReference,
                          helper_env: dict[str, str] | None = None) -> Credentials | None:
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
    if isinstance(data, dict):
        helpers = data.get("credHelpers")
        helper = helpers.get(ref.domain) if isinstance(helpers, dict) else None
        helper = helper or data.get("credsStore")
        if isinstance(helper, str) and helper:
            return _from_helper(helper, ref, path, helper_env or {})
    return None


def _from_helper(name: str, ref: ImageReference, path: Path, env: dict[str, str]
                 ) -> Credentials | None:
    """docker-credential-NAME get, asked for each of the registry's usual server keys."""
    import shutil
    import subprocess

    from ...children import run_child

    program = shutil.which(f"docker-credential-{name}", path=env.get("PATH"))
    if program is None:
        raise ConfigError(f"{path} names the credential helper {name!r}, but "
                          f"docker-credential-{name} is not on PATH; install it or give the "
                          "credentials with --username/--password-file")
    # as docker asks helpers: by server, never by repository
    for server in [k for k in ref.auth_keys if k != f"{ref.domain}/{ref.repository}"]:
        try:
            r = run_child([program, "get"], timeout=30, stdin_data=server.encode(), env=env)
        except subprocess.TimeoutExpired:
            raise ConfigError(f"docker-credential-{name} did not answer in 30 s") from None
        if r.returncode != 0:
            continue  # "credentials not found in native keychain": try the next key
        try:
            answer = json.loads(r.stdout)
        except ValueError:
            raise ConfigError(f"docker-credential-{name} answered with no JSON") from None
        user, secret = answer.get("Username"), answer.get("Secret")
        if user == "<token>":
            return _from_entry({"identitytoken": secret}, f"docker-credential-{name}")
        if isinstance(user, str) and isinstance(secret, str) and user:
            log.info("registry credentials for %s from docker-credential-%s", ref.domain, name)
            return Credentials(user, secret, f"docker-credential-{name} ({server})")
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
