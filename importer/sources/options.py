"""The options of the sources, typed: the HTTP options every network source shares (with the
extra headers and proxies, and their parsing, which both front-ends use), and the options of
each kind; an ImportConfig carries them (sources/kinds.py opens the source with them). Sources
import these, never config.py (issue 22)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import ConfigError

__all__ = ["GcsOptions", "GlanceOptions", "Header", "HttpOptions", "ImageioOptions",
           "KeystoneAuth", "RegistryOptions",
           "S3Options", "SourceOptions", "VddkOptions", "parse_header",
           "proxies_from_environment", "read_header_files"]


@dataclass(frozen=True, slots=True)
class Header:
    name: str
    value: str
    secret: bool = False  # read from a file: never logged

    def __repr__(self) -> str:
        return f"Header({self.name!r}, {'<redacted>' if self.secret else repr(self.value)})"


@dataclass(frozen=True, slots=True)
class HttpOptions:
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    headers: tuple[Header, ...] = ()
    ca_dir: Path | None = None
    #: more CA directories (the pod's /proxycerts) or files (--ca-file), trusted like ca_dir
    extra_ca_dirs: tuple[Path, ...] = ()
    #: CA certificates given as PEM text (an OpenStack secret's cacert), trusted the same way
    ca_pems: tuple[str, ...] = field(default=(), repr=False)
    insecure: bool = False
    #: scheme -> proxy URL and "no" -> bypass list, captured from the environment at start
    proxies: Mapping[str, str] = field(default_factory=dict)
    connect_timeout: float = 30.0
    #: seconds without a single byte before a connection is abandoned and resumed
    read_timeout: float = 120.0
    max_retries: int = 8
    retry_backoff: float = 1.0
    #: seconds a streak of failures may last before the import gives up (CDI gives up at once
    #: and lets the pod restart; hours of retries hide a dead server)
    retry_time: float = 30.0
    max_redirects: int = 10
    #: a transfer slower than low_speed_limit bytes in low_speed_time seconds is abandoned and
    #: resumed (curl's --speed-limit/--speed-time): a trickle never trips read_timeout
    low_speed_limit: int = 1024
    low_speed_time: float = 60.0
    #: quick retries for a name that does not resolve or a refused connection
    unreachable_retries: int = 2

    @property
    def ca_dirs(self) -> list[Path]:
        """Every CA directory to trust beside the system store."""
        return [d for d in (self.ca_dir, *self.extra_ca_dirs) if d is not None]

    def proxy_for(self, url: str) -> str | None:
        """The proxy for `url`, honouring no_proxy; loopback is never proxied (CDI quirk Q10)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host in ("localhost", "::1") or host.startswith("127."):
            return None
        proxies = dict(self.proxies)
        if proxies.get("no"):
            import urllib.request  # only with a bypass list: the module costs ~25 ms to import

            if urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
                return None
        return proxies.get(parts.scheme)


def read_header_files(path: Path) -> list[Header]:
    """Headers from a file or a directory tree of files (the layout of CDI's /extraheaders).

    Each file holds one `Name: value` line. Dot files and dot directories (`..data` of a
    Kubernetes secret volume) are skipped; trailing newlines are stripped (CDI quirk Q9).
    """
    files: list[Path] = []
    if path.is_dir():
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [Path(root) / n for n in sorted(names) if not n.startswith(".")]
    else:
        files = [path]
    headers = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read header file {f}: {exc.strerror}") from exc
        headers.append(parse_header(text, where=str(f), secret=True))
    return headers


