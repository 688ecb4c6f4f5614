"""The keys of CDI's OpenStack secret (cmd/openstack-populator reads them from its environment,
the secret given as `envFrom`), turned into the Glance source's options. Both front-ends read
the same keys: the populator from its environment, the CLI from `--openstack-secret`, a file of
KEY=VALUE lines or a directory with a file per key (the secret mounted as a volume).

    authType        password (default), token or applicationcredential
    username, userID, password                        password (and a named app credential)
    token                                             token
    applicationCredentialID | applicationCredentialName, applicationCredentialSecret
    projectName | projectID, projectDomainName | projectDomainID     project scope
    domainName | domainID                                            domain scope
    userDomainName | userDomainID, defaultDomain, systemScope
    regionName, availability (public, internal, admin)               the catalog endpoint
    cacert (PEM), insecureSkipVerify (Go's ParseBool)                TLS
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import ConfigError
from ..options import GlanceOptions, KeystoneAuth, SourceOptions

if TYPE_CHECKING:
    from ...settings import Front, Problem

__all__ = ["AUTH_TYPES", "SECRET_KEYS", "glance_options", "glance_problems", "read_secret"]

AUTH_TYPES = ("password", "token", "applicationcredential")
#: secret key -> KeystoneAuth field
_AUTH_FIELDS = {
    "authType": "method", "username": "username", "userID": "user_id", "password": "password",
    "token": "token", "applicationCredentialID": "app_credential_id",
    "applicationCredentialName": "app_credential_name",
    "applicationCredentialSecret": "app_credential_secret",
    "userDomainName": "user_domain_name", "userDomainID": "user_domain_id",
    "projectName": "project_name", "projectID": "project_id",
    "projectDomainName": "project_domain_name", "projectDomainID": "project_domain_id",
    "domainName": "domain_name", "domainID": "domain_id", "defaultDomain": "default_domain",
    "systemScope": "system_scope",
}
SECRET_KEYS = (*_AUTH_FIELDS, "regionName", "availability", "cacert", "insecureSkipVerify")
#: secret keys whose values are never shown
_SECRET_VALUES = {"password", "token", "applicationCredentialSecret"}


def glance_options(image_id: str, keys: Mapping[str, str]) -> GlanceOptions:
    """The options of a Glance import from the secret's keys (absent and empty keys alike are
    unset, as Go's os.Getenv makes them)."""
    fields = {f: keys[k] for k, f in _AUTH_FIELDS.items() if keys.get(k)}
    fields["method"] = (fields.get("method") or "password").lower()
    from ...goflags import parse_go_bool

    insecure = keys.get("insecureSkipVerify") or "false"
    parsed = parse_go_bool(insecure)
    return GlanceOptions(image_id=image_id, auth=KeystoneAuth(**fields),
                         region=keys.get("regionName") or None,
                         interface=keys.get("availability") or "public",
                         cacert=keys.get("cacert") or None, insecure=bool(parsed),
                         # CDI reads an unparsable value as false; we name it as a problem
                         insecure_invalid=insecure if parsed is None else None)


def read_secret(path: Path) -> dict[str, str]:
    """The keys of a secret given as a file of KEY=VALUE lines (`#` comments and blank lines
    skipped; kubectl's --from-env-file format) or a directory holding one file per key (a
    mounted secret: dot files such as `..data` are skipped, a trailing newline is dropped)."""
    keys: dict[str, str] = {}
    try:
        if path.is_dir():
            for name in sorted(os.listdir(path)):
                f = path / name
                if not name.startswith(".") and f.is_file():
                    keys[name] = f.read_text(encoding="utf-8").removesuffix("\n")
            return keys
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the OpenStack secret {path}: "
                          f"{exc.strerror or exc}") from exc
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{path} line {number}: expected KEY=VALUE (the keys of an "
                              "OpenStack secret, e.g. username=...); a PEM cacert needs the "
                              "directory form, a file per key")
        keys[key.strip()] = value
    return keys


def glance_problems(options: SourceOptions, username: str | None, front: Front
                    ) -> list[Problem]:
    """What a Glance import lacks, named as the front names it (the CLI's flags and secret
    file, or the populator's flags and secret keys)."""
    from ...settings import Problem

    if not isinstance(options, GlanceOptions):
        return [Problem("image_id", f"{front.name('image_id')} is needed: the id of the Glance "
                        "image to import")]
    found = []
    if not options.image_id:
        found.append(Problem("image_id", f"{front.name('image_id')} is needed: the id of the "
                             "Glance image to import"))
    a = options.auth
    where = front.name("openstack_secret")
    if a.method not in AUTH_TYPES:
        # CDI's words first
        found.append(Problem("openstack_secret", f"unsupported authentication type "
                             f"{a.method!r} (authType in {where}): use password, token or "
                             "applicationcredential"))
    elif a.method == "password" and not ((a.username or a.user_id or username) and a.password):
        found.append(Problem("openstack_secret", f"password authentication needs username (or "
                             f"userID) and password in {where}"))
    elif a.method == "token" and not a.token:
        found.append(Problem("openstack_secret", f"token authentication needs token in {where}"))
    elif a.method == "applicationcredential" and not (
            a.app_credential_secret and (a.app_credential_id or (
                a.app_credential_name and (a.username or a.user_id or username)))):
        found.append(Problem("openstack_secret", "application credential authentication needs "
                             "applicationCredentialSecret and applicationCredentialID (or "
                             f"applicationCredentialName with username) in {where}"))
    if options.interface not in ("public", "internal", "admin"):
        found.append(Problem("openstack_secret", f"availability {options.interface!r} in "
                             f"{where}: use public, internal or admin"))
    if options.insecure_invalid is not None:
        found.append(Problem("openstack_secret", "Invalid boolean value for insecureSkipVerify: "
                             f"{options.insecure_invalid}"))
    return found