def parse_header(text: str, *, where: str, secret: bool) -> Header:
    """One `Name: value` line, the one validator of both front-ends: CR or LF anywhere would
    let a value smuggle a second header (or a request) into what we send."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    bad_value = any((ord(c) < 0x20 and c != "\t") or c == "\x7f" for c in value)
    bad_name = any(ord(c) <= 0x20 or c == "\x7f" for c in name)
    if not sep or not name or bad_name or bad_value:
        shown = "<redacted>" if secret else repr(text)
        raise ConfigError(f"invalid header in {where}: {shown}; expected one line 'Name: value'")
    return Header(name, value, secret)


def proxies_from_environment(env: Mapping[str, str]) -> dict[str, str]:
    """scheme -> proxy from *_proxy variables, as urllib.request.getproxies_environment reads
    them (lower-case names win; HTTP_PROXY is ignored in a CGI request, httpoxy), without
    importing urllib.request (~25 ms of a small import's fixed cost)."""
    proxies: dict[str, str] = {}
    for name, value in env.items():
        if value and name.lower().endswith("_proxy"):
            proxies[name[:-6].lower()] = value
    if "REQUEST_METHOD" in env:
        proxies.pop("http", None)
    for name, value in env.items():
        if name.endswith("_proxy"):
            if value:
                proxies[name[:-6].lower()] = value
            else:
                proxies.pop(name[:-6].lower(), None)
    return proxies



@dataclass(frozen=True, slots=True)
class S3Options:
    endpoint: str | None = None  # default AWS
    region: str | None = None  # default from the URL, else us-east-1


@dataclass(frozen=True, slots=True)
class GcsOptions:
    credentials: Path | None = None  # a service-account key file


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    #: architecture to pick from a multi-arch image index (default: the host's)
    arch: str | None = None
    #: docker/podman credentials file consulted for registry logins
    auth_file: Path | None = None
    #: the environment a credential helper (docker-credential-*) runs with: its keychain's
    #: HOME, D-Bus or GnuPG session, captured by the configuration layer
    helper_env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ImageioOptions:
    """An oVirt disk (docs/pod-contract.md 4.5). The engine URL is the import's source; the user and
    password are the HTTP credentials."""

    disk_id: str
    #: the snapshot (volume id) this stage copies; None: the disk as it is now
    checkpoint: str | None = None
    #: the snapshot the previous stage copied: this stage downloads the delta between the two
    #: (a qcow2 whose backing file is that snapshot) and applies it onto the existing disk
    previous_checkpoint: str | None = None
    #: the last stage of a warm import (logged, as CDI does)
    final: bool = False
    #: how long a locked disk is waited for before the import fails (transient: retried later)
    locked_wait: float = 600.0
    locked_retry: float = 15.0
    #: renew the transfer ticket after this many idle seconds (CDI: 30)
    renew_after: float = 30.0


@dataclass(frozen=True, slots=True)
class VddkOptions:
    """A VMware disk (docs/pod-contract.md 4.6). The vCenter/ESXi URL is the import's source; the
    user and password are the HTTP credentials."""

    vm_uuid: str  # instance or BIOS UUID
    backing_file: str  # "[datastore] vm/vm.vmdk"
    thumbprint: str | None = None  # SHA-1 of vCenter's/ESXi's certificate
    #: the snapshot this stage copies (managed object id or name); None: the disk as it is
    checkpoint: str | None = None
    #: the previous stage's snapshot, or a change ID (`52 de ... 63/81`): only what changed
    #: since is copied, onto the existing disk
    previous_checkpoint: str | None = None
    final: bool = False
    libdir: Path = Path("/opt/vmware-vix-disklib-distrib")
    #: nbdkit's plugin: `vddk`, or the path of another build (a stand-in in tests)
    plugin: str = "vddk"
    config: Path | None = None  # VDDK's extra configuration (CDI's vddk-config-file)


@dataclass(frozen=True, slots=True)
class KeystoneAuth:
    """How to log in to Keystone (Identity v3), in the terms of CDI's OpenStack secret (the
    keys gophercloud's clientconfig reads): the method, who, and the scope of the token."""

    method: str = "password"  # password, token or applicationcredential
    username: str | None = None
    user_id: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    app_credential_id: str | None = None
    app_credential_name: str | None = None
    app_credential_secret: str | None = field(default=None, repr=False)
    user_domain_name: str | None = None
    user_domain_id: str | None = None
    project_name: str | None = None
    project_id: str | None = None
    project_domain_name: str | None = None
    project_domain_id: str | None = None
    domain_name: str | None = None
    domain_id: str | None = None
    #: the domain id for user and project when neither names its own
    default_domain: str | None = None
    system_scope: str | None = None  # "all"


@dataclass(frozen=True, slots=True)
class GlanceOptions:
    """An OpenStack Glance image. The Keystone (identity) URL is the import's source."""

    image_id: str
    auth: KeystoneAuth = field(default_factory=KeystoneAuth)
    region: str | None = None
    #: which catalog endpoint of the image service: public, internal or admin
    interface: str = "public"
    #: CA certificate (PEM) for Keystone and Glance, beside the system store
    cacert: str | None = field(default=None, repr=False)
    insecure: bool = False
    #: an insecureSkipVerify value that is not a boolean (a problem to report)
    insecure_invalid: str | None = None


SourceOptions = (S3Options | GcsOptions | RegistryOptions | ImageioOptions | VddkOptions
                 | GlanceOptions | None)
